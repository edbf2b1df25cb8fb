"""mTLS for the services' gRPC: server credentials that follow certificate files as
they rotate, client channels that do the same, and the peer's identity.

Identity rests on the subjectAltName ``<service>.matrixinfer.internal``
(:mod:`matrixinfer.core.pki`), never on the address: a client names the service it
expects (``grpc.ssl_target_name_override``) and refuses any other certificate, even
one signed by the same CA; a server reads the client's name from the handshake
(:func:`peer_names`).

Rotation without restarts: the server's credentials are
``grpc.dynamic_ssl_server_credentials``, whose fetcher gRPC calls at each new
handshake; it re-reads the files when they changed (and only once the new
certificate and key belong together). A client channel (:class:`TlsChannel`) checks
its files at most once a second and builds a new underlying channel when they
changed; calls already running finish on the old one.
"""

from __future__ import annotations

import asyncio
import logging
import os
import pathlib
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import grpc  # type: ignore[import-untyped, unused-ignore]
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from matrixinfer.core.pki import CertFiles, identity_name

log = logging.getLogger(__name__)

#: Seconds a replaced client channel keeps serving the calls it carries.
RETIRED_CHANNEL_GRACE_S = 60.0

_Signature = tuple[tuple[int, int, int], ...]


def _paths(files: CertFiles) -> tuple[pathlib.Path, ...]:
    return (files.cert, files.key, files.ca)


def _signature(paths: tuple[pathlib.Path, ...]) -> _Signature:
    out = []
    for path in paths:
        try:
            st = os.stat(path)
        except OSError:
            out.append((0, 0, 0))
            continue
        out.append((st.st_mtime_ns, st.st_size, st.st_ino))
    return tuple(out)


def read_files(files: CertFiles) -> tuple[bytes, bytes, bytes]:
    """The three files' bytes, once the certificate and the key belong together (a
    rotation that has replaced one but not yet the other is not taken)."""
    cert, key, ca = (
        files.cert.read_bytes(),
        files.key.read_bytes(),
        files.ca.read_bytes(),
    )
    public = x509.load_pem_x509_certificate(cert).public_key()
    private = serialization.load_pem_private_key(key, password=None)
    fmt = serialization.PublicFormat.SubjectPublicKeyInfo
    enc = serialization.Encoding.DER
    if public.public_bytes(enc, fmt) != private.public_key().public_bytes(enc, fmt):
        raise ValueError(f"{files.key} is not the key of {files.cert}")
    x509.load_pem_x509_certificates(ca)
    return cert, key, ca


# --- server ------------------------------------------------------------------------


class ServerTls:
    """Server credentials requiring a client certificate signed by the CA, re-read
    from the files when they change."""

    def __init__(self, files: CertFiles) -> None:
        self.files = files
        self._signature = _signature(_paths(files))
        cert, key, ca = read_files(files)  # unusable files stop the start, loudly
        self._initial = grpc.ssl_server_certificate_configuration(
            [(key, cert)], root_certificates=ca
        )
        self.reloads = 0

    def credentials(self) -> grpc.ServerCredentials:
        return grpc.dynamic_ssl_server_credentials(
            self._initial, self._fetch, require_client_authentication=True
        )

    def _fetch(self) -> Any:
        # Called by gRPC's C core before each handshake: None keeps what it has.
        try:
            signature = _signature(_paths(self.files))
            if signature == self._signature:
                return None
            cert, key, ca = read_files(self.files)
        except Exception as e:  # a half-written rotation: keep serving the old one
            log.warning("cannot use the rotated certificate yet: %s", e)
            return None
        self._signature = signature
        self.reloads += 1
        log.info("serving the rotated certificate %s", self.files.cert)
        return grpc.ssl_server_certificate_configuration(
            [(key, cert)], root_certificates=ca
        )


def peer_names(context: Any) -> list[str]:
    """The DNS names (subjectAltName) of the client's verified certificate; empty on
    a plaintext connection."""
    try:
        auth = context.auth_context()
    except (AttributeError, NotImplementedError):
        return []
    if auth.get("transport_security_type") != [b"ssl"]:
        return []
    return [
        v.decode("ascii", "replace")
        for v in auth.get("x509_subject_alternative_name", ())
    ]


# --- client ------------------------------------------------------------------------


@dataclass(frozen=True)
class ClientTls:
    """What a client channel presents (``files``) and whom it expects: ``peer`` is
    the service name, whose identity (``registry.matrixinfer.internal``) the
    server's certificate must carry."""

    files: CertFiles
    peer: str

    @property
    def server_name(self) -> str:
        return identity_name(self.peer)

    def credentials(self) -> grpc.ChannelCredentials:
        cert, key, ca = read_files(self.files)
        return grpc.ssl_channel_credentials(
            root_certificates=ca, private_key=key, certificate_chain=cert
        )


def client_tls(files: CertFiles | None, peer: str) -> ClientTls | None:
    """mTLS to ``peer`` with a service's own files, or None (plaintext)."""
    return None if files is None else ClientTls(files, peer)


_HANDSHAKE_RE = re.compile(
    r"handshake|ssl|tls|certificate|verification|Socket closed|Connection reset",
    re.I,
)


def explain_failure(tls: ClientTls, target: str, details: str) -> str | None:
    """A sentence a user understands for a call that failed in the TLS handshake,
    or None when ``details`` does not look like one."""
    if not _HANDSHAKE_RE.search(details):
        return None
    lowered = details.lower()
    if "hostname verification" in lowered:
        why = (
            f"the server there is not the {tls.peer}: its certificate does not name "
            f"{tls.server_name}"
        )
    elif "certificate_verify_failed" in lowered:
        why = (
            f"the {tls.peer}'s certificate is not signed by the CA in "
            f"{tls.files.ca} (or has expired)"
        )
    else:
        why = (
            f"the {tls.peer} refused our certificate {tls.files.cert} (not "
            "signed by its CA, expired, or not a client certificate), or it does "
            "not speak TLS"
        )
    return f"TLS handshake with the {tls.peer} at {target} failed: {why} ({details})"


class _HandshakeHint(grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[misc, unused-ignore]
    """Logs what a failed handshake means, at most every 30 s per channel."""

    def __init__(self, tls: ClientTls, target: str) -> None:
        self._tls = tls
        self._target = target
        self._last_s = -1e9

    async def intercept_unary_unary(
        self, continuation: Any, client_call_details: Any, request: Any
    ) -> Any:
        call = await continuation(client_call_details, request)
        try:
            await call
        except grpc.aio.AioRpcError as e:
            if e.code() == grpc.StatusCode.UNAVAILABLE:
                self._hint(e.details() or "")
        return call

    def _hint(self, details: str) -> None:
        now = time.monotonic()
        if now - self._last_s < 30.0:
            return
        message = explain_failure(self._tls, self._target, details)
        if message is not None:
            self._last_s = now
            log.error("%s", message)


def handshake_hint(tls: ClientTls, target: str) -> Any:
    return _HandshakeHint(tls, target)


class _Multicallable:
    """A stub's method on a :class:`TlsChannel`: resolved on the channel current at
    each call, so stubs made once keep working across rotations."""

    def __init__(self, owner: TlsChannel, kind: str, args: Any, kwargs: Any) -> None:
        self._owner = owner
        self._kind = kind
        self._args = args
        self._kwargs = kwargs
        self._for: Any = None
        self._callable: Any = None

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        channel = self._owner.current()
        if channel is not self._for:
            self._callable = getattr(channel, self._kind)(*self._args, **self._kwargs)
            self._for = channel
        return self._callable(*args, **kwargs)


class TlsChannel(grpc.aio.Channel):  # type: ignore[misc, unused-ignore]
    """An aio channel over mTLS whose credentials follow the certificate files."""

    def __init__(
        self,
        build: Callable[[grpc.ChannelCredentials], grpc.aio.Channel],
        tls: ClientTls,
        check_every_s: float = 1.0,
    ) -> None:
        self._build = build
        self._tls = tls
        self._check_every_s = check_every_s
        self._signature = _signature(_paths(tls.files))
        self._channel = build(tls.credentials())
        self._checked_s = time.monotonic()
        self._retired: dict[asyncio.Task[None], grpc.aio.Channel] = {}
        self.rebuilds = 0

    def current(self) -> grpc.aio.Channel:
        now = time.monotonic()
        if now - self._checked_s >= self._check_every_s:
            self._checked_s = now
            signature = _signature(_paths(self._tls.files))
            if signature != self._signature:
                self._rotate(signature)
        return self._channel

    def _rotate(self, signature: _Signature) -> None:
        try:
            credentials = self._tls.credentials()
        except Exception as e:
            log.warning("cannot use the rotated client certificate yet: %s", e)
            return
        old = self._channel
        self._channel = self._build(credentials)
        self._signature = signature
        self.rebuilds += 1
        log.info(
            "client certificate %s changed: new connections to the %s use it",
            self._tls.files.cert,
            self._tls.peer,
        )
        try:
            task = asyncio.get_running_loop().create_task(
                old.close(RETIRED_CHANNEL_GRACE_S)
            )
        except RuntimeError:
            return
        self._retired[task] = old
        task.add_done_callback(lambda t: self._retired.pop(t, None))

    def unary_unary(self, *args: Any, **kwargs: Any) -> Any:
        return _Multicallable(self, "unary_unary", args, kwargs)

    def unary_stream(self, *args: Any, **kwargs: Any) -> Any:
        return _Multicallable(self, "unary_stream", args, kwargs)

    def stream_unary(self, *args: Any, **kwargs: Any) -> Any:
        return _Multicallable(self, "stream_unary", args, kwargs)

    def stream_stream(self, *args: Any, **kwargs: Any) -> Any:
        return _Multicallable(self, "stream_stream", args, kwargs)

    def get_state(self, try_to_connect: bool = False) -> Any:
        return self.current().get_state(try_to_connect)

    async def wait_for_state_change(self, last_observed_state: Any) -> None:
        await self.current().wait_for_state_change(last_observed_state)

    async def channel_ready(self) -> None:
        await self.current().channel_ready()

    async def close(self, grace: float | None = None) -> None:
        # Channels retired by a rotation close now too, with the same grace.
        retired = list(self._retired.values())
        for task in list(self._retired):
            task.cancel()
        for old in retired:
            await old.close(grace)
        await self._channel.close(grace)

    async def __aenter__(self) -> TlsChannel:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close(None)


def mtls_channel(
    target: str,
    tls: ClientTls,
    options: Sequence[tuple[str, Any]] = (),
    interceptors: Sequence[Any] = (),
) -> TlsChannel:
    """An aio channel to ``target`` over mTLS with ``tls``: the server must carry
    ``tls.server_name`` (never the address), a failed handshake is explained in
    the log (innermost interceptor: each attempt's own failure), and the
    credentials follow the files as they rotate."""
    option_list = [*options, ("grpc.ssl_target_name_override", tls.server_name)]
    stack = [*interceptors, handshake_hint(tls, target)]
    return TlsChannel(
        lambda credentials: grpc.aio.secure_channel(
            target, credentials, options=option_list, interceptors=stack
        ),
        tls,
    )
