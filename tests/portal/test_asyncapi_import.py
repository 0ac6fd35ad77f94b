"""AsyncAPI import over the real documents in ../shared/asyncapi/ (read in place, never copied)
and over small documents written here for the edge cases: cycles, 1.x, broken YAML, atomicity."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from django.conf import settings
from django.core.exceptions import PermissionDenied

from portal.asyncapi import SUPPORTED_VERSIONS, AsyncAPIError, parse_document
from portal.models import API, APIVersion, Channel, Operation
from portal.services.apis import api_import, api_publish

SHARED = Path(settings.BASE_DIR).parent / "shared" / "asyncapi"
INVALID = "spec-json-schemas_asyncapi.yml"
ELEVATOR = "apim/elevator-co/api/V1/json/{resource_region_id}/{equipment_type}/{event_type}/{resource_type}"

# What a provider sees after importing each shared document: channel count, and for some
# channels (by address) the consumer's actions. A new file in shared/ must be added here.
EXPECTED = {
    "spec_websocket-gemini-asyncapi.yml": (1, {"/v1/marketdata/{symbol}": ["receive"]}),
    "spec_rpc-server-asyncapi.yml": (2, {"{queue}": ["receive"], "rpc_queue": ["send"]}),
    "spec_streetlights-mqtt.yml": (
        4,
        {
            "smartylighting/streetlights/1/0/event/{streetlightId}/lighting/measured": ["send"],
            "smartylighting/streetlights/1/0/action/{streetlightId}/turn/on": ["receive"],
            "smartylighting/streetlights/1/0/action/{streetlightId}/turn/off": ["receive"],
            "smartylighting/streetlights/1/0/action/{streetlightId}/dim": ["receive"],
        },
    ),
    "supermq_websocket.yaml": (
        3,
        {"m/{domainPrefix}/c/{channelPrefix}/{subtopic}": ["receive", "send"], "/version": ["receive"]},
    ),
    "slack-api-specs_slack_events_api_asyncapi_v2.json": (66, {"slack/events/app/mention": ["receive"]}),
    "product-apim_APIMaintenance.yml": (
        2,
        {
            f"{ELEVATOR}/{{resource_id}}": ["send"],
            "apim/elevator-co/api/V1/json/status/{tracking_id}": ["receive"],
        },
    ),
    INVALID: None,
}


def shared_documents() -> list[str]:
    return sorted(path.name for path in SHARED.iterdir() if path.suffix in {".yml", ".yaml", ".json"})


def import_shared(provider, name: str) -> APIVersion:
    return api_import(provider=provider, content=(SHARED / name).read_bytes(), filename=name)


def actions(version: APIVersion) -> dict[str, list[str]]:
    return {
        channel.address: sorted(op.action for op in channel.operations.all())
        for channel in version.channels.prefetch_related("operations")
    }


def row_counts() -> tuple[int, ...]:
    return tuple(model.objects.count() for model in (API, APIVersion, Channel, Operation))


def test_every_shared_document_has_an_expectation():
    assert shared_documents(), f"no AsyncAPI documents found in {SHARED}"
    assert sorted(EXPECTED) == shared_documents()


@pytest.mark.parametrize("name", shared_documents())
def test_shared_document_imports_with_its_channels_and_actions(alice, name):
    if EXPECTED.get(name) is None:
        with pytest.raises(AsyncAPIError):
            import_shared(alice, name)
        return
    channel_count, expected_actions = EXPECTED[name]
    version = import_shared(alice, name)
    assert version.channels.count() == channel_count
    found = actions(version)
    for address, expected in expected_actions.items():
        assert found[address] == expected, address
    assert version.source == (SHARED / name).read_text(encoding="utf-8")
    assert version.source_filename == name
    assert version.status == APIVersion.Status.DRAFT
    assert version.api.status == API.Status.DRAFT


def test_gemini_31_channel_symbol_parameter_and_payload(alice):
    version = import_shared(alice, "spec_websocket-gemini-asyncapi.yml")
    api = version.api
    assert (api.name, api.slug) == ("Gemini Market Data Websocket API", "gemini-market-data-websocket-api")
    assert api.summary == "Market data is a public API that streams all the market data on a given symbol."
    assert (version.version, version.asyncapi_version) == ("1.0.0", "3.1.0")
    channel = version.channels.get()
    assert channel.key == "marketDataV1"
    assert channel.address == "/v1/marketdata/{symbol}"
    assert "btcusd" in channel.parameters["symbol"]["enum"]
    assert channel.example_address() == "/v1/marketdata/btcusd"
    assert channel.bindings["ws"]["query"]["properties"]["heartbeat"]["type"] == "boolean"
    operation = channel.operations.get()
    # The Gemini server's `send` is what a gateway client receives.
    assert (operation.key, operation.action) == ("sendMarketData", "receive")
    assert operation.summary == "Receive market updates on a given symbol"
    [message] = operation.messages
    assert message["name"] == "marketData"
    assert message["summary"] == "Message with marked data information."
    # $refs inside the payload are resolved: oneOf heartbeat/update, each built with allOf.
    variants = message["payload"]["oneOf"]
    assert variants[0]["allOf"][0]["properties"]["type"]["const"] == "heartbeat"
    assert variants[1]["allOf"][0]["properties"]["events"]["type"] == "array"


def test_streetlights_26_traits_parameters_and_yaml_12_scalars(alice):
    version = import_shared(alice, "spec_streetlights-mqtt.yml")
    channels = {channel.key: channel for channel in version.channels.all()}
    measured = channels["smartylighting/streetlights/1/0/event/{streetlightId}/lighting/measured"]
    assert measured.parameters["streetlightId"] == {
        "description": "The ID of the streetlight.",
        "schema": {"type": "string"},
    }
    # `publish` = messages the streetlights application consumes, so gateway clients send them.
    operation = measured.operations.get()
    assert (operation.key, operation.action) == ("receiveLightMeasurement", "send")
    [message] = operation.messages
    assert (message["name"], message["title"], message["content_type"]) == (
        "lightMeasured",
        "Light measured",
        "application/json",
    )
    assert message["payload"]["properties"]["sentAt"]["format"] == "date-time"
    turn_on = channels["smartylighting/streetlights/1/0/action/{streetlightId}/turn/on"].operations.get()
    assert (turn_on.key, turn_on.action) == ("turnOn", "receive")
    # `enum: [on, off]` stays strings (YAML 1.2, as AsyncAPI tools read it), not booleans.
    assert turn_on.messages[0]["payload"]["properties"]["command"]["enum"] == ["on", "off"]
    # The document's defaultContentType applies to messages that do not set one.
    assert turn_on.messages[0]["content_type"] == "application/json"


def test_supermq_26_both_directions_and_ref_parameters_with_siblings(alice):
    version = import_shared(alice, "supermq_websocket.yaml")
    channel = version.channels.get(key="m/{domainPrefix}/c/{channelPrefix}/{subtopic}")
    by_action = {op.action: op for op in channel.operations.all()}
    assert by_action["receive"].key == "subscribeToChannel"
    assert by_action["send"].key == "publishToChannel"
    assert by_action["send"].messages[0]["name"] == "publishMessage"
    assert by_action["send"].messages[0]["payload"]["type"] == "object"
    assert channel.parameters["subtopic"]["schema"]["default"] == ""
    assert channel.parameters["subtopic"]["required"] is False
    version_channel = version.channels.get(key="/version").operations.get()
    assert (version_channel.action, version_channel.messages) == ("receive", [])


def test_slack_20_json_with_tabs_66_receive_channels(alice):
    version = import_shared(alice, "slack-api-specs_slack_events_api_asyncapi_v2.json")
    assert version.api.name == "Slack Events API"
    assert version.channels.count() == 66
    assert set(Operation.objects.filter(channel__api_version=version).values_list("action", flat=True)) == {
        "receive"
    }
    mention = version.channels.get(address="slack/events/app/mention").operations.get()
    payload = mention.messages[0]["payload"]
    assert "$ref" not in payload
    assert payload["properties"]["api_app_id"]["type"] == "string"
    assert (
        mention.messages[0]["summary"] == "Subscribe to only the message events that mention your app or bot"
    )


def test_rpc_server_31_whole_address_is_a_parameter(alice):
    version = import_shared(alice, "spec_rpc-server-asyncapi.yml")
    queue = version.channels.get(key="queue")
    assert queue.address == "{queue}"
    assert queue.parameters == {"queue": {}}
    assert queue.address_regex().match("amq.gen-reply-42").group("queue") == "amq.gen-reply-42"
    assert queue.bindings["amqp"]["queue"]["exclusive"] is True
    reply = queue.operations.get()
    # The RPC server sends the sum result; the client receives it, and sends the `sum` request.
    assert (reply.key, reply.action, reply.messages[0]["name"]) == (
        "sendSumResult",
        "receive",
        "sendSumResult",
    )
    assert reply.messages[0]["payload"]["properties"]["result"]["type"] == "number"
    request = version.channels.get(key="rpc_queue").operations.get()
    assert (request.key, request.action) == ("sum", "send")


def test_product_apim_20_ref_parameters_import_despite_schema_defect(alice):
    """asyncapi/spec-json-schemas#296: the official 2.0.0 schema refuses `$ref` parameters."""
    version = import_shared(alice, "product-apim_APIMaintenance.yml")
    assert (version.asyncapi_version, version.version, version.api.slug) == (
        "2.0.0",
        "0.0.3",
        "apimaintenance",
    )
    maintenance = version.channels.get(address__contains="{resource_region_id}")
    assert maintenance.parameters["resource_region_id"]["schema"]["enum"] == [
        "fr",
        "de",
        "us-east",
        "us-west",
    ]
    assert (
        maintenance.example_address()
        == "apim/elevator-co/api/V1/json/fr/elevator/maintenace/elev-make-1/resource_id"
    )
    # The spec decides, not the prose: this Solace export's summaries are written from the
    # client's side ("subscribe to maintenance events" on `publish`), but 2.0.0 §Channel Item
    # says `publish` holds messages the application consumes, so clients send them.
    operation = maintenance.operations.get()
    assert (operation.key, operation.action) == ("onMaintenance", "send")
    assert operation.messages[0]["payload"]["properties"]["body"]["required"][0] == "component_id"
    status = version.channels.get(
        address="apim/elevator-co/api/V1/json/status/{tracking_id}"
    ).operations.get()
    assert (status.key, status.action) == ("publishStatus", "receive")


def test_invalid_document_is_refused_naming_key_and_line_and_stores_nothing(alice):
    before = row_counts()
    with pytest.raises(AsyncAPIError) as caught:
        import_shared(alice, INVALID)
    error = caught.value
    assert (error.pointer, error.line, error.filename) == ("/info", 6, INVALID)
    assert '"dupa"' in error.message
    assert str(error) == (
        f'{INVALID}, line 6, at /info: unknown key "dupa" (not allowed by the AsyncAPI 3.0.0 schema)'
    )
    assert row_counts() == before


def test_asyncapi_1x_is_refused_naming_the_supported_versions(alice):
    document = "asyncapi: '1.2.0'\ninfo:\n  title: Old\n  version: '1'\ntopics: {}\n"
    with pytest.raises(AsyncAPIError) as caught:
        api_import(provider=alice, content=document, filename="old.yml")
    assert caught.value.pointer == "/asyncapi"
    assert caught.value.line == 1
    assert "1.2.0 is not supported" in caught.value.message
    assert "2.0.0–2.6.0, 3.0.0 and 3.1.0" in caught.value.message
    assert {"2.0.0", "2.6.0", "3.0.0", "3.1.0"} <= set(SUPPORTED_VERSIONS)


@pytest.mark.parametrize(
    ("content", "line", "fragment"),
    [
        ("asyncapi: 3.0.0\ninfo:\n  title: [unclosed\n  version: 1.0.0\n", 4, "not valid YAML"),
        ('{\n\t"asyncapi": "3.0.0",\n\t"info": {"title": "x" "version": "1"}\n}\n', 3, "not valid JSON"),
        ("asyncapi: 3.0.0\ninfo:\n  title: a\n  title: b\n  version: '1'\n", 4, 'duplicate key "title"'),
        ("- asyncapi\n- 3.0.0\n", 1, "must be a mapping"),
        ("info:\n  title: no version key\n", 1, '"asyncapi" key'),
    ],
)
def test_unreadable_documents_are_refused_with_a_line(alice, content, line, fragment):
    before = row_counts()
    with pytest.raises(AsyncAPIError) as caught:
        api_import(provider=alice, content=content, filename="broken.yml")
    assert caught.value.line == line
    assert fragment in caught.value.message
    assert caught.value.filename == "broken.yml"
    assert row_counts() == before


RECURSIVE = """
asyncapi: 3.0.0
info:
  title: Org chart
  version: 2.0.0
channels:
  people:
    address: people/{team}
    parameters:
      team:
        $ref: '#/components/parameters/team'
    messages:
      person:
        $ref: '#/components/messages/person'
  nowhere:
    address: null
operations:
  publishPerson:
    action: send
    channel:
      $ref: '#/channels/people'
  acceptPerson:
    action: receive
    channel:
      $ref: '#/channels/people'
    messages:
      - $ref: '#/channels/people/messages/person'
components:
  parameters:
    team:
      enum: [red, blue]
  messages:
    person:
      title: A person
      payload:
        $ref: '#/components/schemas/Person'
  schemas:
    Person:
      type: object
      properties:
        name: {type: string}
        manager: {$ref: '#/components/schemas/Person'}
        reports:
          type: array
          items: {$ref: '#/components/schemas/Person'}
"""


def test_recursive_schema_imports_with_the_cycle_marked(alice):
    version = api_import(provider=alice, content=RECURSIVE, filename="org.yaml")
    people = version.channels.get(key="people")
    assert people.parameters == {"team": {"enum": ["red", "blue"]}}
    by_action = {op.action: op for op in people.operations.all()}
    assert set(by_action) == {"receive", "send"}
    # Without `messages`, an operation carries all of its channel's messages.
    payload = by_action["receive"].messages[0]["payload"]
    assert payload["properties"]["name"] == {"type": "string"}
    assert payload["properties"]["manager"] == {"$ref": "#/components/schemas/Person", "x-recursive": True}
    assert payload["properties"]["reports"]["items"]["x-recursive"] is True
    assert by_action["send"].messages[0]["title"] == "A person"
    # A null address (3.0 §Channel Object: unknown or dynamic) falls back to the channel key.
    assert version.channels.get(key="nowhere").address == "nowhere"


def test_dangling_reference_is_refused_at_its_line(alice):
    document = RECURSIVE.replace(
        "$ref: '#/components/parameters/team'", "$ref: '#/components/parameters/squad'"
    )
    with pytest.raises(AsyncAPIError) as caught:
        api_import(provider=alice, content=document, filename="org.yaml")
    assert caught.value.pointer == "/channels/people/parameters/team/$ref"
    assert caught.value.line == 11
    assert "#/components/parameters/squad" in caught.value.message


def test_new_version_of_an_api_and_duplicate_version_refused(alice):
    first = api_import(provider=alice, content=RECURSIVE, filename="org.yaml")
    second = api_import(
        provider=alice,
        content=RECURSIVE.replace("version: 2.0.0", "version: 2.1.0"),
        filename="org-2.1.yaml",
        api=first.api,
    )
    assert second.api == first.api
    assert list(first.api.versions.values_list("version", flat=True)) == ["2.1.0", "2.0.0"]
    before = row_counts()
    with pytest.raises(AsyncAPIError) as caught:
        api_import(provider=alice, content=RECURSIVE, filename="org.yaml", api=first.api)
    assert (caught.value.pointer, caught.value.line) == ("/info/version", 5)
    assert 'already has a version "2.0.0"' in caught.value.message
    assert row_counts() == before


def test_same_title_twice_gets_a_unique_slug(alice):
    first = import_shared(alice, "spec_rpc-server-asyncapi.yml").api
    second = import_shared(alice, "spec_rpc-server-asyncapi.yml").api
    assert (first.slug, second.slug) == ("rpc-server-example", "rpc-server-example-2")


def test_an_api_titled_import_does_not_hide_the_import_page(alice, client):
    document = "asyncapi: 3.0.0\ninfo:\n  title: Import\n  version: 1.0.0\nchannels: {}\n"
    api = api_import(provider=alice, content=document, filename="import.yaml").api
    assert api.slug == "import-2"
    client.force_login(alice)
    assert "Import an AsyncAPI document" in client.get("/provider/apis/import/").content.decode()


def test_failure_while_storing_rolls_back_the_new_api(alice, monkeypatch):
    def fail(**kwargs):
        raise RuntimeError("database connection lost")

    before = row_counts()
    monkeypatch.setattr("portal.services.apis._channels_create", fail)
    with pytest.raises(RuntimeError):
        import_shared(alice, "spec_streetlights-mqtt.yml")
    assert row_counts() == before


def test_only_providers_import_and_only_into_their_own_apis(alice, bob, carol):
    with pytest.raises(PermissionDenied):
        api_import(provider=carol, content=RECURSIVE, filename="org.yaml")
    version = api_import(provider=alice, content=RECURSIVE, filename="org.yaml")
    bob.is_provider = True
    bob.save()
    with pytest.raises(PermissionDenied):
        api_import(provider=bob, content=RECURSIVE, filename="org.yaml", api=version.api)


def test_publish_makes_the_api_visible_in_the_catalog(alice):
    version = import_shared(alice, "spec_websocket-gemini-asyncapi.yml")
    assert not API.objects.published().filter(pk=version.api.pk).exists()
    api_publish(api_version=version)
    assert version.status == APIVersion.Status.PUBLISHED
    assert version.api.status == API.Status.PUBLISHED
    assert API.objects.published().get() == version.api
    assert version.api.latest_version() == version


def test_json_and_yaml_are_told_apart_by_content_not_extension():
    document = json.dumps({"asyncapi": "2.6.0", "info": {"title": "J", "version": "1"}, "channels": {}})
    parsed = parse_document(content=document.encode(), filename="looks-like.yaml")
    assert (parsed.title, parsed.channels) == ("J", [])
    parsed = parse_document(
        content="asyncapi: 2.6.0\ninfo: {title: Y, version: '1'}\nchannels: {}\n", filename="x.json"
    )
    assert parsed.title == "Y"
