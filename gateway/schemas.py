"""JSON Schema checks of client-written values against provider-written schemas, and the time
budget every provider pattern runs under.

Channel parameter values (``parameter_error``, at the handshake and on multiplexed subscribe and
publish frames) and client event payloads (``payload_error``, when the API version validates
payloads) are checked with jsonschema's Draft 7 validator (the base of the AsyncAPI Schema
Object, AsyncAPI 3.0 §Schema Object). Provider-written patterns can backtrack exponentially on
client-written text (ReDoS, CWE-1333), so the keywords that run patterns (``pattern``,
``patternProperties``, ``additionalProperties``) are replaced by ones that run the ``regex``
module with a timeout and the GIL released (``MatchBudget``); a provider pattern never reaches
the stdlib ``re``. Budgets count the CPU time of the matching thread only, so a busy process
(other threads, waits for the GIL) never makes an ordinary match look slow.
"""

from __future__ import annotations

import functools
import json
import logging
import re
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextvars import ContextVar
from typing import Any

import regex
from jsonschema import Draft7Validator, validators
from jsonschema.exceptions import ValidationError, best_match

log = logging.getLogger(__name__)

# CPU seconds one handshake (or one multiplexed subscribe/publish frame) may spend matching its
# address against channel templates and parameter patterns, all together (``MatchBudget``).
# Provider templates and JSON Schema patterns can backtrack exponentially (ReDoS, CWE-1333); a
# normal handshake needs well under a millisecond.
MATCH_TIME_BUDGET = 0.05


class MatchBudget:
    """The matching time left to one handshake (or frame, or client event), shared by all its
    template and pattern matches: CPU seconds of the thread that matches (``time.thread_time``).

    Only the matching work counts: not compiling (a 600-channel API compiles its templates once
    per process, ``gateway.auth._template_regex``), and not time spent waiting, for the GIL or
    for a core, while other threads run. ``run`` matches with the ``regex`` module's
    ``concurrent=True`` (the GIL is released while matching, so the event loop keeps serving
    other clients) and ``timeout=`` the budget left. That timeout is measured by the module
    on the *process* CPU clock (C ``clock()``: every thread's CPU time counts), so on a busy
    process it can expire before this thread did the work; a match stopped so is run again with
    what is left of this thread's budget, at most ``MAX_ATTEMPTS`` times in all (a pathological
    pattern still stops once this thread spent the budget: the attempts bound the wall time
    under contention). Raises ``TimeoutError`` once the budget is spent.
    """

    MAX_ATTEMPTS = 4

    def __init__(self, seconds: float = MATCH_TIME_BUDGET) -> None:
        self.left = seconds

    def run(
        self, pattern: regex.Pattern[str], value: str, *, search: bool = False
    ) -> regex.Match[str] | None:
        """``pattern.search(value)`` if ``search`` else ``pattern.match(value)``, within budget."""
        method = pattern.search if search else pattern.match
        for _attempt in range(self.MAX_ATTEMPTS):
            if self.left <= 0:
                break
            started = time.thread_time()
            try:
                return method(value, timeout=self.left, concurrent=True)
            except TimeoutError:
                continue  # the process clock ran out; this thread's budget may not have
            finally:
                self.left -= time.thread_time() - started
        raise TimeoutError("regex timed out")


# The budget of the schema validation running in this context (set by the callers below).
_budget: ContextVar[MatchBudget | None] = ContextVar("eventgate_match_budget", default=None)


@functools.lru_cache(maxsize=1024)
def _provider_pattern(pattern: str) -> regex.Pattern[str] | None:
    """``pattern`` compiled by the ``regex`` module, or None if it does not parse.

    JSON Schema patterns are ECMA-262 and unanchored (JSON Schema Validation §6.3.3); the
    ``regex`` module agrees on the common subset. An unparsable pattern does not block access.
    """
    try:
        return regex.compile(pattern)
    except (regex.error, TypeError, ValueError, OverflowError):
        return None


def _pattern_search(pattern: str, text: str) -> bool:
    """Whether the provider's ``pattern`` finds a match in ``text``, within the running budget.

    Raises ``TimeoutError`` when the budget runs out."""
    compiled = _provider_pattern(pattern)
    if compiled is None:
        return True
    budget = _budget.get()
    if budget is None:  # a caller that set no budget still gets one, per call
        budget = MatchBudget()
    return budget.run(compiled, text, search=True) is not None


def _pattern_keyword(validator: Any, pattern: str, instance: Any, schema: Any) -> Iterator[ValidationError]:
    if validator.is_type(instance, "string") and not _pattern_search(pattern, instance):
        yield ValidationError(f"{instance!r} does not match {pattern!r}")


def _pattern_properties_keyword(
    validator: Any, patterns: dict[str, Any], instance: Any, schema: Any
) -> Iterator[ValidationError]:
    if not validator.is_type(instance, "object"):
        return
    for pattern, subschema in patterns.items():
        for name, value in instance.items():
            if _pattern_search(pattern, name):
                yield from validator.descend(value, subschema, path=name, schema_path=pattern)


def _additional_properties_keyword(
    validator: Any, additional: Any, instance: Any, schema: Any
) -> Iterator[ValidationError]:
    if not validator.is_type(instance, "object"):
        return
    properties = schema.get("properties", {})
    patterns = list(schema.get("patternProperties", {}))
    extras = [
        name
        for name in instance
        if name not in properties and not any(_pattern_search(pattern, name) for pattern in patterns)
    ]
    if validator.is_type(additional, "object"):
        for name in extras:
            yield from validator.descend(instance[name], additional, path=name)
    elif additional is False and extras:
        names = ", ".join(repr(name) for name in sorted(extras)[:5])
        yield ValidationError(f"additional properties are not allowed ({names})")


# JSON Schema Draft 7 (the base of the AsyncAPI Schema Object, AsyncAPI 3.0 §Schema Object) with
# the three keywords that run patterns (jsonschema runs them with the stdlib ``re``, unbounded)
# replaced by budgeted ones. No format checker: ``format`` is an annotation here.
SchemaValidator = validators.extend(
    Draft7Validator,
    {
        "pattern": _pattern_keyword,
        "patternProperties": _pattern_properties_keyword,
        "additionalProperties": _additional_properties_keyword,
    },
)


@functools.lru_cache(maxsize=1024)
def schema_validator(schema_json: str) -> Any:
    """A ``SchemaValidator`` for the JSON text of a schema, built once per process."""
    return SchemaValidator(json.loads(schema_json))


def schema_errors(schema_json: str, instance: Any, *, budget: MatchBudget) -> ValidationError | None:
    """The most relevant error of ``instance`` against the schema (``best_match``), or None.

    Every pattern runs within ``budget``: raises ``TimeoutError`` when it runs out. A schema
    jsonschema cannot use (a reference it cannot resolve, a keyword of the wrong type) raises
    what jsonschema raises; callers decide.
    """
    token = _budget.set(budget)
    try:
        return best_match(schema_validator(schema_json).iter_errors(instance))
    finally:
        _budget.reset(token)


def error_text(error: ValidationError) -> str:
    """A short English text for one jsonschema error (its own messages repeat the whole
    instance, which may be a megabyte). Values are cut to 40 characters."""
    value, keyword, limit = _short(error.instance), str(error.validator), error.validator_value
    if keyword == "enum" and isinstance(limit, list):
        allowed = ", ".join(_short(item) for item in limit[:8]) + (", …" if len(limit) > 8 else "")
        return f"{value} is not one of {allowed}"
    texts = {
        "type": "{value} is not of type {types}",
        "const": "{value} is not {short}",
        "pattern": "{value} does not match the pattern {short}",
        "minLength": "{value} is shorter than {limit} characters",
        "maxLength": "{value} is longer than {limit} characters",
        "minimum": "{value} is less than the minimum {limit}",
        "maximum": "{value} is greater than the maximum {limit}",
        "exclusiveMinimum": "{value} is not greater than {limit}",
        "exclusiveMaximum": "{value} is not less than {limit}",
        "multipleOf": "{value} is not a multiple of {limit}",
        "minItems": "has fewer than {limit} items",
        "maxItems": "has more than {limit} items",
    }
    if keyword in texts:
        return texts[keyword].format(value=value, types=_types(limit), short=_short(limit), limit=limit)
    return error.message[:200]


def _short(value: Any) -> str:
    text = repr(value) if not isinstance(value, dict | list) else json.dumps(value)
    return text if len(text) <= 40 else text[:39] + "…"


def _types(types: Any) -> str:
    return " or ".join(str(t) for t in types) if isinstance(types, list) else str(types)


# Numeric keywords: a parameter value (always text in a URL) is read as a number for them.
_NUMERIC_KEYWORDS = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf")
# Our own fixed patterns for numbers in JSON's syntax (RFC 8259 §6), linear: stdlib re is fine.
_INTEGER_TEXT = re.compile(r"-?[0-9]+")
_NUMBER_TEXT = re.compile(r"-?[0-9]+(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?")
_JSON_TYPES = {bool: "boolean", int: "integer", float: "number", str: "string", type(None): "null"}


def parameter_schema(spec: Mapping[str, Any]) -> dict[str, Any]:
    """The JSON Schema of one channel parameter: 2.x keeps it under ``schema`` (AsyncAPI 2.6
    §Parameter Object); 3.0 has ``enum`` (strings) on the Parameter Object itself (§Parameter
    Object). A ``pattern`` written beside ``enum`` is honoured too."""
    schema = spec.get("schema")
    schema = dict(schema) if isinstance(schema, dict) else {}
    for key in ("enum", "pattern"):
        if spec.get(key) is not None and key not in schema:
            schema[key] = spec[key]
    return schema


def _parameter_candidates(schema: Mapping[str, Any], value: str) -> tuple[list[Any], str]:
    """The JSON values the URL text ``value`` can stand for under ``schema``'s types, and the
    types' description. Without a ``type``, the types are those of the ``enum``/``const``
    values, ``number`` with numeric keywords, else ``string``."""
    declared = schema.get("type")
    if isinstance(declared, str):
        kinds = [declared]
    elif isinstance(declared, list):
        kinds = [str(kind) for kind in declared]
    else:
        examples = list(schema.get("enum") or []) + ([schema["const"]] if "const" in schema else [])
        kinds = list(dict.fromkeys(_JSON_TYPES.get(type(item), "string") for item in examples))
        if any(keyword in schema for keyword in _NUMERIC_KEYWORDS):
            kinds.append("number")
        kinds = kinds or ["string"]
    candidates: list[Any] = []
    for kind in kinds:
        if kind == "string":
            candidates.append(value)
        elif kind == "integer" and _INTEGER_TEXT.fullmatch(value):
            candidates.append(int(value))
        elif kind == "number" and _NUMBER_TEXT.fullmatch(value):
            number = float(value)
            if number == number and abs(number) != float("inf"):
                candidates.append(int(value) if _INTEGER_TEXT.fullmatch(value) else number)
        elif kind == "boolean" and value in ("true", "false"):
            candidates.append(value == "true")
        elif kind == "null" and value == "null":
            candidates.append(None)
    return candidates, " or ".join(kinds)


def parameter_error(name: str, spec: Mapping[str, Any], value: str, *, budget: MatchBudget) -> str | None:
    """Why ``value`` (the text of parameter ``name`` in a concrete address) fails the
    parameter's schema, or None if it fits.

    Checks JSON Schema Draft 7 keywords (``type``, ``enum``, ``const``, ``pattern``,
    ``minLength``/``maxLength``, ``minimum``/``maximum`` and the exclusive ones, ``multipleOf``,
    ``anyOf``...) after reading the text as the schema's type: ``"42"`` is the integer 42 under
    ``type: integer``. Every pattern runs within ``budget`` (raises ``TimeoutError``). A schema
    jsonschema cannot use does not block access (logged).
    """
    schema = parameter_schema(spec)
    if not schema:
        return None
    candidates, kinds = _parameter_candidates(schema, value)
    if not candidates:
        return f"bad parameter {name!r}: {_short(value)} is not of type {kinds}"
    schema_json = json.dumps(schema, sort_keys=True)
    first: ValidationError | None = None
    for candidate in candidates:
        try:
            error = schema_errors(schema_json, candidate, budget=budget)
        except TimeoutError:
            raise
        except Exception:  # noqa: BLE001 - the provider's schema is broken, not the client's value
            log.warning("Parameter %r has a schema jsonschema cannot use; not checked", name, exc_info=True)
            return None
        if error is None:
            return None
        first = first or error
    assert first is not None
    return f"bad parameter {name!r}: {error_text(first)}"


def parameters_error(
    parameters: Mapping[str, Any], values: Mapping[str, str], *, budget: MatchBudget
) -> str | None:
    """The first ``parameter_error`` of the parameter ``values`` (name → URL text) of a channel
    whose Parameter Objects are ``parameters``, or None."""
    for name, value in values.items():
        spec = parameters.get(name)
        if isinstance(spec, dict):
            error = parameter_error(name, spec, value, budget=budget)
            if error is not None:
                return error
    return None


# CPU seconds the patterns of one client event's payload check may take, all together.
PAYLOAD_MATCH_TIME_BUDGET = 0.1


def json_pointer(path: Iterable[Any]) -> str:
    """The JSON Pointer (RFC 6901 §3-4: ``~`` as ``~0``, ``/`` as ``~1``) of a jsonschema path;
    ``""`` is the whole document."""
    return "".join("/" + str(part).replace("~", "~0").replace("/", "~1") for part in path)


def payload_error(schemas: Sequence[str], payload: Any) -> tuple[str, str] | None:
    """``(JSON pointer, reason)`` when ``payload`` (a parsed client event) fits none of the
    JSON texts ``schemas`` (the send operation's message payload schemas), else None.

    With several messages the payload must fit one of them; the reported failure is the one
    that got furthest into the payload (the longest path), since that is most likely the message
    the client meant. Every pattern runs within ``PAYLOAD_MATCH_TIME_BUDGET`` seconds; over it,
    the payload is refused ("took too long to validate"), never accepted. A schema jsonschema
    cannot use (an unresolvable reference, a keyword of the wrong type) is skipped and logged:
    the provider's mistake must not stop the client's events.
    """
    if not schemas:
        return None
    budget = MatchBudget(PAYLOAD_MATCH_TIME_BUDGET)
    errors: list[ValidationError] = []
    for schema in schemas:
        try:
            error = schema_errors(schema, payload, budget=budget)
        except TimeoutError:
            return "", f"payload took too long to validate (over {PAYLOAD_MATCH_TIME_BUDGET} s)"
        except RecursionError:
            return "", "payload nested too deeply to validate"
        except Exception:  # noqa: BLE001 - the provider's schema is broken, not the client's event
            log.warning("A message payload schema jsonschema cannot use; not checked", exc_info=True)
            return None
        if error is None:
            return None
        errors.append(error)
    error = max(errors, key=lambda e: len(e.absolute_path))
    pointer = json_pointer(error.absolute_path)
    where = f"payload at {pointer}" if pointer else "payload"
    prefix = f"matches none of the channel's {len(schemas)} messages; " if len(schemas) > 1 else ""
    return pointer, f"{prefix}{where}: {error_text(error)}"
