"""The consumer-facing AsyncAPI document: the provider's document with this gateway's servers and
security schemes, still valid AsyncAPI of the same version (checked with the importer, which
validates against the official JSON Schemas), and its downloads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from gateway.routing import websocket_urlpatterns
from portal.asyncapi import parse_document
from portal.consumer_document import consumer_document, document_dump
from portal.services.apis import api_import, api_publish
from tests.conftest import SHARED_ASYNCAPI

DEMO_DIR = Path(__file__).resolve().parents[2] / "portal" / "demo"
INVALID = "spec-json-schemas_asyncapi.yml"
SHARED_VALID = sorted(
    path.name
    for path in SHARED_ASYNCAPI.iterdir()
    if path.suffix in {".yml", ".yaml", ".json"} and path.name != INVALID
)
DEMOS = sorted(path.name for path in DEMO_DIR.glob("*.asyncapi.yaml"))
BASE = "https://portal.example.com"
BEARER = {"type": "http", "scheme": "bearer"}
QUERY = {"type": "httpApiKey", "name": "access_token", "in": "query"}


def _import(provider, path: Path):
    return api_import(provider=provider, content=path.read_bytes(), filename=path.name)


def _schemes(document: dict) -> dict:
    return {
        name: {key: value for key, value in scheme.items() if key != "description"}
        for name, scheme in document["components"]["securitySchemes"].items()
    }


def _assert_valid_same_version(document: dict, original_version: str, tmp_name: str) -> None:
    """The document passes the importer's validation (official JSON Schema of its version) both
    as JSON and as the YAML download, and reads back unchanged from YAML."""
    assert document["asyncapi"] == original_version
    for fmt in ("json", "yaml"):
        text = document_dump(document, fmt=fmt)
        parsed = parse_document(content=text, filename=f"{tmp_name}.{fmt}")
        assert parsed.asyncapi_version == original_version
        assert parsed.document == document  # nothing lost or retyped in the dump


@pytest.mark.parametrize("name", SHARED_VALID)
def test_every_shared_document_gives_a_valid_consumer_document_with_the_gateways_server(alice, name):
    version = _import(alice, SHARED_ASYNCAPI / name)
    document = consumer_document(api_version=version, base_url=BASE)

    _assert_valid_same_version(document, version.asyncapi_version, name)
    [server] = document["servers"].values()
    assert _schemes(document) == {"bearer": BEARER, "accessToken": QUERY}
    if version.asyncapi_version.startswith("2."):
        assert server["url"] == f"wss://portal.example.com/ws/{version.api.slug}/{version.version}/"
        assert server["security"] == [{"bearer": []}, {"accessToken": []}]
    else:
        assert (server["host"], server["pathname"]) == (
            "portal.example.com",
            f"/ws/{version.api.slug}/{version.version}/",
        )
        assert server["security"] == [
            {"$ref": "#/components/securitySchemes/bearer"},
            {"$ref": "#/components/securitySchemes/accessToken"},
        ]
    assert server["protocol"] == "wss"
    # Channels and operations are the provider's, unchanged in number.
    assert set(document.get("channels", {})) == set(version.document.get("channels", {}))
    assert set(document.get("operations", {})) == set(version.document.get("operations", {}))


@pytest.mark.parametrize("name", DEMOS)
def test_demo_documents_give_valid_consumer_documents(alice, name):
    version = _import(alice, DEMO_DIR / name)
    document = consumer_document(api_version=version, base_url="http://127.0.0.1:8000")
    _assert_valid_same_version(document, version.asyncapi_version, name)
    [server] = document["servers"].values()
    assert server["protocol"] == "ws" and server["host"] == "127.0.0.1:8000"


def test_provider_security_is_replaced_everywhere_in_a_2x_document(alice):
    # Streetlights names five schemes of its own (apiKey, X509, OAuth, ...) on its server and
    # operation traits; consumers can use none of them.
    version = _import(alice, SHARED_ASYNCAPI / "spec_streetlights-mqtt.yml")
    assert "apiKey" in version.document["components"]["securitySchemes"]
    document = consumer_document(api_version=version, base_url=BASE)
    text = json.dumps(document)
    for provider_scheme in version.document["components"]["securitySchemes"]:
        assert f'"{provider_scheme}"' not in text
    assert "mqtt://" not in text and "test.mosquitto.org" not in text


def test_channel_server_lists_are_dropped_so_no_channel_points_at_a_removed_server(alice):
    source = """
asyncapi: 3.0.0
info: {title: Pinned, version: 2.0.0}
servers:
  broker: {host: broker.internal:1883, protocol: mqtt}
channels:
  alerts:
    address: alerts
    servers: [{$ref: '#/servers/broker'}]
    messages: {alert: {payload: {type: string}}}
operations:
  sendAlert:
    action: send
    channel: {$ref: '#/channels/alerts'}
    security: [{type: userPassword}]
"""
    version = api_import(provider=alice, content=source, filename="pinned.yaml")
    document = consumer_document(api_version=version, base_url=BASE)
    assert "servers" not in document["channels"]["alerts"]
    assert document["operations"]["sendAlert"]["security"] == document["servers"]["eventgate"]["security"]
    assert "broker.internal" not in json.dumps(document)
    _assert_valid_same_version(document, "3.0.0", "pinned")


def test_stored_document_is_not_changed(alice):
    version = _import(alice, SHARED_ASYNCAPI / "supermq_websocket.yaml")
    before = json.dumps(version.document, sort_keys=True)
    consumer_document(api_version=version, base_url=BASE)
    version.refresh_from_db()
    assert json.dumps(version.document, sort_keys=True) == before


def test_yaml_dump_quotes_strings_that_yaml_12_reads_as_numbers():
    document = {"asyncapi": "3.0.0", "info": {"title": "1e3", "version": "1.0"}, "x-octal": "0o17", "x-n": 7}
    assert yaml.safe_load(document_dump(document, fmt="yaml")) == document
    assert parse_document  # the round trip through the importer is covered above


def test_unknown_dump_format_is_a_clear_error():
    with pytest.raises(ValueError, match="use one of yaml, json"):
        document_dump({}, fmt="xml")


# Downloads ------------------------------------------------------------------------------------


@pytest.fixture
def published_gemini(alice):
    version = _import(alice, SHARED_ASYNCAPI / "spec_websocket-gemini-asyncapi.yml")
    api_publish(api_version=version)
    version.refresh_from_db()
    return version


def test_yaml_download_is_an_attachment_with_the_gateways_server(client, settings, published_gemini):
    settings.EVENTGATE_PUBLIC_URL = "https://events.example.com"
    slug, number = published_gemini.api.slug, published_gemini.version
    response = client.get(f"/apis/{slug}/versions/{number}/asyncapi.yaml")
    assert response.status_code == 200
    assert response["Content-Type"] == "application/yaml; charset=utf-8"
    assert response["Content-Disposition"] == f'attachment; filename="{slug}-{number}.asyncapi.yaml"'
    document = yaml.safe_load(response.content)
    assert document["servers"]["eventgate"]["host"] == "events.example.com"
    assert document["servers"]["eventgate"]["pathname"] == f"/ws/{slug}/{number}/"
    assert document["channels"].keys() == published_gemini.document["channels"].keys()


def test_json_download_is_the_same_document(client, published_gemini):
    slug, number = published_gemini.api.slug, published_gemini.version
    response = client.get(f"/apis/{slug}/versions/{number}/asyncapi.json")
    assert response.status_code == 200
    assert response["Content-Type"] == "application/json; charset=utf-8"
    assert response["Content-Disposition"] == f'attachment; filename="{slug}-{number}.asyncapi.json"'
    as_yaml = yaml.safe_load(client.get(f"/apis/{slug}/versions/{number}/asyncapi.yaml").content)
    assert response.json() == as_yaml


def test_unknown_download_format_is_404(client, published_gemini):
    slug, number = published_gemini.api.slug, published_gemini.version
    assert client.get(f"/apis/{slug}/versions/{number}/asyncapi.xml").status_code == 404
    assert client.get(f"/apis/{slug}/versions/9.9.9/asyncapi.yaml").status_code == 404


def test_draft_documents_are_downloadable_only_by_their_provider(client, alice, carol):
    version = _import(alice, SHARED_ASYNCAPI / "spec_rpc-server-asyncapi.yml")
    url = f"/apis/{version.api.slug}/versions/{version.version}/asyncapi.json"
    assert client.get(url).status_code == 404
    client.force_login(carol)
    assert client.get(url).status_code == 404
    client.force_login(alice)
    assert client.get(url).json()["info"]["title"] == version.document["info"]["title"]


def test_original_upload_is_downloadable_by_its_provider_only(client, alice, bob, published_gemini):
    slug, number = published_gemini.api.slug, published_gemini.version
    url = f"/apis/{slug}/versions/{number}/source"
    assert client.get(url).status_code == 404
    client.force_login(bob)
    assert client.get(url).status_code == 404  # bob may read the consumer document, not the source
    assert client.get(f"/apis/{slug}/versions/{number}/asyncapi.yaml").status_code == 200
    client.force_login(alice)
    response = client.get(url)
    assert response.status_code == 200
    assert response.content == (SHARED_ASYNCAPI / "spec_websocket-gemini-asyncapi.yml").read_bytes()
    assert response["Content-Disposition"] == 'attachment; filename="spec_websocket-gemini-asyncapi.yml"'


def test_server_url_joined_with_a_channel_address_is_a_gateway_url(alice):
    """Code generators join the server URL and the channel address as strings; both address
    shapes (``prices/{symbol}``, ``/v1/marketdata/{symbol}``) must give a path the gateway
    routes to that channel."""
    [gateway_route] = [
        route.pattern.regex for route in websocket_urlpatterns if "address" in route.pattern.regex.groupindex
    ]
    for name in ("spec_websocket-gemini-asyncapi.yml", "supermq_websocket.yaml"):
        version = _import(alice, SHARED_ASYNCAPI / name)
        document = consumer_document(api_version=version, base_url="http://127.0.0.1:8000")
        [server] = document["servers"].values()
        root = server["url"].removeprefix("ws://127.0.0.1:8000") if "url" in server else server["pathname"]
        for channel in version.channels.all():
            path = root + channel.example_address()
            found = gateway_route.match(path.removeprefix("/"))
            assert found is not None, path
            assert found["address"].strip("/") == channel.example_address().strip("/")
