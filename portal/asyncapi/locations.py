"""Reading an uploaded document (YAML or JSON) into plain JSON data plus a map from JSON pointer
to the line it starts on, so every later error can cite a line of the uploaded file.

YAML is read with YAML 1.2 core-schema scalars (as the AsyncAPI tooling's js-yaml does): ``on``,
``off``, ``yes`` and ``no`` stay strings (the 2.6 streetlights example has ``enum: [on, off]``),
``017`` is decimal, and dates stay strings, so the data is exactly what a JSON document would give.
JSON is read with :mod:`json` plus a small scanner for lines, because PyYAML refuses the tab
indentation that real JSON files use (YAML forbids tabs there; JSON allows them).
"""

from __future__ import annotations

import bisect
import json
import math
import re
from dataclasses import dataclass, field
from json.decoder import scanstring  # type: ignore[attr-defined]
from typing import Any

import yaml

from portal.asyncapi.errors import AsyncAPIError, DocumentTooLargeError

# The one size limit of an uploaded document, in bytes of the file (UTF-8 for pasted text). Every
# entry point (REST, HTML form, service) uses it; the largest real document we know is ~500 KB.
MAX_DOCUMENT_BYTES = 5 * 1024 * 1024
# YAML aliases can expand a small file into a huge tree ("billion laughs"); cap the values read
# and their size as JSON (aliased long strings cost bytes, not values).
MAX_VALUES = 1_000_000
MAX_DATA_BYTES = 2 * MAX_DOCUMENT_BYTES

_TAG = "tag:yaml.org,2002:"


def pointer_escape(token: str | int) -> str:
    """One JSON pointer token per RFC 6901 §3 (``~`` → ``~0``, ``/`` → ``~1``)."""
    return str(token).replace("~", "~0").replace("/", "~1")


def pointer_join(pointer: str, token: str | int) -> str:
    return f"{pointer}/{pointer_escape(token)}"


@dataclass
class LoadedDocument:
    """A document read into JSON-compatible data; ``lines`` maps JSON pointers to 1-based lines.

    A mapping entry's pointer maps to the line of its key, a list item's to the line it starts on.
    """

    data: Any
    text: str
    lines: dict[str, int] = field(default_factory=dict)

    def line_of(self, pointer: str) -> int | None:
        """The line of ``pointer``, or of its nearest ancestor that has one; None if none does."""
        return line_for(self.lines, pointer)


def line_for(lines: dict[str, int], pointer: str) -> int | None:
    """The line of ``pointer`` in ``lines``, or of its nearest ancestor; None if none has one."""
    while True:
        if pointer in lines:
            return lines[pointer]
        if not pointer:
            return None
        pointer = pointer.rsplit("/", 1)[0]


def decode_source(content: bytes | str) -> str:
    """The upload as text: UTF-8 (a BOM is dropped) or UTF-16/32 with a BOM, per RFC 8259 §8.1.

    Raises ``DocumentTooLargeError`` past ``MAX_DOCUMENT_BYTES`` (bytes of the file, or of the
    text as UTF-8) and ``AsyncAPIError`` for empty or undecodable uploads.
    """
    if isinstance(content, str):
        # A character is at least one UTF-8 byte, so a long text is refused before encoding it.
        check_document_size(len(content))
        check_document_size(len(content.encode("utf-8", "surrogatepass")))
        text = content
    else:
        check_document_size(len(content))
        text = _decode_bytes(content)
    text = text.removeprefix("\ufeff")
    if not text.strip():
        raise AsyncAPIError("the file is empty")
    return text


def check_document_size(size: int) -> None:
    """Raise ``DocumentTooLargeError`` if a document of ``size`` bytes is over ``MAX_DOCUMENT_BYTES``."""
    if size > MAX_DOCUMENT_BYTES:
        raise DocumentTooLargeError(
            f"the document is {size:,} bytes, larger than the {MAX_DOCUMENT_BYTES // (1024 * 1024)} MB "
            "Eventgate accepts for an AsyncAPI document"
        )


def _decode_bytes(content: bytes) -> str:
    if content.startswith((b"\xff\xfe\x00\x00", b"\x00\x00\xfe\xff")):
        encoding = "utf-32"
    elif content.startswith((b"\xff\xfe", b"\xfe\xff")):
        encoding = "utf-16"
    else:
        encoding = "utf-8-sig"
    try:
        return content.decode(encoding)
    except UnicodeDecodeError as exc:
        line = content[: exc.start].count(b"\n") + 1
        raise AsyncAPIError(
            f"the file is not valid {encoding.upper().removesuffix('-SIG')} text (byte {exc.start})",
            line=line,
        ) from None


def load_text(text: str) -> LoadedDocument:
    """Parse ``text`` as JSON (when it starts with ``{`` or ``[``) or else as YAML.

    Raises ``AsyncAPIError`` with the line of the syntax error, and with pointer and line for
    values no database can store: duplicate keys, U+0000, lone surrogates and numbers beyond
    JSON's range (``1e999``, ``.inf``, ``.nan``). Text that looks like JSON but is not valid JSON
    is tried as YAML (flow style); if that fails too, the JSON error is reported.
    """
    if text.lstrip()[:1] in ("{", "["):
        try:
            return _load_json(text)
        except _JSONSyntaxError as json_error:
            try:
                return _load_yaml(text)
            except AsyncAPIError:
                raise json_error from None
    return _load_yaml(text)


_SURROGATE = re.compile("[\ud800-\udfff]")


def _unstorable_text(value: str) -> str | None:
    """Why ``value`` cannot be stored, or None: PostgreSQL's jsonb refuses U+0000, and UTF-8 has
    no lone surrogates (JSON's unpaired ``\\ud800`` escapes produce them)."""
    if "\x00" in value:
        return "the character U+0000, which cannot be stored"
    if _SURROGATE.search(value):
        return "a lone UTF-16 surrogate (an unpaired \\ud800–\\udfff escape), which is not text"
    return None


def _check_finite(number: float, written: str, *, pointer: str, line: int) -> None:
    """Refuse a number that overflowed to infinity (``1e999``): JSON (RFC 8259 §6), PostgreSQL's
    jsonb and SQLite's JSON have no infinities."""
    if not math.isfinite(number):
        raise AsyncAPIError(
            f"the number {written[:40]} is beyond the range of JSON numbers (about ±1.8e308)",
            pointer=pointer,
            line=line,
        )


# --- JSON -------------------------------------------------------------------------------------

_JSON_SCALAR = re.compile(r"-?(?:0|[1-9]\d*)(?:\.\d+)?(?:[eE][-+]?\d+)?|true|false|null")
_JSON_SPACE = re.compile(r"[ \t\n\r]*")


class _JSONSyntaxError(AsyncAPIError):
    """Text that is not JSON at all (as opposed to JSON holding values Eventgate refuses)."""


def _load_json(text: str) -> LoadedDocument:
    try:
        data = json.loads(text, parse_constant=_reject_constant)
    except json.JSONDecodeError as exc:
        raise _JSONSyntaxError(f"not valid JSON: {exc.msg} (column {exc.colno})", line=exc.lineno) from None
    except ValueError as exc:
        raise _JSONSyntaxError(f"not valid JSON: {exc}") from None
    scanner = _JSONLineScanner(text)
    scanner.value(0, "")
    return LoadedDocument(data=data, text=text, lines=scanner.lines)


def _reject_constant(name: str) -> Any:
    # Python's json accepts NaN and Infinity; JSON (RFC 8259 §6) and PostgreSQL's jsonb do not.
    raise ValueError(f"{name} is not a JSON number")


class _JSONLineScanner:
    """Walks text that :func:`json.loads` accepted, records the line of every value and refuses
    what :mod:`json` lets through but Eventgate cannot store: duplicate keys (the last would
    silently win), U+0000, lone surrogates and numbers that overflow to infinity (``1e999``)."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.newlines = [match.start() for match in re.finditer("\n", text)]
        self.lines: dict[str, int] = {}

    def line(self, pos: int) -> int:
        return bisect.bisect_left(self.newlines, pos) + 1

    def skip(self, pos: int) -> int:
        return _JSON_SPACE.match(self.text, pos).end()  # type: ignore[union-attr]

    def value(self, pos: int, pointer: str) -> int:
        """Record lines for the value at ``pos`` (and its children); return the position after it."""
        pos = self.skip(pos)
        self.lines.setdefault(pointer, self.line(pos))
        char = self.text[pos]
        if char == "{":
            return self.members(pos + 1, pointer)
        if char == "[":
            return self.items(pos + 1, pointer)
        if char == '"':
            string, end = scanstring(self.text, pos + 1)
            self.check_text(string, pos, pointer)
            return int(end)
        end = _JSON_SCALAR.match(self.text, pos).end()  # type: ignore[union-attr]
        number = self.text[pos:end]
        if char in "-0123456789" and any(mark in number for mark in ".eE"):
            _check_finite(float(number), number, pointer=pointer, line=self.line(pos))
        return end

    def members(self, pos: int, pointer: str) -> int:
        pos = self.skip(pos)
        if self.text[pos] == "}":
            return pos + 1
        seen: set[str] = set()
        while True:
            pos = self.skip(pos)
            key, end = scanstring(self.text, pos + 1)
            child = pointer_join(pointer, key)
            self.check_text(key, pos, child)
            if key in seen:
                # As YAML documents are treated (and as RFC 8259 §4 says names SHOULD be unique).
                raise AsyncAPIError(f'duplicate key "{key}"', pointer=child, line=self.line(pos))
            seen.add(key)
            self.lines[child] = self.line(pos)
            pos = self.value(self.skip(end) + 1, child)  # + 1 steps over the ':'
            pos = self.skip(pos)
            if self.text[pos] == "}":
                return pos + 1
            pos += 1  # the ','

    def items(self, pos: int, pointer: str) -> int:
        pos = self.skip(pos)
        if self.text[pos] == "]":
            return pos + 1
        index = 0
        while True:
            pos = self.skip(self.value(pos, pointer_join(pointer, index)))
            if self.text[pos] == "]":
                return pos + 1
            pos += 1
            index += 1

    def check_text(self, value: str, pos: int, pointer: str) -> None:
        problem = _unstorable_text(value)
        if problem is not None:
            raise AsyncAPIError(f"the document contains {problem}", pointer=pointer, line=self.line(pos))


# --- YAML -------------------------------------------------------------------------------------

_BaseLoader: type = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _Yaml12Loader(_BaseLoader):  # type: ignore[misc,valid-type]
    """SafeLoader whose implicit scalar types follow the YAML 1.2 core schema (§10.3.2)."""


_Yaml12Loader.yaml_implicit_resolvers = {
    first: [
        (tag, regexp)
        for tag, regexp in resolvers
        if tag not in {_TAG + "bool", _TAG + "int", _TAG + "float", _TAG + "timestamp"}
    ]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Yaml12Loader.add_implicit_resolver(
    _TAG + "bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)
_Yaml12Loader.add_implicit_resolver(
    _TAG + "int", re.compile(r"^(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)$"), list("-+0123456789")
)
_Yaml12Loader.add_implicit_resolver(
    _TAG + "float",
    re.compile(
        r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"
    ),
    list("-+.0123456789"),
)


def _load_yaml(text: str) -> LoadedDocument:
    loader = _Yaml12Loader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            raise AsyncAPIError("the file holds no YAML document", line=1)
        walker = _YamlWalker(loader)
        data = walker.value(node, "")
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        problem = exc.problem or exc.context or "syntax error"
        # At the end of input the mark sits one line past the last one; cite the last line.
        line = min(mark.line + 1, text.count("\n") + 1) if mark is not None else None
        raise AsyncAPIError(f"not valid YAML: {problem}", line=line) from None
    except yaml.YAMLError as exc:
        raise AsyncAPIError(f"not valid YAML: {exc}") from None
    finally:
        loader.dispose()
    return LoadedDocument(data=data, text=text, lines=walker.lines)


class _YamlWalker:
    """Turns composed YAML nodes into JSON data, recording each value's line by JSON pointer.

    Aliases are expanded, so the walker counts values and their size as JSON and refuses
    documents past ``MAX_VALUES`` or ``MAX_DATA_BYTES``.
    """

    def __init__(self, loader: Any) -> None:
        self.loader = loader
        self.lines: dict[str, int] = {}
        self.count = 0
        self.size = 0
        self.path: set[int] = set()

    def value(self, node: yaml.Node, pointer: str) -> Any:
        self.count += 1
        if self.count > MAX_VALUES:
            raise DocumentTooLargeError(
                f"the document expands to more than {MAX_VALUES:,} values (YAML aliases?)",
                pointer=pointer,
                line=node.start_mark.line + 1,
            )
        self.lines.setdefault(pointer, node.start_mark.line + 1)
        if isinstance(node, yaml.ScalarNode):
            return self.scalar(node, pointer)
        if id(node) in self.path:
            raise AsyncAPIError(
                "a YAML alias refers to its own ancestor (recursive data)",
                pointer=pointer,
                line=node.start_mark.line + 1,
            )
        self.path.add(id(node))
        try:
            if isinstance(node, yaml.SequenceNode):
                return [
                    self.value(item, pointer_join(pointer, index)) for index, item in enumerate(node.value)
                ]
            return self.mapping(node, pointer)
        finally:
            self.path.discard(id(node))

    def mapping(self, node: yaml.MappingNode, pointer: str) -> dict[str, Any]:
        self.loader.flatten_mapping(node)  # applies YAML merge keys (<<)
        result: dict[str, Any] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                raise AsyncAPIError(
                    "mapping keys must be plain strings", pointer=pointer, line=key_node.start_mark.line + 1
                )
            key = str(key_node.value)
            child = pointer_join(pointer, key)
            line = key_node.start_mark.line + 1
            self.check_text(key, child, line)
            if key in result:
                raise AsyncAPIError(f'duplicate key "{key}"', pointer=child, line=line)
            self.lines[child] = line
            result[key] = self.value(value_node, child)
        return result

    def scalar(self, node: yaml.ScalarNode, pointer: str) -> Any:
        tag, value = node.tag, node.value
        line = node.start_mark.line + 1
        self.check_text(value, pointer, line)
        if tag == _TAG + "str":
            return value
        if tag == _TAG + "null":
            return None
        if tag == _TAG + "bool":
            return value.lower() == "true"
        try:
            if tag == _TAG + "int":
                return _yaml12_int(value)
            if tag == _TAG + "float":
                number = float(value)
        except ValueError:
            raise AsyncAPIError(
                f"{value!r} is not a number JSON can hold", pointer=pointer, line=line
            ) from None
        if tag == _TAG + "float":
            _check_finite(number, value, pointer=pointer, line=line)
            return number
        raise AsyncAPIError(
            f"the YAML tag {tag} is not supported (AsyncAPI documents hold JSON data)",
            pointer=pointer,
            line=line,
        )

    def check_text(self, value: str, pointer: str, line: int) -> None:
        # Keys and scalars as JSON text: quotes, a separator; aliased strings count each time.
        self.size += len(value) + 3
        if self.size > MAX_DATA_BYTES:
            raise DocumentTooLargeError(
                f"the document expands to more than {MAX_DATA_BYTES // (1024 * 1024)} MB of data "
                "(YAML aliases?)",
                pointer=pointer,
                line=line,
            )
        problem = _unstorable_text(value)
        if problem is not None:
            raise AsyncAPIError(f"the document contains {problem}", pointer=pointer, line=line)


def _yaml12_int(value: str) -> int:
    if value.startswith("0o"):
        return int(value[2:], 8)
    if value.startswith("0x"):
        return int(value[2:], 16)
    return int(value, 10)
