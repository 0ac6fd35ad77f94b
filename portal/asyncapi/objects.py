"""Reading the AsyncAPI objects 2.x and 3.x share: channels' texts and parameters, messages
(payloads, bindings, examples), traits (RFC 7396 merge), and the checks that keep every value
storable (types of objects reached through ``$ref``, lengths, the message budget).

Used by ``portal.asyncapi.v2`` and ``portal.asyncapi.v3``. ``at`` is always the JSON pointer of
the object read; problems raise ``AsyncAPIError`` with the pointer of the offending value.
"""

from __future__ import annotations

import re
from typing import Any

from portal.asyncapi.errors import AsyncAPIError, DocumentTooLargeError
from portal.asyncapi.locations import pointer_join
from portal.asyncapi.parsed import (
    MAX_ADDRESS,
    MAX_CHANNEL_KEY,
    MAX_CHANNEL_TITLE,
    MAX_MESSAGES,
    ParsedChannel,
    ParsedOperation,
)
from portal.asyncapi.refs import Resolver, describe, is_internal, is_ref, ref_tokens


class MessageBudget:
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


def build_channel(
    key: str,
    address: str,
    texts: dict[str, Any],
    item: dict[str, Any],
    operations: list[ParsedOperation],
    resolver: Resolver,
    at: str,
) -> ParsedChannel:
    """A channel with its parameters and bindings read from ``item`` (its Channel Item or Channel
    Object at ``at``), ``title``/``description`` from ``texts``, and its ``operations``; key,
    address and texts are checked against the column sizes of ``portal.models``."""
    check_length(key, MAX_CHANNEL_KEY, at, "the channel key")
    check_length(address, MAX_ADDRESS, pointer_join(at, "address"), "the channel address")
    title = as_text(texts.get("title"))[:MAX_CHANNEL_TITLE]
    description = as_text(texts.get("description"))
    resolver.charge(len(key) + len(address) + len(title) + len(description) + 64, at=at)
    parameters_at = pointer_join(at, "parameters")
    raw_parameters = optional_field(
        item, "parameters", dict, at, "a mapping of parameter names to Parameter Objects"
    )
    parameters = {
        name: _parameter(value, resolver, pointer_join(parameters_at, name))
        for name, value in (raw_parameters or {}).items()
    }
    bindings = read_bindings(item, resolver, at, "a Channel Bindings Object")
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
    parameter = require_mapping(resolver, raw, at, "a Parameter Object")
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
        optional_field(spec, key, kind, at, what)


def build_message(
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
    message = require_mapping(resolver, raw, at, "a Message Object")
    message = apply_traits(message, resolver, at, object_wins=object_wins)
    result = {
        "name": as_text(message.get("name") or message.get("messageId") or key or _ref_name(raw) or fallback),
        "title": as_text(message.get("title")),
        "summary": as_text(message.get("summary") or message.get("description")),
        "content_type": as_text(message.get("contentType") or data.get("defaultContentType")),
    }
    resolver.charge(sum(len(text) for text in result.values()) + 64, at=at)
    result["payload"] = _payload(message, resolver, pointer_join(at, "payload"))
    result["bindings"] = read_bindings(message, resolver, at, "a Message Bindings Object")
    result["examples"] = _examples(message, resolver, at)
    return result


def read_bindings(obj: dict[str, Any], resolver: Resolver, at: str, what: str) -> dict[str, Any]:
    """``obj["bindings"]`` (a Channel, Operation or Message Bindings Object: protocol name →
    binding, e.g. ``ws``) with refs resolved; ``{}`` when absent."""
    if obj.get("bindings") is None:
        return {}
    bindings_at = pointer_join(at, "bindings")
    resolved = resolver.resolve(require_mapping(resolver, obj["bindings"], bindings_at, what), at=bindings_at)
    return resolved if isinstance(resolved, dict) else {}


def _examples(message: dict[str, Any], resolver: Resolver, at: str) -> list[dict[str, Any]]:
    """The message's examples as ``[{"name", "summary", "headers", "payload"}]`` (only the keys
    given), refs resolved. 3.0 §Message Example Object and 2.3+ §Message Object ``examples``
    have all four; 2.0–2.2 examples only ``headers`` and ``payload``."""
    raw = optional_field(message, "examples", list, at, "a list of Message Example Objects")
    examples_at = pointer_join(at, "examples")
    result = []
    for index, item in enumerate(raw or []):
        example = require_mapping(
            resolver, item, pointer_join(examples_at, index), "a Message Example Object"
        )
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


def apply_traits(obj: dict[str, Any], resolver: Resolver, at: str, *, object_wins: bool) -> dict[str, Any]:
    """Merge an operation's or message's ``traits`` into it with JSON Merge Patch (RFC 7396).

    2.x (§Operation/§Message Object ``traits``): each trait is merge-patched *into* the object, so
    a trait's value wins. 3.x (§Operation Trait Object): the object's own values win.
    """
    traits = obj.get("traits")
    if not isinstance(traits, list) or not traits:
        return obj
    result = {key: value for key, value in obj.items() if key != "traits"}
    for index, raw in enumerate(traits):
        trait = require_mapping(resolver, raw, pointer_join(pointer_join(at, "traits"), index), "a trait")
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
    tokens = internal_tokens(raw["$ref"]) if is_ref(raw) else []
    return tokens[-1] if len(tokens) >= 2 and tokens[-2] == "messages" else ""


def internal_tokens(ref: str) -> list[str]:
    """The pointer tokens of an internal ref; [] for external or malformed refs."""
    try:
        return ref_tokens(ref) if is_internal(ref) else []
    except ValueError:
        return []


def require_mapping(resolver: Resolver, raw: Any, at: str, what: str) -> dict[str, Any]:
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


def optional_field(obj: dict[str, Any], key: str, kind: type, at: str, what: str) -> Any:
    """``obj[key]`` if it is a ``kind`` or null/absent (None). Objects reached through a ``$ref``
    escaped schema validation, so fields that later code relies on are checked here."""
    value = obj.get(key)
    if value is None or isinstance(value, kind):
        return value
    raise AsyncAPIError(f'"{key}" must be {what}, found {describe(value)}', pointer=pointer_join(at, key))


def summary_of(obj: dict[str, Any]) -> str:
    """An operation's one-line text: its ``summary``, else ``title``, else ``description``."""
    return as_text(obj.get("summary") or obj.get("title") or obj.get("description"))


def as_text(value: Any) -> str:
    """``value`` as a stripped string; ``""`` for null or absent."""
    return "" if value is None else str(value).strip()


def check_length(value: str, limit: int, pointer: str, what: str) -> None:
    """Raise ``AsyncAPIError`` at ``pointer`` if ``value`` (described by ``what``) is longer than
    ``limit`` characters, the size of the column that stores it."""
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
