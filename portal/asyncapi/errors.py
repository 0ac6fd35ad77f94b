"""The one error type of AsyncAPI import: what is wrong, where (JSON pointer and line), in which file."""

from __future__ import annotations

from typing import Any


class AsyncAPIError(Exception):
    """A problem in an uploaded AsyncAPI document; nothing was stored.

    Attributes:
        message: what is wrong, in a sentence a provider can act on
            (``unknown key "dupa" (not allowed by the AsyncAPI 3.0.0 schema)``).
        pointer: JSON pointer (RFC 6901) of the offending value, e.g. ``/info``; ``""`` is the
            whole document.
        line: 1-based line in the uploaded file, or None when unknown (e.g. undecodable bytes).
        filename: the uploaded file's name as the user gave it.
        more: further problems found in the same pass (schema validation reports up to
            ``validation.MAX_PROBLEMS`` in all, one per location), each an ``AsyncAPIError``
            with its own message, pointer, line and filename; empty for every other error.
        more_omitted: how many further problems were found but left out of ``more`` (the cap).

    ``str(err)`` reads ``<filename>, line <n>, at <pointer>: <message>``, leaving out the parts
    that are unknown.
    """

    def __init__(
        self, message: str, *, pointer: str = "", line: int | None = None, filename: str = ""
    ) -> None:
        super().__init__(message)
        self.message = message
        self.pointer = pointer
        self.line = line
        self.filename = filename
        self.more: list[AsyncAPIError] = []
        self.more_omitted = 0

    @property
    def problems(self) -> list[AsyncAPIError]:
        """This error followed by ``more``: every problem reported, the main one first."""
        return [self, *self.more]

    def __str__(self) -> str:
        where = [self.filename or "document"]
        if self.line is not None:
            where.append(f"line {self.line}")
        if self.pointer:
            where.append(f"at {self.pointer}")
        return f"{', '.join(where)}: {self.message}"

    def __repr__(self) -> str:
        where = f"pointer={self.pointer!r}, line={self.line!r}, filename={self.filename!r}"
        return f"AsyncAPIError({self.message!r}, {where})"

    def as_dict(self) -> dict[str, Any]:
        """The error as JSON for the REST API: ``{"error", "pointer", "line", "file"}``."""
        return {"error": self.message, "pointer": self.pointer, "line": self.line, "file": self.filename}


class DocumentTooLargeError(AsyncAPIError):
    """The upload, or what it expands to, is larger than Eventgate accepts (the REST API answers 413)."""
