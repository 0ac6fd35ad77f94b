"""AsyncAPI 2.x and 3.x documents into one model: channels and what a *consumer* may do on them.

Eventgate's consumers are clients of the gateway, on the other side of the application an
AsyncAPI document describes, so every operation is turned around:

- AsyncAPI 2.x (2.6.0 §Channel Item Object): ``subscribe`` "defines the messages produced by the
  application and sent to the channel" — the consumer *receives* them; ``publish`` "defines the
  messages consumed by the application from the channel" — the consumer *sends* them.
- AsyncAPI 3.x (3.0.0 §Operation Object, ``action``): "Use ``send`` when it's expected that the
  application will send a message to the given channel, and ``receive`` when the application
  should expect receiving messages from the given channel" — ``send`` becomes the consumer's
  *receive*, ``receive`` the consumer's *send*.

This module reads the document and its info; the channels and operations of each family are
read by ``portal.asyncapi.v2`` and ``portal.asyncapi.v3``, with the objects both share
(messages, traits, parameters, payloads, length checks) in ``portal.asyncapi.objects`` and the
parsed shape in ``portal.asyncapi.parsed``.
"""

from __future__ import annotations

import json
import unicodedata
from typing import Any

from portal.asyncapi import metadata, v2, v3
from portal.asyncapi.bundle import Bundle, bundle_document, load_upload
from portal.asyncapi.errors import AsyncAPIError
from portal.asyncapi.objects import as_text, check_length, first_sentence
from portal.asyncapi.parsed import (
    MAX_MESSAGES,
    MAX_TITLE,
    MAX_VERSION,
    ParsedChannel,
    ParsedDocument,
    ParsedOperation,
)
from portal.asyncapi.refs import Resolver
from portal.asyncapi.validation import check_version, validate_document

# Importable from here as before the split (portal.asyncapi re-exports them).
__all__ = [
    "MAX_MESSAGES",
    "ParsedChannel",
    "ParsedDocument",
    "ParsedOperation",
    "first_sentence",
    "parse_document",
]


def parse_document(*, content: bytes | str, filename: str) -> ParsedDocument:
    """Read, validate and normalize an AsyncAPI 2.0.0–2.6.0, 3.0.0 or 3.1.0 document.

    ``content`` is YAML or JSON (told apart by content, not by ``filename``), or a .zip (told
    apart by its magic bytes) holding the document and the files it refers to (see
    ``portal.asyncapi.archive`` for how the root is chosen and the limits); ``filename`` names
    the upload in errors. References to other files and (when enabled) remote URLs are bundled
    into the document (``portal.asyncapi.bundle``), which is then validated against the official
    JSON Schema of its version (``@asyncapi/specs``); its channels and operations are normalized
    to the consumer's point of view (see the module docstring).

    Raises ``AsyncAPIError`` (with pointer, line and file: ``api.zip:schemas/price.yaml`` for a
    file of an archive) for unreadable input, an unsupported version, schema violations,
    dangling or refused refs and values too long to store.
    """
    bundle: Bundle | None = None
    root_name = filename
    try:
        sources, root = load_upload(content=content, filename=filename)
        root_name = sources.name(root)
        loaded = sources.load(root)
        try:
            version = check_version(loaded.data)
        except AsyncAPIError as error:
            error.line = loaded.line_of(error.pointer)
            raise
        bundle = bundle_document(sources, root, loaded.data)
        validate_document(bundle, version)
        return _parse_valid(bundle, version)
    except AsyncAPIError as error:
        if bundle is not None and not error.filename:
            bundle.place(error)
        error.filename = error.filename or root_name
        raise
    except RecursionError:
        raise AsyncAPIError("the document is nested too deeply to read", filename=filename) from None


def _parse_valid(bundle: Bundle, version: str) -> ParsedDocument:
    data: dict[str, Any] = bundle.data
    info = data["info"]
    title = as_text(info.get("title"))
    if not title:
        # The schema requires a string; a blank one would make an API nobody can name or find.
        raise AsyncAPIError("info.title is blank; give the API a name", pointer="/info/title")
    check_length(title, MAX_TITLE, "/info/title", "the title")
    api_version = _api_version(info.get("version"))
    resolver = Resolver(data)
    channels = (v2 if version.startswith("2.") else v3).read_channels(data, resolver)
    schemes = metadata.security_schemes(data, resolver)
    servers = metadata.servers(data, resolver, schemes)
    return ParsedDocument(
        asyncapi_version=version,
        title=title,
        version=api_version,
        description=as_text(info.get("description")),
        document=data,
        channels=channels,
        source=bundle.source,
        source_files=bundle.source_files,
        servers=servers,
        security_schemes=schemes,
        tags=metadata.tags(data, resolver),
        protocols=metadata.protocols(servers),
        lines=bundle.root.lines,
    )


_URL_DELIMITERS = frozenset("?#%")


def _api_version(value: Any) -> str:
    """``info.version`` if the gateway and REST URLs can carry it as one path segment.

    It appears in ``/ws/<api>/<version>/<channel>`` (gateway/routing.py, ``[^/]+``) and
    ``/api/v1/apis/<api>/versions/<version>/publish``, so it must be non-empty, must not be
    ``.`` or ``..`` (which URL normalization removes, RFC 3986 §5.2.4) and must not contain
    ``/``, ``?``, ``#``, ``%``, whitespace or control characters. The schema already requires a
    string.
    """
    version = value if isinstance(value, str) else ""
    problem = None
    if not version:
        problem = "it is empty"
    elif version in (".", ".."):
        problem = f'"{version}" is a relative path segment that URLs drop'
    elif "/" in version:
        problem = 'it contains "/"'
    elif reserved := sorted({char for char in version if char in _URL_DELIMITERS}):
        # RFC 3986 §3.3: "?" starts the query, "#" the fragment and "%" a percent-encoding, so
        # a hand-typed gateway URL with the version in it would break at them.
        problem = "it contains " + " and ".join(f'"{char}"' for char in reserved)
    elif any(char.isspace() for char in version):
        problem = "it contains whitespace"
    elif any(unicodedata.category(char) in ("Cc", "Cf") for char in version):
        problem = "it contains control characters"
    if problem:
        raise AsyncAPIError(
            f"the version {json.dumps(version, ensure_ascii=False)} cannot be used: {problem}; "
            "info.version is part of the API's gateway URLs (/ws/<api>/<version>/<channel>), "
            "so use something like 1.0.0",
            pointer="/info/version",
        )
    check_length(version, MAX_VERSION, "/info/version", "the version")
    return version
