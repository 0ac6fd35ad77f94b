"""The parsed shape of an AsyncAPI document (``ParsedDocument``, ``ParsedChannel``,
``ParsedOperation``) and the limits every parsed document keeps so that it can be stored."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from portal.asyncapi.locations import line_for

# Column sizes of portal.models, checked here so every document that parses can be stored.
MAX_TITLE = 200
MAX_VERSION = 64
MAX_CHANNEL_KEY = 255
MAX_ADDRESS = 1000
MAX_CHANNEL_TITLE = 255
MAX_OPERATION_KEY = 255
# Messages all operations of one document may carry together. A 3.x operation without
# ``messages`` carries every message of its channel, so 230 operations on a channel of 230
# messages (a 43 KB document) once stored 52,900 messages and rendered a 79 MB API page.
MAX_MESSAGES = 2000

# What a consumer of the gateway does on a channel (see ``portal.asyncapi.parser``).
Action = Literal["receive", "send"]


@dataclass(frozen=True)
class ParsedOperation:
    """What a consumer may do on a channel.

    ``key`` is the 2.x ``operationId`` (``""`` if absent) or the 3.x operation key; ``messages``
    are ``{"name", "title", "summary", "content_type", "payload", "bindings", "examples"}`` dicts:
    strings (``""`` when absent), the payload schema with internal refs resolved (None when
    absent), the Message Bindings Object (``{}`` when absent) and the examples (see
    ``portal.asyncapi.objects``). ``bindings`` is the Operation Bindings Object, refs resolved.
    """

    key: str
    action: Action
    summary: str
    messages: list[dict[str, Any]]
    bindings: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ParsedChannel:
    """A channel: ``key`` in the document's channels object and its ``address`` template.

    ``parameters`` maps each parameter name to its Parameter Object with refs resolved (2.x:
    ``{"description", "schema": {...}}``; 3.x: ``{"enum", "default", "description", ...}``);
    ``bindings`` is the Channel Bindings Object, refs resolved.
    """

    key: str
    address: str
    title: str
    description: str
    parameters: dict[str, Any]
    bindings: dict[str, Any]
    operations: list[ParsedOperation]


@dataclass(frozen=True)
class ParsedDocument:
    """A valid AsyncAPI document: its info, the document itself and channels.

    ``document`` is self-contained: references to other files of a .zip or to remote URLs are
    bundled into it (``portal.asyncapi.bundle``); internal ``#/...`` references stay as written.
    ``source`` is the root file's text, ``source_files`` the other files' (``{path or URL:
    text}``). ``servers``, ``security_schemes``, ``tags`` and ``protocols`` are described in
    ``portal.asyncapi.metadata``. ``lines`` maps JSON pointers to 1-based lines of the root
    file, for errors found later (``line_of``).
    """

    asyncapi_version: str
    title: str
    version: str
    description: str
    document: dict[str, Any]
    channels: list[ParsedChannel]
    source: str = ""
    source_files: dict[str, str] = field(default_factory=dict, repr=False)
    servers: dict[str, dict[str, Any]] = field(default_factory=dict)
    security_schemes: dict[str, Any] = field(default_factory=dict)
    tags: list[dict[str, str]] = field(default_factory=list)
    protocols: list[str] = field(default_factory=list)
    lines: dict[str, int] = field(default_factory=dict, repr=False, compare=False)

    def line_of(self, pointer: str) -> int | None:
        """The 1-based line of ``pointer`` (or its nearest ancestor) in the upload, or None."""
        return line_for(self.lines, pointer)
