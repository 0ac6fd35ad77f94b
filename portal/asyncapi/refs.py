"""Internal ``$ref`` resolution inside one AsyncAPI document.

A Reference Object is ``{"$ref": "#/components/schemas/x"}`` (AsyncAPI 2.x and 3.x §Reference
Object; the fragment is a JSON pointer, RFC 6901, in a URI fragment, so it is percent-decoded).
Only references within the document (``#/...``) are followed; references to other files or URLs
are left as written (multi-file uploads and remote refs are issue 3). Recursive schemas are cut at
the first repeat: the inner occurrence becomes ``{"$ref": ..., "x-recursive": true}``.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote

from portal.asyncapi.errors import AsyncAPIError
from portal.asyncapi.locations import pointer_join

# A resolved tree bigger than this stops expanding references (left as written, marked
# "x-truncated"), so shared sub-schemas cannot blow one payload up exponentially.
MAX_RESOLVED_VALUES = 100_000
_MAX_REF_CHAIN = 50


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
    """Looks up internal references in ``document`` (the whole parsed AsyncAPI document)."""

    def __init__(self, document: dict[str, Any]) -> None:
        self.document = document

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
                    "references refer to each other in a loop", pointer=pointer_join(at, "$ref")
                )
            node = self.lookup(node["$ref"], at=at)
        return node

    def deref(self, node: Any, *, at: str) -> Any:
        """``node`` itself, or what its (chain of) internal references points to.

        Keys written beside ``$ref`` override the target's (supermq's ``messageId`` next to a
        message ``$ref``). Raises ``AsyncAPIError`` for external references, which structural
        objects (channels, operations, messages) cannot use yet.
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

    def resolve(self, node: Any, *, at: str) -> Any:
        """A copy of ``node`` with every internal reference replaced by its target, recursively.

        Cycles are cut: a reference met again inside its own expansion is kept as
        ``{"$ref": ref, "x-recursive": true}``. External references are kept as written.
        """
        return _Expansion(self).value(node, at, ())


class _Expansion:
    def __init__(self, resolver: Resolver) -> None:
        self.resolver = resolver
        self.count = 0

    def value(self, node: Any, at: str, active: tuple[str, ...]) -> Any:
        self.count += 1
        if isinstance(node, list):
            return [self.value(item, pointer_join(at, index), active) for index, item in enumerate(node)]
        if not isinstance(node, dict):
            return node
        if is_ref(node) and is_internal(node["$ref"]):
            return self.reference(node, at, active)
        return {key: self.value(value, pointer_join(at, key), active) for key, value in node.items()}

    def reference(self, node: dict[str, Any], at: str, active: tuple[str, ...]) -> Any:
        ref = node["$ref"]
        if ref in active:
            return {"$ref": ref, "x-recursive": True}
        if self.count > MAX_RESOLVED_VALUES:
            return {"$ref": ref, "x-truncated": True}
        target = self.resolver.lookup(ref, at=at)
        resolved = self.value(target, ref_pointer(ref), (*active, ref))
        siblings = {key: value for key, value in node.items() if key != "$ref"}
        if siblings and isinstance(resolved, dict):
            resolved = {**resolved, **self.value(siblings, at, active)}
        return resolved
