"""Validation of AsyncAPI documents against the official AsyncAPI JSON Schemas.

The schemas come from the npm package ``@asyncapi/specs`` (pinned in package.json, installed by
``npm ci`` into ``settings.NODE_MODULES_DIR``); nothing here is hand-written. Each
``schemas/<version>.json`` is a JSON Schema draft-07 bundle whose ``definitions`` are keyed by
their ``$id`` (``http://asyncapi.com/definitions/3.0.0/info.json``) and refer to each other by
those ids, so the bundle is loaded into a ``referencing`` registry and crawled; the JSON Schema
meta-schemas the bundle refers to come with ``jsonschema`` itself. Nothing is fetched over the
network.
"""

from __future__ import annotations

import copy
import functools
import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jsonschema
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from jsonschema.exceptions import ValidationError, best_match
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT7

from portal.asyncapi.errors import AsyncAPIError
from portal.asyncapi.locations import pointer_escape, pointer_join

if TYPE_CHECKING:
    from portal.asyncapi.bundle import Bundle

SUPPORTED_VERSIONS: tuple[str, ...] = (
    "2.0.0",
    "2.1.0",
    "2.2.0",
    "2.3.0",
    "2.4.0",
    "2.5.0",
    "2.6.0",
    "3.0.0",
    "3.1.0",
)
SUPPORTED_VERSIONS_TEXT = "2.0.0–2.6.0, 3.0.0 and 3.1.0"

# The 2.0.0–2.4.0 bundles wrongly refuse a channel parameter written as a Reference Object.
_PARAMETER_REF_DEFECT_VERSIONS = frozenset({"2.0.0", "2.1.0", "2.2.0", "2.3.0", "2.4.0"})
_MAX_MESSAGE = 300
# Schema problems reported for one document: enough to fix a document in one go, few enough
# to read (and to keep a 400 answer small when a whole generated section is wrong).
MAX_PROBLEMS = 20


def check_version(data: Any) -> str:
    """The document's ``asyncapi`` version if Eventgate supports it.

    Raises ``AsyncAPIError`` when the top level is not a mapping, ``asyncapi`` is missing or not
    a string, or the version is not one of ``SUPPORTED_VERSIONS`` (1.x, pre-releases, unknown).
    """
    if not isinstance(data, dict):
        raise AsyncAPIError(
            f"an AsyncAPI document must be a mapping (an object) at the top level, not {_json_type(data)}"
        )
    if "asyncapi" not in data:
        raise AsyncAPIError(
            f'this is not an AsyncAPI document: the "asyncapi" key (the spec version, one of '
            f"{SUPPORTED_VERSIONS_TEXT}) is missing"
        )
    version = data["asyncapi"]
    if not isinstance(version, str):
        raise AsyncAPIError(
            f'"asyncapi" must be a string such as "3.0.0" (quote it in YAML), '
            f"not {_json_type(version)} {version!r}",
            pointer="/asyncapi",
        )
    if version not in SUPPORTED_VERSIONS:
        raise AsyncAPIError(
            f"AsyncAPI {version} is not supported; supported versions are {SUPPORTED_VERSIONS_TEXT}",
            pointer="/asyncapi",
        )
    return version


def validate_document(document: Bundle, version: str) -> None:
    """Validate ``document.data`` (the bundled document) against the official schema of ``version``.

    Raises one ``AsyncAPIError`` for the most relevant problem (``jsonschema``'s ``best_match``,
    as always), with the file the offending value came from, its pointer there and its line. For
    unknown keys the message names the key and the line is the key's own line. So that one
    round trip shows everything, the error's ``more`` lists the other problems, at most one per
    location (instance pointer; ``best_match`` picks it there, which also descends into
    ``oneOf``/``anyOf``), ordered by file and line, up to ``MAX_PROBLEMS`` in all; the number
    left out is ``more_omitted``.
    """
    validator = _validator(str(settings.NODE_MODULES_DIR), version)
    errors = list(validator.iter_errors(document.data))
    if not errors:
        return
    main = best_match(errors)
    assert main is not None
    by_location: dict[tuple[str | int, ...], list[ValidationError]] = {}
    for error in errors:
        by_location.setdefault(tuple(error.absolute_path), []).append(error)
    # The main problem first, so that it wins when another location's best match lands on the
    # same pointer (a oneOf descending into a child that also fails on its own).
    matches = [main, *(best_match(group) for group in by_location.values())]
    problems: dict[tuple[str, str], AsyncAPIError] = {}
    for match in matches:
        assert match is not None
        problem = _problem(document, match, version)
        problems.setdefault((problem.filename, problem.pointer), problem)
    first, *others = problems.values()
    others.sort(key=lambda p: (p.filename, p.line if p.line is not None else float("inf"), p.pointer))
    first.more = others[: MAX_PROBLEMS - 1]
    first.more_omitted = max(0, len(others) - (MAX_PROBLEMS - 1))
    raise first


def _problem(document: Bundle, error: ValidationError, version: str) -> AsyncAPIError:
    """``error`` as an ``AsyncAPIError`` placed in the file, pointer and line it came from."""
    pointer = "".join(f"/{pointer_escape(token)}" for token in error.absolute_path)
    message, line_pointer = _describe(error, version, pointer)
    return document.place(AsyncAPIError(message, pointer=pointer), line_pointer=line_pointer)


def schema_path(node_modules: Path, version: str) -> Path:
    """Where ``@asyncapi/specs`` keeps the bundled schema of ``version``."""
    return node_modules / "@asyncapi" / "specs" / "schemas" / f"{version}.json"


@functools.cache
def _validator(node_modules: str, version: str) -> jsonschema.protocols.Validator:
    """A draft-07 validator for ``version``, built once per process (loading takes milliseconds,
    validating a large document far longer, so only the loading is cached)."""
    path = schema_path(Path(node_modules), version)
    try:
        schema = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ImproperlyConfigured(
            f"The AsyncAPI JSON Schema {path} is missing; run `make setup` (npm ci installs @asyncapi/specs)."
        ) from None
    if version in _PARAMETER_REF_DEFECT_VERSIONS:
        schema = _allow_parameter_references(schema, version)
    resource = Resource.from_contents(schema, default_specification=DRAFT7)
    registry = Registry().with_resource(schema["$id"], resource).crawl()
    validator_class = jsonschema.validators.validator_for(schema, default=jsonschema.Draft7Validator)
    return validator_class(schema, registry=registry)


def _allow_parameter_references(schema: dict[str, Any], version: str) -> dict[str, Any]:
    """Work around asyncapi/spec-json-schemas#296 in the 2.0.0–2.4.0 bundles.

    Those bundles let a channel parameter be ``oneOf: [Reference, Parameter]`` while the
    Parameter definition also accepts a ``$ref`` property, so ``{"$ref": "#/components/parameters/x"}``
    matches both branches and ``oneOf`` fails, although the spec (2.0.0 §Parameters Object:
    "Map[string, Parameter Object | Reference Object]") allows it. The 2.5.0 schemas fixed this
    (spec-json-schemas#165/#275) by dropping ``$ref`` from Parameter; this does the same to our
    in-memory copy, so a Reference Object parameter is valid exactly as it is under 2.5.0+.
    """
    schema = copy.deepcopy(schema)
    base = f"http://asyncapi.com/definitions/{version}"
    definitions = schema["definitions"]
    parameter = definitions[f"{base}/parameter.json"]
    parameter.get("properties", {}).pop("$ref", None)
    definitions[f"{base}/parameters.json"]["additionalProperties"] = {
        "oneOf": [{"$ref": f"{base}/Reference.json"}, {"$ref": f"{base}/parameter.json"}]
    }
    return schema


def _describe(error: ValidationError, version: str, pointer: str) -> tuple[str, str]:
    """A readable message for ``error`` and the pointer whose line to cite."""
    schema = error.schema if isinstance(error.schema, dict) else {}
    instance = error.instance
    where = f"the AsyncAPI {version} schema"
    if error.validator in ("additionalProperties", "unevaluatedProperties") and isinstance(instance, dict):
        unknown = _unknown_keys(instance, schema)
        if unknown:
            names = ", ".join(f'"{key}"' for key in unknown)
            noun = "key" if len(unknown) == 1 else "keys"
            return f"unknown {noun} {names} (not allowed by {where})", pointer_join(pointer, unknown[0])
    if error.validator == "required":
        missing = re.match(r"^'(.+)' is a required property$", error.message)
        key = missing.group(1) if missing else error.message
        return f'required key "{key}" is missing ({where})', pointer
    if error.validator == "type":
        return f"expected {_expected(error.validator_value)}, found {_json_type(instance)} ({where})", pointer
    if error.validator == "enum":
        allowed = ", ".join(json.dumps(option) for option in error.validator_value)
        return _clip(f"{_short(instance)} is not one of the allowed values: {allowed} ({where})"), pointer
    if error.validator == "oneOf" and not error.context:
        return f"this value matches more than one of the forms {where} allows, so it is ambiguous", pointer
    if error.validator in ("oneOf", "anyOf"):
        return f"this value matches none of the forms {where} allows", pointer
    return _clip(f"{_replace_instance(error.message, instance)} ({where})"), pointer


def _unknown_keys(instance: dict[str, Any], schema: dict[str, Any]) -> list[str]:
    known = schema.get("properties", {})
    patterns = [re.compile(pattern) for pattern in schema.get("patternProperties", {})]
    return [key for key in instance if key not in known and not any(p.search(key) for p in patterns)]


def _expected(types: str | list[str]) -> str:
    if isinstance(types, str):
        return _article(types)
    return " or ".join(_article(name) for name in types)


def _article(name: str) -> str:
    return {"object": "a mapping (object)", "array": "a list", "integer": "an integer"}.get(name, f"a {name}")


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    return "a mapping (object)"


def _short(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= 60 else text[:57] + "…"


def _replace_instance(message: str, instance: Any) -> str:
    # jsonschema starts many messages with the repr of the whole offending value; shorten it.
    rendered = repr(instance)
    if message.startswith(rendered):
        return _short(instance) + message[len(rendered) :]
    return message


def _clip(message: str) -> str:
    return message if len(message) <= _MAX_MESSAGE else message[: _MAX_MESSAGE - 1] + "…"
