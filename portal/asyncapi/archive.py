"""Multi-file uploads: a .zip holding an AsyncAPI document and the files it refers to.

A zip is told apart by its magic bytes (APPNOTE.TXT §4.3.7 local file header ``PK\\x03\\x04``,
§4.3.16 end of central directory ``PK\\x05\\x06`` for an empty archive), not by its name. Nothing
is written to disk: members are read into memory, under limits that stop zip bombs: at most
``MAX_ARCHIVE_MEMBERS`` files and ``MAX_ARCHIVE_BYTES`` uncompressed in total, counted while
inflating (the sizes in the headers are whatever the archive's author wrote).
"""

from __future__ import annotations

import io
import posixpath
import re
import stat
import zipfile
from typing import Any

from portal.asyncapi.errors import AsyncAPIError, DocumentTooLargeError
from portal.asyncapi.locations import MAX_DOCUMENT_BYTES, LoadedDocument, decode_source, load_text

# Files in one archive (directories and macOS metadata not counted).
MAX_ARCHIVE_MEMBERS = 200
# Bytes of all files of one archive once uncompressed: what a single document may be.
MAX_ARCHIVE_BYTES = MAX_DOCUMENT_BYTES
DOCUMENT_SUFFIXES = (".yaml", ".yml", ".json")
ROOT_NAMES = ("asyncapi.yaml", "asyncapi.yml", "asyncapi.json")
_ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")
_CHUNK = 64 * 1024
# Written by macOS Finder next to the real files; never part of a document.
_SKIPPED = re.compile(r"(^|/)(__MACOSX/|\.DS_Store$)")
# A top-level "asyncapi" key, for a candidate root that does not parse (so its error is shown).
_ASYNCAPI_KEY = re.compile(r"""(?m)^["']?asyncapi["']?\s*:|^\s*\{?\s*"asyncapi"\s*:""")


def is_zip(content: bytes | str) -> bool:
    """Whether ``content`` is a zip archive, by its first four bytes."""
    return isinstance(content, bytes) and content.startswith(_ZIP_MAGIC)


def read_archive(content: bytes, *, filename: str) -> dict[str, bytes]:
    """The files of a zip as ``{posix path inside the archive: bytes}``, in archive order.

    Raises ``AsyncAPIError`` naming ``filename`` for a damaged or encrypted archive, a member
    whose path is absolute or climbs out (``../``), a path that appears twice, a symbolic link,
    or a compression method Python cannot read; ``DocumentTooLargeError`` past
    ``MAX_ARCHIVE_MEMBERS`` files or ``MAX_ARCHIVE_BYTES`` uncompressed.
    """
    try:
        archive = zipfile.ZipFile(io.BytesIO(content))
    except (zipfile.BadZipFile, EOFError, ValueError) as exc:
        raise AsyncAPIError(
            f"the file starts like a zip archive but cannot be read: {exc}", filename=filename
        ) from None
    files: dict[str, bytes] = {}
    total = 0
    with archive:
        members = [
            info for info in archive.infolist() if not info.is_dir() and not _SKIPPED.search(info.filename)
        ]
        if len(members) > MAX_ARCHIVE_MEMBERS:
            raise DocumentTooLargeError(
                f"the archive holds {len(members):,} files; Eventgate reads at most {MAX_ARCHIVE_MEMBERS} "
                "(the AsyncAPI document and the files it refers to)",
                filename=filename,
            )
        for info in members:
            path = _member_path(info, filename)
            if path in files:
                # Which copy wins would depend on the archiver; refused like duplicate keys.
                raise AsyncAPIError(
                    f'the archive holds "{path}" more than once; keep one copy of each file',
                    filename=filename,
                )
            total = _read_member(archive, info, files, path, total, filename)
    return files


def _member_path(info: zipfile.ZipInfo, filename: str) -> str:
    name = info.filename.replace("\\", "/")
    where = f'"{info.filename}" in the archive'
    if info.flag_bits & 0x1:
        raise AsyncAPIError(f"{where} is encrypted; upload an archive without a password", filename=filename)
    if stat.S_ISLNK(info.external_attr >> 16):
        raise AsyncAPIError(
            f"{where} is a symbolic link; put the file itself in the archive", filename=filename
        )
    path = posixpath.normpath(name)
    if name.startswith("/") or re.match(r"^[A-Za-z]:", name) or path == ".." or path.startswith("../"):
        raise AsyncAPIError(f"{where} has a path outside the archive; use relative paths", filename=filename)
    return path


def _read_member(
    archive: zipfile.ZipFile,
    info: zipfile.ZipInfo,
    files: dict[str, bytes],
    path: str,
    total: int,
    filename: str,
) -> int:
    """Inflate one member into ``files[path]``, counting real bytes against the archive limit."""
    chunks = []
    try:
        with archive.open(info) as member:
            while chunk := member.read(_CHUNK):
                total += len(chunk)
                if total > MAX_ARCHIVE_BYTES:
                    raise DocumentTooLargeError(
                        f"the files of the archive take more than {MAX_ARCHIVE_BYTES // (1024 * 1024)} MB "
                        f'uncompressed (reached at "{path}"); Eventgate reads at most that much, '
                        "as for a single document",
                        filename=filename,
                    )
                chunks.append(chunk)
    except (zipfile.BadZipFile, NotImplementedError, EOFError, OSError, RuntimeError) as exc:
        raise AsyncAPIError(f'"{path}" in the archive cannot be read: {exc}', filename=filename) from None
    files[path] = b"".join(chunks)
    return total


def member_name(archive: str, path: str) -> str:
    """How errors name a file of an archive: ``api.zip:schemas/price.yaml``."""
    return f"{archive}:{path}"


def choose_root(
    files: dict[str, bytes], *, filename: str, loaded: dict[str, LoadedDocument] | None = None
) -> str:
    """The path of the archive's AsyncAPI document: the one file whose top level has ``asyncapi``.

    With several, the one named ``asyncapi.yaml``/``.yml``/``.json`` nearest the top of the
    archive wins, if only one is that near. Every document read on the way is kept in ``loaded``
    (path → document), so it need not be read again. Raises ``AsyncAPIError`` when there is
    none, or several and no such winner (the message lists them).
    """
    loaded = {} if loaded is None else loaded
    candidates = [path for path, content in files.items() if _looks_like_asyncapi(path, content, loaded)]
    if len(candidates) == 1:
        return candidates[0]
    if not candidates:
        listed = ", ".join(list(files)[:10]) or "no files"
        raise AsyncAPIError(
            f"the archive holds no AsyncAPI document (a .yaml, .yml or .json file whose top level has "
            f'"asyncapi"); it holds {listed}',
            filename=filename,
        )
    named = [path for path in candidates if posixpath.basename(path).lower() in ROOT_NAMES]
    if named:
        shallowest = min(path.count("/") for path in named)
        nearest = [path for path in named if path.count("/") == shallowest]
        if len(nearest) == 1:
            return nearest[0]
    listed = ", ".join(candidates[:10]) + (" …" if len(candidates) > 10 else "")
    raise AsyncAPIError(
        f"the archive holds {len(candidates)} AsyncAPI documents ({listed}) and Eventgate cannot tell which "
        "one to import; name it asyncapi.yaml (or .yml, .json) at the top of the archive, or upload one "
        "document per archive",
        filename=filename,
    )


def _looks_like_asyncapi(path: str, content: bytes, loaded: dict[str, LoadedDocument]) -> bool:
    if not path.lower().endswith(DOCUMENT_SUFFIXES):
        return False
    try:
        loaded[path] = load_text(decode_source(content))
        data: Any = loaded[path].data
    except AsyncAPIError:
        # A broken root is still the root: picking it lets the import show its syntax error.
        return bool(_ASYNCAPI_KEY.search(content[:MAX_DOCUMENT_BYTES].decode("utf-8", "replace")))
    return isinstance(data, dict) and "asyncapi" in data
