"""The consumer-facing AsyncAPI document of an API version: the provider's document with its
servers and security schemes replaced by this gateway's.

A provider's document describes *their* brokers (MQTT, Kafka, AMQP, Solace …) and credentials;
consumers of Eventgate connect to the gateway instead, over WebSocket, with their application's
API key. So the document consumers see and download keeps every channel, operation, message and
schema as written and changes only where and how to connect:

- ``servers``: one server, the gateway's WebSocket root of the version
  (``ws(s)://<host>/ws/<api>/<version>/``; a channel's URL is the root plus its address —
  docs/gateway.md). The root ends with ``/`` so that tools which join the server URL and the
  channel address (as AsyncAPI code generators do) build a URL the gateway accepts, for
  addresses with or without a leading ``/`` (the gateway drops an extra one). AsyncAPI 2.x:
  Server Object ``url`` and ``protocol`` (2.6.0 §Server Object); 3.x: ``host``, ``pathname`` and
  ``protocol`` (3.0.0 §Server Object).
- ``components.securitySchemes``: the credentials the gateway accepts (gateway/credentials.py): the API
  key as ``Authorization: Bearer`` (RFC 6750 §2.1; Security Scheme ``http``/``bearer``) or in the
  ``access_token`` query parameter (RFC 6750 §2.3; ``httpApiKey`` ``in: query``).
- Every server, operation and operation trait ``security`` points at those schemes (2.x: Security
  Requirement Objects by name; 3.x: a list of ``$ref``s), channels lose their ``servers`` lists
  (absent means "all servers", 2.6.0 §Channel Item Object / 3.0.0 §Channel Object), and reusable
  ``components.servers`` / ``serverVariables`` are dropped because nothing may use them now.

The result stays in the document's AsyncAPI version, so it validates against the same official
JSON Schema (tests/portal/test_consumer_document.py imports every shared document and checks).
"""

from __future__ import annotations

import copy
import json
import re
from typing import TYPE_CHECKING, Any

import yaml

from portal.links import gateway_ws_base

if TYPE_CHECKING:
    from portal.models import APIVersion

SERVER_NAME = "eventgate"
BEARER_SCHEME = "bearer"
QUERY_SCHEME = "accessToken"
FORMATS = ("yaml", "json")

# Plain text: the AsyncAPI web component shows code spans in these descriptions with their
# backticks, so none are used.
_SERVER_DESCRIPTION = (
    "Eventgate, the API gateway of this portal. Connect a WebSocket to this URL followed by "
    "the channel address with its parameters filled in. Authenticate with your application's "
    "API key, as an Authorization: Bearer header or, where a client cannot set headers (browsers), "
    "in the access_token query parameter."
)
_SECURITY_SCHEMES: dict[str, dict[str, Any]] = {
    BEARER_SCHEME: {
        "type": "http",
        "scheme": "bearer",
        "description": "Your application's API key (eg_…) in the header Authorization: Bearer eg_… "
        "(RFC 6750 §2.1).",
    },
    QUERY_SCHEME: {
        "type": "httpApiKey",
        "name": "access_token",
        "in": "query",
        "description": "Your application's API key (eg_…) in the access_token query parameter "
        "(RFC 6750 §2.3), for clients that cannot set handshake headers.",
    },
}


def consumer_document(*, api_version: APIVersion, base_url: str) -> dict[str, Any]:
    """The consumer-facing AsyncAPI document of ``api_version`` (a new dict; the stored
    ``document`` is not changed).

    ``base_url`` is the portal's public URL (``http://host[:port][/prefix]``, usually
    ``EVENTGATE_PUBLIC_URL``); http gives a ``ws`` server, https a ``wss`` one. The document keeps
    its ``asyncapi`` version (2.0.0–2.6.0, 3.0.0, 3.1.0); see the module docstring for what is
    replaced. Raises nothing for a document the importer stored.
    """
    document: dict[str, Any] = copy.deepcopy(api_version.document)
    scheme, host, root = gateway_ws_base(
        api_slug=api_version.api.slug, version=api_version.version, base_url=base_url
    )
    components = document.get("components")
    if not isinstance(components, dict):
        components = document["components"] = {}
    components.pop("servers", None)
    components.pop("serverVariables", None)
    components["securitySchemes"] = copy.deepcopy(_SECURITY_SCHEMES)

    if str(document.get("asyncapi", "")).startswith("2."):
        security: list[Any] = [{BEARER_SCHEME: []}, {QUERY_SCHEME: []}]
        server: dict[str, Any] = {"url": f"{scheme}://{host}{root}/", "protocol": scheme}
        channel_maps = [document.get("channels")]
        operations = [
            item.get(action)
            for item in _values(document.get("channels"))
            for action in ("subscribe", "publish")
        ]
    else:
        security = [
            {"$ref": f"#/components/securitySchemes/{name}"} for name in (BEARER_SCHEME, QUERY_SCHEME)
        ]
        server = {"host": host, "pathname": f"{root}/", "protocol": scheme, "title": "Eventgate gateway"}
        channel_maps = [document.get("channels"), components.get("channels")]
        operations = [*_values(document.get("operations")), *_values(components.get("operations"))]

    server["description"] = _SERVER_DESCRIPTION
    server["security"] = security
    document["servers"] = {SERVER_NAME: server}
    for channels in channel_maps:
        for channel in _values(channels):
            channel.pop("servers", None)
    traits = [trait for operation in _values(operations) for trait in _items(operation.get("traits"))]
    for holder in [*_values(operations), *traits, *_values(components.get("operationTraits"))]:
        if "security" in holder:
            holder["security"] = copy.deepcopy(security)
    return document


def document_dump(document: dict[str, Any], *, fmt: str) -> str:
    """``document`` as text: ``fmt`` ``"yaml"`` (block style, keys in document order, Unicode kept)
    or ``"json"`` (indented by 2). Raises ``ValueError`` for any other ``fmt``.

    YAML is written by PyYAML's safe dumper, which quotes every string a YAML 1.1 reader would
    take for another type ("yes", "1.0", "null"); strings that only YAML 1.2 reads as numbers
    ("1e3") are quoted as well, so the text reads back the same with either YAML version.
    """
    if fmt == "json":
        return json.dumps(document, indent=2, ensure_ascii=False) + "\n"
    if fmt == "yaml":
        return yaml.dump(
            document, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=120, default_flow_style=False
        )
    raise ValueError(f"unknown document format {fmt!r}; use one of {', '.join(FORMATS)}")


class _Dumper(yaml.SafeDumper):
    """SafeDumper that also quotes strings YAML 1.2's core schema reads as numbers (``1e3``,
    ``0o17``, ``.5``), since the portal's importer reads YAML 1.2."""

    def represent_str(self, data: str) -> yaml.Node:
        if _looks_numeric_in_yaml12(data):
            return self.represent_scalar("tag:yaml.org,2002:str", data, style="'")
        return super().represent_str(data)


def _looks_numeric_in_yaml12(text: str) -> bool:
    """Whether YAML 1.2's core schema would resolve the plain scalar ``text`` to a number
    (YAML 1.2.2 §10.3.2 Tag Resolution)."""
    return bool(
        re.fullmatch(r"[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+", text)
        or re.fullmatch(r"[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?", text)
        or re.fullmatch(r"[-+]?\.(inf|Inf|INF)|\.(nan|NaN|NAN)", text)
    )


_Dumper.add_representer(str, _Dumper.represent_str)


def _values(mapping: Any) -> list[dict[str, Any]]:
    """The object values of a JSON object (non-objects and ``$ref`` objects skipped), or of a list."""
    values = mapping.values() if isinstance(mapping, dict) else mapping if isinstance(mapping, list) else ()
    return [value for value in values if isinstance(value, dict) and "$ref" not in value]


def _items(value: Any) -> list[dict[str, Any]]:
    """The inline objects of a JSON array (``$ref`` items skipped: they point at components)."""
    return _values(value) if isinstance(value, list) else []
