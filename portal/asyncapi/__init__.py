"""AsyncAPI import: reading, validating and normalizing AsyncAPI 2.0.0–2.6.0, 3.0.0 and 3.1.0
documents (YAML or JSON) into channels and the operations a consumer may perform on them.

Public names:

- ``parse_document(*, content, filename) -> ParsedDocument`` (``portal.asyncapi.parser``)
- ``ParsedDocument``, ``ParsedChannel``, ``ParsedOperation``: frozen dataclasses
- ``AsyncAPIError``: any problem in a document, with ``message``, ``pointer``, ``line``, ``filename``
- ``SUPPORTED_VERSIONS``: the ``asyncapi`` versions accepted

Storing a parsed document is ``portal.services.apis.api_import``. See docs/asyncapi-import.md.
"""

from __future__ import annotations

from portal.asyncapi.errors import AsyncAPIError
from portal.asyncapi.locations import decode_source
from portal.asyncapi.parser import (
    ParsedChannel,
    ParsedDocument,
    ParsedOperation,
    first_sentence,
    parse_document,
)
from portal.asyncapi.validation import SUPPORTED_VERSIONS

__all__ = [
    "SUPPORTED_VERSIONS",
    "AsyncAPIError",
    "ParsedChannel",
    "ParsedDocument",
    "ParsedOperation",
    "decode_source",
    "first_sentence",
    "parse_document",
]
