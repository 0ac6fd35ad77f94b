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
"""

from __future__ import annotations

import json
import re
import unicodedata
from dataclasses import dataclass, field
from typing import Any, Literal

from portal.asyncapi import metadata
from portal.asyncapi.bundle import Bundle, bundle_document, load_upload
from portal.asyncapi.errors import AsyncAPIError, DocumentTooLargeError
from portal.asyncapi.locations import line_for, pointer_join
from portal.asyncapi.refs import Resolver, describe, is_internal, is_ref, ref_tokens
from portal.asyncapi.validation import check_version, validate_document

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

Action = Literal["receive", "send"]
# AsyncAPI 2.x Channel Item field → the consumer's action.
_V2_ACTIONS: tuple[tuple[str, Action], ...] = (("subscribe", "receive"), ("publish", "send"))
# AsyncAPI 3.x Operation Object ``action`` (the application's) → the consumer's action.
_V3_ACTIONS: dict[str, Action] = {"send": "receive", "receive": "send"}


@dataclass(frozen=True)
class ParsedOperation:
    """What a consumer may do on a channel.

    ``key`` is the 2.x ``operationId`` (``""`` if absent) or the 3.x operation key; ``messages``
    are ``{"name", "title", "summary", "content_type", "payload", "bindings", "examples"}`` dicts:
    strings (``""`` when absent), the payload schema with internal refs resolved (None when
    absent), the Message Bindings Object (``{}`` when absent) and the examples (see
    ``_examples``). ``bindings`` is the Operation Bindings Object, refs resolved.
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


class _MessageBudget:
    """Counts the messages a document's operations carry; refuses the document past
    ``MAX_MESSAGES`` (each is stored with its operation and shown on the API's page)."""

    def __init__(self) -> None:
        self.carried = 0

    def spend(self, count: int, *, at: str, what: str) -> None:
        """Add ``count`` messages of the operation at ``at``, described by ``what`` (a clause
        naming the operation); raises ``DocumentTooLargeError`` at ``at`` past the limit."""
        self.carried += count
        if self.carried > MAX_MESSAGES:
            raise DocumentTooLargeError(
                f"{what}, which brings the document's operations to {self.carried:,} messages; "
                f"Eventgate takes at most {MAX_MESSAGES:,} per document, because every message of every "
                "operation is stored and shown on the API's page. List in each operation only the "
                "messages it uses, or split the document",
                pointer=at,
            )


def _parse_valid(bundle: Bundle, version: str) -> ParsedDocument:
    data: dict[str, Any] = bundle.data
    info = data["info"]
    title = _text(info.get("title"))
    _check_length(title, MAX_TITLE, "/info/title", "the title")
    api_version = _api_version(info.get("version"))
    resolver = Resolver(data)
    channels = _channels_v2(data, resolver) if version.startswith("2.") else _channels_v3(data, resolver)
    schemes = metadata.security_schemes(data, resolver)
    servers = metadata.servers(data, resolver, schemes)
    return ParsedDocument(
        asyncapi_version=version,
        title=title,
        version=api_version,
        description=_text(info.get("description")),
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


def _api_version(value: Any) -> str:
    """``info.version`` if the gateway and REST URLs can carry it as one path segment.

    It appears in ``/ws/<api>/<version>/<channel>`` (gateway/routing.py, ``[^/]+``) and
    ``/api/v1/apis/<api>/versions/<version>/publish``, so it must be non-empty, must not be
    ``.`` or ``..`` (which URL normalization removes, RFC 3986 §5.2.4) and must not contain ``/``,
    whitespace or control characters. The schema already requires a string.
    """
    version = value if isinstance(value, str) else ""
    problem = None
    if not version:
        problem = "it is empty"
    elif version in (".", ".."):
        problem = f'"{version}" is a relative path segment that URLs drop'
    elif "/" in version:
        problem = 'it contains "/"'
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
    _check_length(version, MAX_VERSION, "/info/version", "the version")
    return version


# --- AsyncAPI 2.x ------------------------------------------------------------------------------


def _channels_v2(data: dict[str, Any], resolver: Resolver) -> list[ParsedChannel]:
    """2.x §Channels Object: the key is the channel's address (a relative path with {params})."""
    channels = []
    budget = _MessageBudget()
    for key, raw in (data.get("channels") or {}).items():
        at = pointer_join("/channels", key)
        item = _mapping(resolver, raw, at, "a Channel Item Object")
        operations = []
        for field_name, action in _V2_ACTIONS:
            if field_name in item:
                op_at = pointer_join(at, field_name)
                operation = _mapping(resolver, item[field_name], op_at, "an Operation Object")
                operations.append(_operation_v2(operation, action, data, resolver, op_at, budget))
        channels.append(
            _channel(key, key, {"description": item.get("description")}, item, operations, resolver, at)
        )
    return channels


def _operation_v2(
    operation: dict[str, Any],
    action: Action,
    data: dict[str, Any],
    resolver: Resolver,
    at: str,
    budget: _MessageBudget,
) -> ParsedOperation:
    """2.x §Operation Object; its traits are JSON-Merge-Patched over it in order (trait wins)."""
    operation = _apply_traits(operation, resolver, at, object_wins=False)
    key = _text(operation.get("operationId"))
    _check_length(key, MAX_OPERATION_KEY, pointer_join(at, "operationId"), "the operationId")
    summary = _summary(operation)
    resolver.charge(len(key) + len(summary) + 64, at=at)
    messages = []
    if "message" in operation:
        message_at = pointer_join(at, "message")
        message = _mapping(resolver, operation["message"], message_at, "a Message Object")
        # 2.x §Operation Object: "message" is one Message Object or {"oneOf": [...]}.
        if isinstance(message.get("oneOf"), list):
            candidates = [
                (item, pointer_join(pointer_join(message_at, "oneOf"), index))
                for index, item in enumerate(message["oneOf"])
            ]
        else:
            candidates = [(operation["message"], message_at)]
        budget.spend(
            len(candidates), at=message_at, what=f"the operation at {at} carries {len(candidates):,} messages"
        )
        for index, (candidate, candidate_at) in enumerate(candidates):
            fallback = f"message{index + 1}" if len(candidates) > 1 else "message"
            messages.append(
                _message(candidate, data, resolver, candidate_at, fallback=fallback, object_wins=False)
            )
    bindings = _bindings(operation, resolver, at, "an Operation Bindings Object")
    return ParsedOperation(key=key, action=action, summary=summary, messages=messages, bindings=bindings)


# --- AsyncAPI 3.x ------------------------------------------------------------------------------


def _channels_v3(data: dict[str, Any], resolver: Resolver) -> list[ParsedChannel]:
    """3.x: channels hold addresses and messages; root ``operations`` point at channels."""
    channel_items = {}
    for key, raw in (data.get("channels") or {}).items():
        at = pointer_join("/channels", key)
        channel_items[key] = _mapping(resolver, raw, at, "a Channel Object")
    operations: dict[str, list[ParsedOperation]] = {key: [] for key in channel_items}
    budget = _MessageBudget()
    for op_key, raw in (data.get("operations") or {}).items():
        at = pointer_join("/operations", op_key)
        raw = _mapping(resolver, raw, at, "an Operation Object")
        channel_key, operation = _operation_v3(op_key, raw, channel_items, data, resolver, at, budget)
        operations[channel_key].append(operation)
    channels = []
    for key, item in channel_items.items():
        # 3.0 §Channel Object: a null or absent address means it is "unknown or dynamic"; the
        # gateway still needs something to route on, so the channel key stands in for it.
        at = pointer_join("/channels", key)
        address = _field(item, "address", str, at, "a string")
        address = key if address is None else address
        channels.append(_channel(key, address, item, item, operations[key], resolver, at))
    return channels


def _operation_v3(
    key: str,
    operation: dict[str, Any],
    channels: dict[str, dict[str, Any]],
    data: dict[str, Any],
    resolver: Resolver,
    at: str,
    budget: _MessageBudget,
) -> tuple[str, ParsedOperation]:
    """3.x §Operation Object → (channel key, operation); traits merge under it (object wins).

    ``channel`` MUST point to a channel in the root channels object; ``messages`` MUST point to
    messages of that channel and, when absent, means all of them. The messages count towards
    ``budget`` before any is read.
    """
    _check_length(key, MAX_OPERATION_KEY, at, "the operation key")
    operation = _apply_traits(operation, resolver, at, object_wins=True)
    # The schema checks operations written in place; one reached by a $ref may be anything.
    action = operation.get("action")
    if not isinstance(action, str) or action not in _V3_ACTIONS:
        raise AsyncAPIError(
            f'an operation\'s "action" must be "send" or "receive", found {describe(action)}',
            pointer=pointer_join(at, "action"),
        )
    if not is_ref(operation.get("channel")):
        raise AsyncAPIError(
            'an operation needs "channel": {"$ref": "#/channels/<key>"} (AsyncAPI 3.0 §Operation Object)',
            pointer=pointer_join(at, "channel"),
        )
    channel_ref = operation["channel"]["$ref"]
    tokens = _tokens(channel_ref)
    if len(tokens) != 2 or tokens[0] != "channels" or tokens[1] not in channels:
        raise AsyncAPIError(
            f'the operation\'s channel "{channel_ref}" must point to a channel under /channels '
            "(AsyncAPI 3.0 §Operation Object)",
            pointer=pointer_join(pointer_join(at, "channel"), "$ref"),
        )
    channel_key = tokens[1]
    summary = _summary(operation)
    resolver.charge(len(key) + len(summary) + 64, at=at)
    if operation.get("messages") is not None:
        messages_at = pointer_join(at, "messages")
        listed = _field(operation, "messages", list, at, "a list of message references")
        budget.spend(len(listed), at=messages_at, what=f'operation "{key}" lists {len(listed):,} messages')
        messages = [
            _message(item, data, resolver, pointer_join(messages_at, index), object_wins=True)
            for index, item in enumerate(listed)
        ]
    else:
        channel_at = pointer_join("/channels", channel_key)
        channel_messages = _field(
            channels[channel_key], "messages", dict, channel_at, "a mapping of messages"
        )
        count = len(channel_messages or {})
        budget.spend(
            count,
            at=at,
            what=f'operation "{key}" lists no "messages", so it carries all {count:,} messages of '
            f'channel "{channel_key}"',
        )
        messages = [
            _message(
                item,
                data,
                resolver,
                pointer_join(pointer_join(channel_at, "messages"), name),
                key=name,
                object_wins=True,
            )
            for name, item in (channel_messages or {}).items()
        ]
    bindings = _bindings(operation, resolver, at, "an Operation Bindings Object")
    parsed = ParsedOperation(
        key=key, action=_V3_ACTIONS[action], summary=summary, messages=messages, bindings=bindings
    )
    return channel_key, parsed


# --- shared ------------------------------------------------------------------------------------


def _channel(
    key: str,
    address: str,
    texts: dict[str, Any],
    item: dict[str, Any],
    operations: list[ParsedOperation],
    resolver: Resolver,
    at: str,
) -> ParsedChannel:
    _check_length(key, MAX_CHANNEL_KEY, at, "the channel key")
    _check_length(address, MAX_ADDRESS, pointer_join(at, "address"), "the channel address")
    title = _text(texts.get("title"))[:MAX_CHANNEL_TITLE]
    description = _text(texts.get("description"))
    resolver.charge(len(key) + len(address) + len(title) + len(description) + 64, at=at)
    parameters_at = pointer_join(at, "parameters")
    raw_parameters = _field(item, "parameters", dict, at, "a mapping of parameter names to Parameter Objects")
    parameters = {
        name: _parameter(value, resolver, pointer_join(parameters_at, name))
        for name, value in (raw_parameters or {}).items()
    }
    bindings = _bindings(item, resolver, at, "a Channel Bindings Object")
    return ParsedChannel(
        key=key,
        address=address,
        title=title,
        description=description,
        parameters=parameters,
        bindings=bindings,
        operations=operations,
    )


def _parameter(raw: Any, resolver: Resolver, at: str) -> dict[str, Any]:
    """A Parameter Object with refs resolved, in the shape the gateway and pages read.

    2.x §Parameter Object keeps ``enum``, ``pattern``, ``default`` and ``examples`` under
    ``schema``; 3.0 §Parameter Object has ``enum``, ``default`` and ``examples`` itself. A ``$ref``
    may lead anywhere, so the types those readers rely on are checked here: the parameter and its
    ``schema`` are mappings (``schema: true``, "any value", becomes ``{}``), ``enum`` and
    ``examples`` are lists, ``pattern`` a string.
    """
    parameter = _mapping(resolver, raw, at, "a Parameter Object")
    result = {
        key: resolver.resolve(value, at=pointer_join(at, key), schema=key == "schema")
        for key, value in parameter.items()
    }
    if "schema" in result:
        schema_at = pointer_join(at, "schema")
        if result["schema"] is True:
            result["schema"] = {}
        elif result["schema"] is False:
            raise AsyncAPIError("a parameter schema of false allows no value at all", pointer=schema_at)
        elif not isinstance(result["schema"], dict):
            raise AsyncAPIError(
                f"a parameter's schema must be a mapping, found {describe(result['schema'])}",
                pointer=schema_at,
            )
        _check_parameter_fields(result["schema"], schema_at)
    _check_parameter_fields(result, at)
    return result


def _check_parameter_fields(spec: dict[str, Any], at: str) -> None:
    for key, kind, what in (
        ("enum", list, "a list"),
        ("examples", list, "a list"),
        ("pattern", str, "a string"),
    ):
        _field(spec, key, kind, at, what)


def _message(
    raw: Any,
    data: dict[str, Any],
    resolver: Resolver,
    at: str,
    *,
    key: str = "",
    fallback: str = "message",
    object_wins: bool,
) -> dict[str, Any]:
    """A Message Object as ``{"name", "title", "summary", "content_type", "payload", "bindings",
    "examples"}``.

    ``name`` is the message's ``name``, else its 2.4+ ``messageId``, else ``key`` (its key in the
    channel's messages), else the key its ``$ref`` points at (``#/components/messages/<key>``,
    ``#/channels/<c>/messages/<key>``), else ``fallback``. ``content_type`` falls back to the
    document's ``defaultContentType`` (2.x §Message Object, 3.0 §Message Object).
    """
    message = _mapping(resolver, raw, at, "a Message Object")
    message = _apply_traits(message, resolver, at, object_wins=object_wins)
    result = {
        "name": _text(message.get("name") or message.get("messageId") or key or _ref_name(raw) or fallback),
        "title": _text(message.get("title")),
        "summary": _text(message.get("summary") or message.get("description")),
        "content_type": _text(message.get("contentType") or data.get("defaultContentType")),
    }
    resolver.charge(sum(len(text) for text in result.values()) + 64, at=at)
    result["payload"] = _payload(message, resolver, pointer_join(at, "payload"))
    result["bindings"] = _bindings(message, resolver, at, "a Message Bindings Object")
    result["examples"] = _examples(message, resolver, at)
    return result


def _bindings(obj: dict[str, Any], resolver: Resolver, at: str, what: str) -> dict[str, Any]:
    """``obj["bindings"]`` (a Channel, Operation or Message Bindings Object: protocol name →
    binding, e.g. ``ws``) with refs resolved; ``{}`` when absent."""
    if obj.get("bindings") is None:
        return {}
    bindings_at = pointer_join(at, "bindings")
    resolved = resolver.resolve(_mapping(resolver, obj["bindings"], bindings_at, what), at=bindings_at)
    return resolved if isinstance(resolved, dict) else {}


def _examples(message: dict[str, Any], resolver: Resolver, at: str) -> list[dict[str, Any]]:
    """The message's examples as ``[{"name", "summary", "headers", "payload"}]`` (only the keys
    given), refs resolved. 3.0 §Message Example Object and 2.3+ §Message Object ``examples``
    have all four; 2.0–2.2 examples only ``headers`` and ``payload``."""
    raw = _field(message, "examples", list, at, "a list of Message Example Objects")
    examples_at = pointer_join(at, "examples")
    result = []
    for index, item in enumerate(raw or []):
        example = _mapping(resolver, item, pointer_join(examples_at, index), "a Message Example Object")
        keys = [key for key in ("name", "summary", "headers", "payload") if key in example]
        result.append(
            {
                key: resolver.resolve(example[key], at=pointer_join(pointer_join(examples_at, index), key))
                for key in keys
            }
        )
    return result


# Schema formats whose payloads are JSON Schema (2.6.0 §Message Object schemaFormat, 3.0.0
# §Multi Format Schema Object); Avro, RAML or Protobuf payloads may legitimately be strings.
_JSON_SCHEMA_FORMATS = ("application/vnd.aai.asyncapi", "application/schema+json", "application/schema+yaml")


def _payload(message: dict[str, Any], resolver: Resolver, at: str) -> Any:
    """The message's payload with refs resolved; None when absent.

    A JSON Schema payload (the default format) must be a schema, a mapping or a boolean, and so
    must every reference in it; otherwise ``AsyncAPIError`` at the reference.
    """
    payload = message.get("payload")
    if payload is None:
        return None
    target = resolver.deref(payload, at=at) if is_ref(payload) and is_internal(payload["$ref"]) else payload
    schema_format = message.get("schemaFormat")
    if isinstance(target, dict) and "schema" in target and "schemaFormat" in target:
        schema_format = target["schemaFormat"]  # 3.x Multi Format Schema Object
    json_schema = schema_format is None or str(schema_format).startswith(_JSON_SCHEMA_FORMATS)
    resolved = resolver.resolve(payload, at=at, schema=json_schema)
    if json_schema and not isinstance(resolved, dict | bool):
        raise AsyncAPIError(
            f"a message payload must be a schema (a mapping), found {describe(resolved)}", pointer=at
        )
    return resolved


def _apply_traits(obj: dict[str, Any], resolver: Resolver, at: str, *, object_wins: bool) -> dict[str, Any]:
    """Merge an operation's or message's ``traits`` into it with JSON Merge Patch (RFC 7396).

    2.x (§Operation/§Message Object ``traits``): each trait is merge-patched *into* the object, so
    a trait's value wins. 3.x (§Operation Trait Object): the object's own values win.
    """
    traits = obj.get("traits")
    if not isinstance(traits, list) or not traits:
        return obj
    result = {key: value for key, value in obj.items() if key != "traits"}
    for index, raw in enumerate(traits):
        trait = _mapping(resolver, raw, pointer_join(pointer_join(at, "traits"), index), "a trait")
        result = _merge_patch(trait, result) if object_wins else _merge_patch(result, trait)
    return result


def _merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7396 §2: ``patch`` applied to ``target`` (null in ``patch`` removes a key)."""
    if not isinstance(patch, dict):
        return patch
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = _merge_patch(result.get(key), value)
    return result


def _ref_name(raw: Any) -> str:
    tokens = _tokens(raw["$ref"]) if is_ref(raw) else []
    return tokens[-1] if len(tokens) >= 2 and tokens[-2] == "messages" else ""


def _tokens(ref: str) -> list[str]:
    """The pointer tokens of an internal ref; [] for external or malformed refs."""
    try:
        return ref_tokens(ref) if is_internal(ref) else []
    except ValueError:
        return []


def _mapping(resolver: Resolver, raw: Any, at: str, what: str) -> dict[str, Any]:
    """``raw``, or what its (chain of) references points to, if that is a mapping.

    A ``$ref`` may point anywhere in the document (``#/info/title``), so the target's type is
    checked here; raises ``AsyncAPIError`` at the reference (``<at>/$ref``) or at ``at``.
    """
    node = resolver.deref(raw, at=at)
    if isinstance(node, dict):
        return node
    if is_ref(raw):
        raise AsyncAPIError(
            f'the reference "{raw["$ref"]}" points to {describe(node)}, but {what} (a mapping) belongs here',
            pointer=pointer_join(at, "$ref"),
        )
    raise AsyncAPIError(f"expected {what} (a mapping) here, found {describe(node)}", pointer=at)


def _field(obj: dict[str, Any], key: str, kind: type, at: str, what: str) -> Any:
    """``obj[key]`` if it is a ``kind`` or null/absent (None). Objects reached through a ``$ref``
    escaped schema validation, so fields that later code relies on are checked here."""
    value = obj.get(key)
    if value is None or isinstance(value, kind):
        return value
    raise AsyncAPIError(f'"{key}" must be {what}, found {describe(value)}', pointer=pointer_join(at, key))


def _summary(obj: dict[str, Any]) -> str:
    return _text(obj.get("summary") or obj.get("title") or obj.get("description"))


def _text(value: Any) -> str:
    return "" if value is None else str(value).strip()


def _check_length(value: str, limit: int, pointer: str, what: str) -> None:
    if len(value) > limit:
        raise AsyncAPIError(
            f"{what} is {len(value)} characters long; Eventgate stores at most {limit}", pointer=pointer
        )


def first_sentence(text: str, limit: int = 300) -> str:
    """The first sentence of the first paragraph of Markdown ``text``, at most ``limit`` characters."""
    paragraph = next((part for part in re.split(r"\n\s*\n", text.strip()) if part.strip()), "")
    paragraph = " ".join(paragraph.split())
    sentence = re.split(r"(?<=[.!?])\s", paragraph, maxsplit=1)[0]
    return sentence if len(sentence) <= limit else sentence[: limit - 1].rstrip() + "…"
