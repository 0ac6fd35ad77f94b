"""AsyncAPI import: reading, validating and normalizing AsyncAPI 2.0.0–2.6.0, 3.0.0 and 3.1.0
documents (YAML or JSON, or a .zip of a document and the files it refers to) into channels and
the operations a consumer may perform on them, plus servers, security schemes, tags and
protocols. Modules: ``locations`` (reading text, lines), ``archive`` (zips), ``bundle`` (other
files and remote refs made part of the document), ``remote`` (fetching remote refs safely),
``validation`` (official schemas), ``refs`` (internal refs), ``parser`` (the entry point),
``v2`` and ``v3`` (each family's channels and operations), ``objects`` (messages, parameters,
traits and payloads both families share), ``parsed`` (the result's dataclasses), ``metadata``
(servers, security, tags).

Public names:

- ``parse_document(*, content, filename) -> ParsedDocument`` (``portal.asyncapi.parser``)
- ``ParsedDocument``, ``ParsedChannel``, ``ParsedOperation``: frozen dataclasses
- ``AsyncAPIError``: any problem in a document, with ``message``, ``pointer``, ``line``, ``filename``;
  ``DocumentTooLargeError`` (a subclass) when the document or its expansion is too large
- ``SUPPORTED_VERSIONS``: the ``asyncapi`` versions accepted
- ``MAX_DOCUMENT_BYTES``: the one size limit of an uploaded document (every entry point uses it),
  ``check_document_size(size)`` to refuse an upload before reading it
- ``EXPANSION_BUDGET_BYTES``, ``MAX_EXPANDED_BYTES``: how much a document's resolved ``$ref``s
  may store (see ``portal.asyncapi.refs``)
- ``MAX_MESSAGES``: how many messages all operations of a document may carry together

Storing a parsed document is ``portal.services.apis.api_import``. See docs/asyncapi-import.md.
"""

from __future__ import annotations

from portal.asyncapi.errors import AsyncAPIError, DocumentTooLargeError
from portal.asyncapi.locations import MAX_DOCUMENT_BYTES, check_document_size, decode_source
from portal.asyncapi.parser import (
    MAX_MESSAGES,
    ParsedChannel,
    ParsedDocument,
    ParsedOperation,
    first_sentence,
    parse_document,
)
from portal.asyncapi.refs import EXPANSION_BUDGET_BYTES, MAX_EXPANDED_BYTES
from portal.asyncapi.validation import SUPPORTED_VERSIONS

__all__ = [
    "EXPANSION_BUDGET_BYTES",
    "MAX_DOCUMENT_BYTES",
    "MAX_EXPANDED_BYTES",
    "MAX_MESSAGES",
    "SUPPORTED_VERSIONS",
    "AsyncAPIError",
    "DocumentTooLargeError",
    "ParsedChannel",
    "ParsedDocument",
    "ParsedOperation",
    "check_document_size",
    "decode_source",
    "first_sentence",
    "parse_document",
]
