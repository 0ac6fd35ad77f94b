"""What an AsyncAPI document says besides channels: servers, security schemes, tags, protocols.

One shape for both families:

- servers: ``{name: {"host", "protocol", "protocol_version", "pathname", "description",
  "variables", "security", "bindings"}}``. 3.0 §Server Object has ``host`` and ``pathname``;
  2.x §Server Object has one ``url`` (possibly with ``{variables}`` and without a scheme), split
  here into host (``netloc``) and pathname. ``protocol`` is lower-cased.
- security (of a server): a list of Security Requirement Objects as in 2.x (``[{scheme name:
  [scopes]}]``, alternatives in the list, all of one object's schemes together). 3.0 lists
  Security Scheme Objects or references to them instead; a reference to
  ``#/components/securitySchemes/<name>`` becomes ``{<name>: scopes}`` (3.0 keeps scopes on the
  scheme), an inline scheme is named ``<server>-<index>`` and added to the security schemes.
- security schemes: ``components.securitySchemes`` with references resolved.
- tags: 3.0 ``info.tags``, 2.x root ``tags`` (§AsyncAPI Object), as ``[{"name", "description"}]``.
- protocols: the sorted distinct protocols of the servers.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from portal.asyncapi.errors import AsyncAPIError
from portal.asyncapi.locations import pointer_join
from portal.asyncapi.refs import Resolver, describe, is_ref, ref_tokens


def _mapping(resolver: Resolver, raw: Any, at: str, what: str) -> dict[str, Any]:
    node = resolver.deref(raw, at=at)
    if isinstance(node, dict):
        return node
    raise AsyncAPIError(f"expected {what} (a mapping) here, found {describe(node)}", pointer=at)


def _text(value: Any) -> str:
    return "" if value is None else str(value).strip()


def security_schemes(data: dict[str, Any], resolver: Resolver) -> dict[str, Any]:
    """``components.securitySchemes`` by name, each resolved (Reference Objects followed)."""
    components = data.get("components") or {}
    schemes = components.get("securitySchemes") if isinstance(components, dict) else None
    at = "/components/securitySchemes"
    return {
        name: resolver.resolve(
            _mapping(resolver, raw, pointer_join(at, name), "a Security Scheme Object"),
            at=pointer_join(at, name),
        )
        for name, raw in (schemes if isinstance(schemes, dict) else {}).items()
    }


def servers(data: dict[str, Any], resolver: Resolver, schemes: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The document's servers in the shape of the module docstring; inline 3.x security schemes
    are added to ``schemes``. Raises ``AsyncAPIError`` for a server that is not a mapping."""
    result = {}
    for name, raw in (data.get("servers") or {}).items():
        at = pointer_join("/servers", name)
        server = _mapping(resolver, raw, at, "a Server Object")
        if "url" in server:
            host, pathname = split_url(_text(server.get("url")))
        else:
            host, pathname = _text(server.get("host")), _text(server.get("pathname"))
        bindings = server.get("bindings")
        result[name] = {
            "host": host,
            "protocol": _text(server.get("protocol")).lower(),
            "protocol_version": _text(server.get("protocolVersion")),
            "pathname": pathname,
            "description": _text(server.get("description")),
            "variables": resolver.resolve(server.get("variables") or {}, at=pointer_join(at, "variables")),
            "security": _security(
                server.get("security"), resolver, pointer_join(at, "security"), name, schemes
            ),
            "bindings": resolver.resolve(bindings, at=pointer_join(at, "bindings")) if bindings else {},
        }
    return result


def split_url(url: str) -> tuple[str, str]:
    """A 2.x server ``url`` as (host, pathname): ``mqtt://broker:1883/v1`` → (``broker:1883``,
    ``/v1``); ``test.mosquitto.org:{port}`` → (``test.mosquitto.org:{port}``, ``""``)."""
    parts = urlsplit(url if "://" in url else f"//{url}")
    return parts.netloc, parts.path


def _security(raw: Any, resolver: Resolver, at: str, server: str, schemes: dict[str, Any]) -> list[Any]:
    requirements = []
    for index, item in enumerate(raw if isinstance(raw, list) else []):
        item_at = pointer_join(at, index)
        if is_ref(item):
            tokens = ref_tokens(item["$ref"]) if item["$ref"].startswith("#") else []
            scheme = _mapping(resolver, item, item_at, "a Security Scheme Object")
            if tokens[:2] == ["components", "securitySchemes"] and len(tokens) == 3:
                requirements.append({tokens[2]: list(scheme.get("scopes") or [])})
                continue
        elif isinstance(item, dict) and "type" not in item:
            requirements.append(resolver.resolve(item, at=item_at))  # 2.x: {name: [scopes]}
            continue
        scheme = resolver.resolve(_mapping(resolver, item, item_at, "a Security Scheme Object"), at=item_at)
        name = f"{server}-{index}"
        schemes[name] = scheme
        requirements.append({name: list(scheme.get("scopes") or [])})
    return requirements


def tags(data: dict[str, Any], resolver: Resolver) -> list[dict[str, str]]:
    """3.x ``info.tags`` or 2.x root ``tags`` as ``[{"name", "description"}]``."""
    info = data.get("info") or {}
    raw, at = (info.get("tags"), "/info/tags") if "tags" in info else (data.get("tags"), "/tags")
    result = []
    for index, item in enumerate(raw if isinstance(raw, list) else []):
        tag = _mapping(resolver, item, pointer_join(at, index), "a Tag Object")
        result.append({"name": _text(tag.get("name")), "description": _text(tag.get("description"))})
    return [tag for tag in result if tag["name"]]


def protocols(server_map: dict[str, dict[str, Any]]) -> list[str]:
    """Sorted distinct protocols of ``server_map`` (the output of ``servers``)."""
    return sorted({server["protocol"] for server in server_map.values() if server["protocol"]})
