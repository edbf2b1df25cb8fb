"""The Resource envelope: one message whose oneof ``object`` holds any kind's object.

APIs that take or return "any resource" (Apply, Get, Watch, UpdateStatus) carry it;
these helpers are the one place that puts an object in and takes it out again.
"""

from __future__ import annotations

from matrixinfer.api.kinds import Object, kind_of
from matrixinfer.api.v1 import meta_pb2
from matrixinfer.api.v1 import resources_pb2 as pb


def wrap(obj: Object) -> pb.Resource:
    """A new envelope holding a copy of ``obj`` (TypeError if it is no resource)."""
    resource = pb.Resource()
    getattr(resource, kind_of(obj).envelope_field).CopyFrom(obj)
    return resource


def unwrap(resource: pb.Resource) -> Object | None:
    """The object the envelope holds (not a copy), or None if it holds none."""
    which = resource.WhichOneof("object")
    if which is None:
        return None
    obj: Object = getattr(resource, which)
    return obj


def metadata_of(resource: pb.Resource) -> meta_pb2.ObjectMeta:
    """The metadata of the object in an envelope that is known to hold one."""
    obj = unwrap(resource)
    assert obj is not None
    return obj.metadata


#: (namespace, name): how an object is named within its kind.
Key = tuple[str, str]


def key_of(resource: pb.Resource) -> Key:
    """(namespace, name) of the object in an envelope known to hold one."""
    meta = metadata_of(resource)
    return meta.namespace, meta.name
