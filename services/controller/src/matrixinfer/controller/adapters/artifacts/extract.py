"""Safe unpacking of .tar(.gz) and .zip artifacts.

Refused: members that would land outside the target (``..``, absolute paths),
links and device files, more than ``max_members`` members, and more than
``max_bytes`` unpacked (decompression bombs). Nothing is left behind on refusal.
"""

from __future__ import annotations

import pathlib
import shutil
import stat
import tarfile
import zipfile

from matrixinfer.core.errors import InvalidArgument


def is_archive(name: str) -> bool:
    return name.endswith((".tar.gz", ".tgz", ".tar", ".zip"))


def _inside(target: pathlib.Path, member: str) -> pathlib.Path:
    relative = pathlib.PurePosixPath(member)
    if relative.is_absolute() or ".." in relative.parts or "\\" in member:
        raise InvalidArgument(
            f"archive member {member!r} would escape the model folder"
        )
    return target / relative


def extract(
    archive: pathlib.Path,
    name: str,
    target: pathlib.Path,
    max_bytes: int,
    max_members: int,
) -> None:
    """Unpack ``archive`` (originally called ``name``, which says its format)."""
    try:
        if name.endswith(".zip"):
            _extract_zip(archive, target, max_bytes, max_members)
        else:
            _extract_tar(archive, target, max_bytes, max_members)
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError) as e:
        shutil.rmtree(target, ignore_errors=True)
        raise InvalidArgument(f"cannot unpack {name}: {e}") from e
    except BaseException:
        shutil.rmtree(target, ignore_errors=True)
        raise


def _extract_tar(archive: pathlib.Path, target: pathlib.Path, max_bytes: int,
                 max_members: int) -> None:  # fmt: skip
    with tarfile.open(archive) as tar:
        members = tar.getmembers()
        if len(members) > max_members:
            raise InvalidArgument(f"archive has more than {max_members} members")
        total = 0
        for member in members:
            _inside(target, member.name)
            if not (member.isfile() or member.isdir()):
                raise InvalidArgument(
                    f"archive member {member.name!r} is a link or device; only files "
                    "and folders are allowed"
                )
            total += member.size
            if total > max_bytes:
                raise InvalidArgument(f"archive unpacks to more than {max_bytes} bytes")
        # The "data" filter re-checks paths, links and modes as it extracts.
        tar.extractall(target, filter="data")


def _extract_zip(archive: pathlib.Path, target: pathlib.Path, max_bytes: int,
                 max_members: int) -> None:  # fmt: skip
    with zipfile.ZipFile(archive) as zf:
        infos = zf.infolist()
        if len(infos) > max_members:
            raise InvalidArgument(f"archive has more than {max_members} members")
        total = 0
        for info in infos:
            path = _inside(target, info.filename)
            mode = info.external_attr >> 16
            if stat.S_ISLNK(mode) or (
                mode and not (stat.S_ISREG(mode) or stat.S_ISDIR(mode))
            ):
                raise InvalidArgument(
                    f"archive member {info.filename!r} is a link or device"
                )
            total += info.file_size
            if total > max_bytes:
                raise InvalidArgument(f"archive unpacks to more than {max_bytes} bytes")
            if info.is_dir():
                path.mkdir(parents=True, exist_ok=True)
                continue
            path.parent.mkdir(parents=True, exist_ok=True)
            written = 0
            with zf.open(info) as source, path.open("wb") as out:
                # Count real bytes: a forged header may understate the size.
                while chunk := source.read(1 << 20):
                    written += len(chunk)
                    if (
                        written > info.file_size
                        or total - info.file_size + written > max_bytes
                    ):
                        raise InvalidArgument("archive member larger than it declares")
                    out.write(chunk)
