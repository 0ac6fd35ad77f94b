"""Making an uploaded document self-contained: references to other files of a .zip (and, when
enabled, remote URLs) are bundled into it, so the stored document needs no other file.

A Reference Object's ``$ref`` is a URI reference (AsyncAPI 2.x/3.x §Reference Object, RFC 3986):
a path is resolved against the file that holds the reference (``./schemas/price.yaml#/Price``
written in ``api/asyncapi.yaml`` is ``api/schemas/price.yaml``, pointer ``/Price``), a ``#``
fragment alone points into that same file. Bundling works like ``json-schema-ref-parser``'s
``bundle()``, which the AsyncAPI tools use: the first reference met to a value of another file
is replaced by the value itself; every later reference to it (or into it) becomes an internal
reference to where it was put. Recursive structures therefore stay recursive, as ``$ref``s.
``components`` are visited first, then ``channels``, so shared values land there when they can.
References within the root document stay exactly as written.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urljoin, urlsplit

from portal.asyncapi.archive import choose_root, is_zip, member_name, read_archive
from portal.asyncapi.errors import AsyncAPIError
from portal.asyncapi.locations import LoadedDocument, decode_source, load_text, pointer_join
from portal.asyncapi.refs import is_ref, ref_tokens
from portal.asyncapi.remote import fetch_remote

# Remote documents one import may fetch (each one a network round trip).
MAX_REMOTE_FETCHES = 50
_FIRST = ("components", "channels")


@dataclass
class Bundle:
    """A root document with its external references bundled in.

    ``data`` is the self-contained document; ``source`` the root file's text, ``filename`` the
    root's name in errors (``api.zip:asyncapi.yaml``), ``source_files`` the text of every other
    file of the upload and every fetched URL (``{path or URL: text}``). ``origins`` lists where
    bundled values came from: ``(pointer in data, location, pointer in that file)``.
    """

    data: Any
    source: str
    filename: str
    root: LoadedDocument
    source_files: dict[str, str] = field(default_factory=dict)
    origins: list[tuple[str, str, str]] = field(default_factory=list)
    loaded: dict[str, LoadedDocument] = field(default_factory=dict, repr=False)
    names: dict[str, str] = field(default_factory=dict, repr=False)

    def place(self, error: AsyncAPIError, *, line_pointer: str | None = None) -> AsyncAPIError:
        """Point ``error`` (raised at a pointer of ``data``) at the file the value came from:
        sets its filename, its pointer inside that file and the line of ``line_pointer`` (by
        default the error's own pointer). Returns ``error``."""
        pointer = error.pointer
        line_pointer = pointer if line_pointer is None else line_pointer
        best: tuple[str, str, str] | None = None
        for origin in self.origins:
            home = origin[0]
            if (pointer == home or pointer.startswith(home + "/")) and (
                best is None or len(home) > len(best[0])
            ):
                best = origin
        if best is None:
            error.filename = self.filename
            if error.line is None:
                error.line = self.root.line_of(line_pointer)
            return error
        home, location, inner = best
        error.filename = self.names.get(location, location)
        error.pointer = inner + pointer[len(home) :]
        if error.line is None and location in self.loaded:
            suffix = line_pointer[len(home) :] if line_pointer.startswith(home) else pointer[len(home) :]
            error.line = self.loaded[location].line_of(inner + suffix)
        return error


def load_upload(*, content: bytes | str, filename: str) -> tuple[_Sources, str]:
    """The upload's files and the location of its root document (a zip member path, or
    ``filename`` for a single document). Raises ``AsyncAPIError`` for unreadable input."""
    if is_zip(content):
        assert isinstance(content, bytes)
        files = read_archive(content, filename=filename)
        sources = _Sources(files=files, archive=filename)
        root = choose_root(files, filename=filename, loaded=sources.loaded)
        sources.names.update((path, sources.name(path)) for path in sources.loaded)
        return sources, root
    return _Sources(files={filename: content}, archive=None), filename


def bundle_document(sources: _Sources, root: str, data: Any) -> Bundle:
    """``data`` (the root document, already loaded) with every external reference bundled in.

    Raises ``AsyncAPIError`` with the referring file, pointer and line for a reference that
    leaves the archive, names a missing file or nothing inside it, or a remote URL that is off
    or refused (see ``portal.asyncapi.remote``).
    """
    loaded_root = sources.load(root)
    result = Bundle(
        data=data,
        source=loaded_root.text,
        filename=sources.name(root),
        root=loaded_root,
        loaded=sources.loaded,
        names=sources.names,
    )
    if isinstance(data, dict) and _has_external_refs(data):
        result.data = _Bundler(sources, root, result.origins).document(data)
    result.source_files = sources.other_texts(root)
    return result


class _Sources:
    """The files of one upload by location (archive path or URL), loaded on first use."""

    def __init__(self, *, files: dict[str, bytes | str], archive: str | None) -> None:
        self.files = files
        self.archive = archive
        self.loaded: dict[str, LoadedDocument] = {}
        self.names: dict[str, str] = {}
        self.fetched = 0

    def name(self, location: str) -> str:
        """The location as errors name it: ``api.zip:schemas/x.yaml``, a URL, or the file name."""
        if self.archive is not None and location in self.files:
            return member_name(self.archive, location)
        return location

    def load(self, location: str) -> LoadedDocument:
        """The loaded file at ``location``; a URL is fetched (see ``portal.asyncapi.remote``)."""
        if location not in self.loaded:
            self.names[location] = self.name(location)
            try:
                self.loaded[location] = load_text(decode_source(self.files[location]))
            except AsyncAPIError as error:
                error.filename = self.names[location]
                raise
        return self.loaded[location]

    def fetch(self, url: str, *, base: str, at: str) -> None:
        """Fetch ``url`` into the upload's files, once; a refusal cites the reference (in the
        file at ``base``, pointer ``at``) that led to it."""
        if url in self.files:
            return
        self.fetched += 1
        try:
            if self.fetched > MAX_REMOTE_FETCHES:
                raise AsyncAPIError(f"the document refers to more than {MAX_REMOTE_FETCHES} remote files")
            self.files[url] = fetch_remote(url)
        except AsyncAPIError as error:
            raise self._error(error.message, base, at) from None

    def other_texts(self, root: str) -> dict[str, str]:
        """Text of every file but the root that is UTF-8 text PostgreSQL can store."""
        texts = {}
        for location, content in self.files.items():
            if location == root:
                continue
            if location in self.loaded:
                texts[location] = self.loaded[location].text
                continue
            try:
                text = content if isinstance(content, str) else content.decode("utf-8-sig")
            except UnicodeDecodeError:
                continue  # not text (an image in the archive); nothing refers to it
            if "\x00" not in text:
                texts[location] = text
        return texts

    def target(self, ref: str, base: str, *, at: str) -> tuple[str, str]:
        """``(location, JSON pointer)`` of ``ref`` written in the file at ``base``, pointer ``at``."""
        uri, _, fragment = ref.partition("#")
        pointer = self._pointer(ref, fragment, base, at)
        if not uri:
            return base, pointer
        base_is_url = urlsplit(base).scheme in ("http", "https")
        scheme = urlsplit(uri).scheme.lower()
        if base_is_url or scheme in ("http", "https"):
            return urljoin(base, uri) if base_is_url else uri, pointer
        if scheme:
            raise self._error(
                f'the reference "{ref}" uses the "{scheme}:" scheme; only relative paths within '
                "the upload and http(s) URLs can be followed",
                base,
                at,
            )
        if self.archive is None:
            raise self._error(
                f'the reference "{ref}" points to another file; upload a .zip holding this document and the '
                "files it refers to",
                base,
                at,
            )
        path = unquote(uri)
        joined = posixpath.normpath(posixpath.join(posixpath.dirname(base), path))
        if path.startswith("/") or joined == ".." or joined.startswith("../"):
            raise self._error(
                f'the reference "{ref}" points outside the archive; references may only reach '
                "files inside it",
                base,
                at,
            )
        if joined not in self.files:
            raise self._error(
                f'the reference "{ref}" points to "{joined}", which is not in the archive', base, at
            )
        return joined, pointer

    def _pointer(self, ref: str, fragment: str, base: str, at: str) -> str:
        try:
            tokens = ref_tokens("#" + fragment)
        except ValueError:
            raise self._error(f'the fragment of "{ref}" is not a JSON pointer (#/...)', base, at) from None
        pointer = ""
        for token in tokens:
            pointer = pointer_join(pointer, token)
        return pointer

    def _error(self, message: str, base: str, at: str) -> AsyncAPIError:
        pointer = pointer_join(at, "$ref")
        loaded = self.loaded.get(base)
        return AsyncAPIError(
            message,
            pointer=pointer,
            line=loaded.line_of(pointer) if loaded else None,
            filename=self.name(base),
        )


class _Bundler:
    def __init__(self, sources: _Sources, root: str, origins: list[tuple[str, str, str]]) -> None:
        self.sources = sources
        self.root = root
        self.origins = origins
        # (location, pointer) → pointer in the bundled document where that value now lives.
        self.homes: dict[tuple[str, str], str] = {}

    def document(self, data: dict[str, Any]) -> dict[str, Any]:
        done = {key: self.walk(data[key], self.root, f"/{key}", f"/{key}") for key in _FIRST if key in data}
        return {
            key: done[key]
            if key in done
            else self.walk(value, self.root, pointer_join("", key), pointer_join("", key))
            for key, value in data.items()
        }

    def walk(self, node: Any, location: str, at: str, out: str) -> Any:
        """A copy of ``node`` (at pointer ``at`` of ``location``) as it goes to pointer ``out``."""
        if isinstance(node, list):
            return [
                self.walk(item, location, pointer_join(at, i), pointer_join(out, i))
                for i, item in enumerate(node)
            ]
        if not isinstance(node, dict):
            return node
        if is_ref(node) and not (location == self.root and node["$ref"].startswith("#")):
            return self.reference(node, location, at, out)
        return {
            key: self.walk(value, location, pointer_join(at, key), pointer_join(out, key))
            for key, value in node.items()
        }

    def reference(self, node: dict[str, Any], location: str, at: str, out: str) -> Any:
        target, pointer = self.sources.target(node["$ref"], location, at=at)
        siblings = {
            key: self.walk(value, location, pointer_join(at, key), pointer_join(out, key))
            for key, value in node.items()
            if key != "$ref"
        }
        home = self.home(target, pointer)
        if home is not None:
            return {"$ref": "#" + home.replace("%", "%25"), **siblings}
        self.homes[(target, pointer)] = out
        self.origins.append((out, target, pointer))
        value = self.lookup(target, pointer, node["$ref"], location, at)
        inlined = self.walk(value, target, pointer, out)
        if siblings and isinstance(inlined, dict):
            return {**inlined, **siblings}
        return inlined

    def home(self, location: str, pointer: str) -> str | None:
        """Where the value at ``pointer`` of ``location`` already is in the bundled document:
        the root's own pointer, or inside a value bundled before."""
        if location == self.root:
            return pointer
        suffix = ""
        while True:
            if (location, pointer) in self.homes:
                return self.homes[(location, pointer)] + suffix
            if not pointer:
                return None
            pointer, _, token = pointer.rpartition("/")
            suffix = f"/{token}{suffix}"

    def lookup(self, location: str, pointer: str, ref: str, base: str, at: str) -> Any:
        self.sources.fetch(location, base=base, at=at)
        node = self.sources.load(location).data
        for token in ref_tokens("#" + pointer.replace("%", "%25")) if pointer else []:
            if isinstance(node, dict) and token in node:
                node = node[token]
            elif isinstance(node, list) and token.isdigit() and int(token) < len(node):
                node = node[int(token)]
            else:
                raise self.sources._error(
                    f'the reference "{ref}" points to nothing: '
                    f"{self.sources.name(location)} has no {pointer}",
                    base,
                    at,
                )
        return node


def _has_external_refs(data: Any) -> bool:
    stack = [data]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            if is_ref(node) and not node["$ref"].startswith("#"):
                return True
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return False
