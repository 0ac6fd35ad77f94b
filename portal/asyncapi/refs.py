"""Internal ``$ref`` resolution inside one AsyncAPI document.

A Reference Object is ``{"$ref": "#/components/schemas/x"}`` (AsyncAPI 2.x and 3.x §Reference
Object; the fragment is a JSON pointer, RFC 6901, in a URI fragment, so it is percent-decoded).
Only references within the document (``#/...``) are followed; references to other files or URLs
are left as written (multi-file uploads and remote refs are issue 3). Recursive schemas are cut at
the first repeat: the inner occurrence becomes ``{"$ref": ..., "x-recursive": true}``.

Everything resolved for one document (payloads, parameters, bindings, and the message texts the
parser charges) shares one budget, measured as bytes of compact JSON, because a few shared
schemas referenced from many channels multiply: 20 channels × 8 nested schemas of 10 properties
once stored 22 MB from a 6 KB file. Past ``EXPANSION_BUDGET_BYTES``, anything already expanded
once is kept as a reference, ``{"$ref": ..., "x-truncated": true}``, so every schema still appears
expanded at least once. Past ``MAX_EXPANDED_BYTES`` the document is refused.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote

from portal.asyncapi.errors import AsyncAPIError, DocumentTooLargeError
from portal.asyncapi.locations import pointer_join

# After this much resolved output per document, repeats stay references ("x-truncated").
EXPANSION_BUDGET_BYTES = 1024 * 1024
# What one document may store in its channels and operations at most; beyond it, refused.
MAX_EXPANDED_BYTES = 10 * 1024 * 1024
_MAX_REF_CHAIN = 50
# Nesting of one resolved value (objects and lists); real schemas stay far below, and pages
# and JSON encoders recurse once per level. A reference met deeper is kept ("x-truncated").
MAX_DEPTH = 200
_SCALAR_BYTES = 6  # a number, true, false or null with its separator, roughly
# Past the budget, repeats smaller than this (and holding no reference) are still copied: a
# reference would be longer than ``{"type": "string"}`` and say less.
_SMALL_BYTES = 256


def is_ref(node: Any) -> bool:
    return isinstance(node, dict) and isinstance(node.get("$ref"), str)


def is_internal(ref: str) -> bool:
    return ref.startswith("#")


def ref_tokens(ref: str) -> list[str]:
    """The JSON pointer tokens of an internal ref: ``#/channels/a~1b`` → ``["channels", "a/b"]``."""
    fragment = unquote(ref[1:])
    if not fragment:
        return []
    if not fragment.startswith("/"):
        raise ValueError(ref)
    return [token.replace("~1", "/").replace("~0", "~") for token in fragment[1:].split("/")]


def ref_pointer(ref: str) -> str:
    """The JSON pointer of an internal ref in the pointer form errors use (``/components/...``)."""
    pointer = ""
    for token in ref_tokens(ref):
        pointer = pointer_join(pointer, token)
    return pointer


class Resolver:
    """Looks up internal references in ``document`` (the whole parsed AsyncAPI document) and
    keeps the document's expansion budget (see the module docstring)."""

    def __init__(
        self,
        document: dict[str, Any],
        *,
        budget: int = EXPANSION_BUDGET_BYTES,
        limit: int = MAX_EXPANDED_BYTES,
    ) -> None:
        self.document = document
        self.budget = budget
        self.limit = limit
        self.spent = 0  # bytes of compact JSON resolved or charged so far, roughly
        # id → node of every object and list expanded so far; the node is kept so its id stays
        # unique while the resolver lives.
        self.expanded: dict[int, Any] = {}
        self._locations: dict[int, str] | None = None

    def lookup(self, ref: str, *, at: str) -> Any:
        """The value ``ref`` points to; ``at`` is the pointer of the Reference Object (for errors).

        Walking the pointer follows references on the way, so ``#/channels/a/messages/m`` works
        when channel ``a`` is itself a ``$ref``. Raises ``AsyncAPIError`` when nothing is there.
        """
        try:
            tokens = ref_tokens(ref)
        except ValueError:
            raise AsyncAPIError(
                f'"{ref}" is not a JSON pointer reference', pointer=pointer_join(at, "$ref")
            ) from None
        node: Any = self.document
        for token in tokens:
            node = self._follow(node, at)
            if isinstance(node, dict) and token in node:
                node = node[token]
            elif isinstance(node, list) and token.isdigit() and int(token) < len(node):
                node = node[int(token)]
            else:
                raise AsyncAPIError(
                    f'the reference "{ref}" points to nothing', pointer=pointer_join(at, "$ref")
                )
        return node

    def _follow(self, node: Any, at: str) -> Any:
        chain = 0
        while is_ref(node) and is_internal(node["$ref"]):
            chain += 1
            if chain > _MAX_REF_CHAIN:
                raise AsyncAPIError(
                    f"references lead to further references more than {_MAX_REF_CHAIN} times in a row "
                    "(do they refer to each other in a loop?)",
                    pointer=pointer_join(at, "$ref"),
                )
            node = self.lookup(node["$ref"], at=at)
        return node

    def deref(self, node: Any, *, at: str) -> Any:
        """``node`` itself, or what its (chain of) internal references points to.

        Keys written beside ``$ref`` override the target's (supermq's ``messageId`` next to a
        message ``$ref``). Raises ``AsyncAPIError`` for external references, which structural
        objects (channels, operations, messages) cannot use yet. The target may be any JSON
        value; callers check that it is what they need.
        """
        if not is_ref(node):
            return node
        ref = node["$ref"]
        if not is_internal(ref):
            raise AsyncAPIError(
                f'the reference "{ref}" points outside this document; only "#/..." references are supported',
                pointer=pointer_join(at, "$ref"),
            )
        target = self._follow(self.lookup(ref, at=at), at)
        siblings = {key: value for key, value in node.items() if key != "$ref"}
        if siblings and isinstance(target, dict):
            return {**target, **siblings}
        return target

    def resolve(self, node: Any, *, at: str, schema: bool = False) -> Any:
        """A copy of ``node`` with every internal reference replaced by its target, recursively.

        Cycles are cut: a reference met again inside its own expansion is kept as
        ``{"$ref": ref, "x-recursive": true}``. External references are kept as written. Past the
        document's budget, objects already expanded once are kept as ``{"$ref": ...,
        "x-truncated": true}``. With ``schema`` (a JSON Schema), every reference must point to a
        schema: a mapping or a boolean.

        Raises ``AsyncAPIError`` at the reference's pointer for a dangling or (with ``schema``)
        non-schema target, and ``DocumentTooLargeError`` past ``MAX_EXPANDED_BYTES``.
        """
        return _Expansion(self, root=at, schema=schema).value(node, at, (), 0)

    def charge(self, size: int, *, at: str) -> None:
        """Count ``size`` bytes of output towards the document's limit (texts the parser stores
        besides resolved values); raises ``DocumentTooLargeError`` past ``MAX_EXPANDED_BYTES``."""
        self.spent += size
        if self.spent > self.limit:
            raise DocumentTooLargeError(
                f"the channels, operations and messages of this document take more than "
                f"{self.limit // (1024 * 1024)} MB once references are expanded (it ran out here); "
                "Eventgate stores at most that much per document: reuse fewer large messages or schemas",
                pointer=at,
            )

    @property
    def over_budget(self) -> bool:
        return self.spent > self.budget

    def location(self, node: Any) -> str | None:
        """The JSON pointer of the object or list ``node`` inside the document, or None if it is
        not part of it (e.g. a message merged with its traits). Built on first use, which only
        happens once the budget is spent."""
        if self._locations is None:
            self._locations = {}
            stack: list[tuple[Any, str]] = [(self.document, "")]
            while stack:
                value, pointer = stack.pop()
                self._locations[id(value)] = pointer
                items = value.items() if isinstance(value, dict) else enumerate(value)
                for key, child in items:
                    if isinstance(child, dict | list):
                        stack.append((child, pointer_join(pointer, key)))
        return self._locations.get(id(node))


class _Expansion:
    """One ``Resolver.resolve`` call: ``root`` is the pointer it started at (named in errors)."""

    def __init__(self, resolver: Resolver, *, root: str, schema: bool) -> None:
        self.resolver = resolver
        self.root = root
        self.schema = schema

    def value(self, node: Any, at: str, active: tuple[str, ...], depth: int) -> Any:
        resolver = self.resolver
        if not isinstance(node, dict | list):
            resolver.charge(len(node) + 3 if isinstance(node, str) else _SCALAR_BYTES, at=self.root)
            return node
        if is_ref(node) and is_internal(node["$ref"]):
            return self.reference(node, at, active, depth)
        if depth > MAX_DEPTH:
            raise AsyncAPIError(
                f"with its references expanded, this value nests more than {MAX_DEPTH} levels deep "
                f"(it got that deep at {at})",
                pointer=self.root,
            )
        if resolver.over_budget and id(node) in resolver.expanded and _worth_a_reference(node):
            location = resolver.location(node)
            if location is not None:
                return self.truncated(f"#{location}")
        resolver.expanded[id(node)] = node
        resolver.charge(2, at=self.root)
        if isinstance(node, list):
            return [
                self.value(item, pointer_join(at, index), active, depth + 1)
                for index, item in enumerate(node)
            ]
        result = {}
        for key, value in node.items():
            resolver.charge(len(key) + 4, at=self.root)
            result[key] = self.value(value, pointer_join(at, key), active, depth + 1)
        return result

    def reference(self, node: dict[str, Any], at: str, active: tuple[str, ...], depth: int) -> Any:
        ref = node["$ref"]
        if ref in active:
            self.resolver.charge(len(ref) + 32, at=self.root)
            return {"$ref": ref, "x-recursive": True}
        target = self.resolver.lookup(ref, at=at)
        if self.schema and not isinstance(target, dict | bool):
            raise AsyncAPIError(
                f'the reference "{ref}" points to {describe(target)}, not to a schema (a mapping)',
                pointer=pointer_join(at, "$ref"),
            )
        if depth >= MAX_DEPTH or (
            self.resolver.over_budget and id(target) in self.resolver.expanded and _worth_a_reference(target)
        ):
            return self.truncated(ref)
        # A hop counts as a level too, so a long chain of references cannot exhaust the stack.
        resolved = self.value(target, ref_pointer(ref), (*active, ref), depth + 1)
        siblings = {key: value for key, value in node.items() if key != "$ref"}
        if siblings and isinstance(resolved, dict):
            resolved = {**resolved, **self.value(siblings, at, active, depth)}
        return resolved

    def truncated(self, ref: str) -> dict[str, Any]:
        self.resolver.charge(len(ref) + 32, at=self.root)
        return {"$ref": ref, "x-truncated": True}


def describe(value: Any) -> str:
    """``value``'s JSON type with a glimpse of it, for errors: ``a string ("Title")``."""
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, str):
        glimpse = value if len(value) <= 30 else value[:29] + "…"
        return f'a string ("{glimpse}")'
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"a boolean ({str(value).lower()})"
    return f"a number ({value})"


def _worth_a_reference(node: Any) -> bool:
    """Whether a repeat of ``node`` should become a reference once the budget is spent: it holds
    a reference (its expansion may be any size) or is over ``_SMALL_BYTES`` as written."""
    size = 0
    stack = [node]
    while stack:
        value = stack.pop()
        if isinstance(value, dict):
            if is_ref(value):
                return True
            size += 2 + sum(len(key) + 4 for key in value)
            stack.extend(value.values())
        elif isinstance(value, list):
            size += 2
            stack.extend(value)
        else:
            size += len(value) + 3 if isinstance(value, str) else _SCALAR_BYTES
        if size > _SMALL_BYTES:
            return True
    return False
