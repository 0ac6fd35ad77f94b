"""AsyncAPI import over the real documents in ../shared/asyncapi/ (read in place, never copied)
and over small documents written here for the edge cases: cycles, 1.x, broken YAML, atomicity."""

from __future__ import annotations

import base64
import json

import pytest
from django.core.exceptions import PermissionDenied

from portal.asyncapi import (
    EXPANSION_BUDGET_BYTES,
    MAX_DOCUMENT_BYTES,
    MAX_EXPANDED_BYTES,
    MAX_MESSAGES,
    SUPPORTED_VERSIONS,
    AsyncAPIError,
    DocumentTooLargeError,
    parse_document,
)
from portal.management.commands.bench_import import fleet_document
from portal.models import API, APIVersion, Channel, Operation
from portal.services.apis import DuplicateAPIError, api_import, api_publish
from tests.conftest import SHARED_ASYNCAPI
from tests.factories import UserFactory

INVALID = "spec-json-schemas_asyncapi.yml"
ELEVATOR = "apim/elevator-co/api/V1/json/{resource_region_id}/{equipment_type}/{event_type}/{resource_type}"

# What a provider sees after importing each shared document: every operation as (channel
# address, the consumer's action, operation key), exactly. Slack's 66 channels are checked by
# rule in the test. A new file in shared/ must be added here.
SLACK = "slack-api-specs_slack_events_api_asyncapi_v2.json"
EXPECTED: dict[str, list[tuple[str, str, str]] | None] = {
    "spec_websocket-gemini-asyncapi.yml": [("/v1/marketdata/{symbol}", "receive", "sendMarketData")],
    "spec_rpc-server-asyncapi.yml": [("{queue}", "receive", "sendSumResult"), ("rpc_queue", "send", "sum")],
    "spec_streetlights-mqtt.yml": [
        (
            "smartylighting/streetlights/1/0/event/{streetlightId}/lighting/measured",
            "send",
            "receiveLightMeasurement",
        ),
        ("smartylighting/streetlights/1/0/action/{streetlightId}/turn/on", "receive", "turnOn"),
        ("smartylighting/streetlights/1/0/action/{streetlightId}/turn/off", "receive", "turnOff"),
        ("smartylighting/streetlights/1/0/action/{streetlightId}/dim", "receive", "dimLight"),
    ],
    "supermq_websocket.yaml": [
        ("m/{domainPrefix}/c/{channelPrefix}/{subtopic}", "receive", "subscribeToChannel"),
        ("m/{domainPrefix}/c/{channelPrefix}/{subtopic}", "send", "publishToChannel"),
        ("/version", "receive", "getVersion"),
        ("metrics", "receive", "metrics"),
    ],
    SLACK: [],
    "product-apim_APIMaintenance.yml": [
        (f"{ELEVATOR}/{{resource_id}}", "send", "onMaintenance"),
        ("apim/elevator-co/api/V1/json/status/{tracking_id}", "receive", "publishStatus"),
    ],
    INVALID: None,
}
# Channels of each document (supermq has two operations on one channel).
CHANNEL_COUNTS = {
    "spec_websocket-gemini-asyncapi.yml": 1,
    "spec_rpc-server-asyncapi.yml": 2,
    "spec_streetlights-mqtt.yml": 4,
    "supermq_websocket.yaml": 3,
    SLACK: 66,
    "product-apim_APIMaintenance.yml": 2,
}


def shared_documents() -> list[str]:
    return sorted(
        path.name for path in SHARED_ASYNCAPI.iterdir() if path.suffix in {".yml", ".yaml", ".json"}
    )


def import_shared(provider, name: str) -> APIVersion:
    return api_import(provider=provider, content=(SHARED_ASYNCAPI / name).read_bytes(), filename=name)


def actions(version: APIVersion) -> dict[str, list[str]]:
    return {
        channel.address: sorted(op.action for op in channel.operations.all())
        for channel in version.channels.prefetch_related("operations")
    }


def row_counts() -> tuple[int, ...]:
    return tuple(model.objects.count() for model in (API, APIVersion, Channel, Operation))


def test_every_shared_document_has_an_expectation():
    assert shared_documents(), f"no AsyncAPI documents found in {SHARED_ASYNCAPI}"
    assert sorted(EXPECTED) == shared_documents()


@pytest.mark.parametrize("name", shared_documents())
def test_shared_document_imports_with_its_channels_and_actions(alice, name):
    if EXPECTED.get(name) is None:
        before = row_counts()
        with pytest.raises(AsyncAPIError) as refused:
            import_shared(alice, name)
        assert (refused.value.pointer, refused.value.line, refused.value.filename) == ("/info", 6, name)
        assert row_counts() == before
        return
    version = import_shared(alice, name)
    assert version.channels.count() == CHANNEL_COUNTS[name]
    found = [
        (channel.address, operation.action, operation.key)
        for channel in version.channels.order_by("id").prefetch_related("operations")
        for operation in channel.operations.order_by("id")
    ]
    if name == SLACK:
        # Every Slack event is a channel the app is told about (2.0 `subscribe`): consumers receive.
        assert len(found) == 66
        assert all(
            address.startswith("slack/events/") and action == "receive" for address, action, _ in found
        )
        assert ("slack/events/app/mention", "receive", "") in found
        assert len({address for address, _, _ in found}) == 66
    else:
        assert found == EXPECTED[name]
    assert version.source == (SHARED_ASYNCAPI / name).read_text(encoding="utf-8")
    assert version.source_filename == name
    assert version.source_files == {}
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
        == "apim/elevator-co/api/V1/json/fr/elevator/maintenace/elev-make-1/{resource_id}"
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


def test_same_title_from_two_providers_gets_a_unique_slug(alice):
    first = import_shared(alice, "spec_rpc-server-asyncapi.yml").api
    second = import_shared(UserFactory(is_provider=True), "spec_rpc-server-asyncapi.yml").api
    assert (first.slug, second.slug) == ("rpc-server-example", "rpc-server-example-2")
    assert first.name == second.name == "RPC Server Example"


def test_importing_a_title_the_provider_already_has_is_refused_at_info_title(alice):
    existing = import_shared(alice, "spec_rpc-server-asyncapi.yml").api
    before = row_counts()
    # Letter case does not make another API: a consumer would see two "RPC Server Example"s.
    document = (
        (SHARED_ASYNCAPI / "spec_rpc-server-asyncapi.yml")
        .read_text()
        .replace("title: RPC Server Example", "title: rpc server EXAMPLE")
    )
    with pytest.raises(DuplicateAPIError) as caught:
        api_import(provider=alice, content=document, filename="rpc.yml")
    error = caught.value
    assert (error.pointer, error.line, error.filename, error.existing) == (
        "/info/title",
        4,
        "rpc.yml",
        existing,
    )
    assert "you already have an API called “RPC Server Example” (slug rpc-server-example)" in error.message
    assert "new version" in error.message
    assert row_counts() == before
    # Importing it as a new version of the existing API is the way.
    newer = document.replace("version: 1.0.0", "version: 1.1.0", 1)
    assert api_import(provider=alice, content=newer, filename="rpc.yml", api=existing).api == existing


def test_a_retired_apis_title_may_be_imported_again(alice):
    old = import_shared(alice, "spec_rpc-server-asyncapi.yml").api
    old.status = API.Status.RETIRED
    old.save()
    assert import_shared(alice, "spec_rpc-server-asyncapi.yml").api.slug == "rpc-server-example-2"


def test_a_retired_api_takes_no_new_version(alice):
    api = import_shared(alice, "spec_rpc-server-asyncapi.yml").api
    api.status = API.Status.RETIRED
    api.save()
    before = row_counts()
    document = (SHARED_ASYNCAPI / "spec_rpc-server-asyncapi.yml").read_text().replace("1.0.0", "2.0.0", 1)
    with pytest.raises(AsyncAPIError) as caught:
        api_import(provider=alice, content=document, filename="rpc.yml", api=api)
    assert "RPC Server Example is retired and takes no new versions" in caught.value.message
    assert row_counts() == before


def test_import_page_refuses_a_duplicate_title_and_links_to_a_new_version(client, alice):
    existing = import_shared(alice, "spec_rpc-server-asyncapi.yml").api
    client.force_login(alice)
    document = (SHARED_ASYNCAPI / "spec_rpc-server-asyncapi.yml").read_text()
    response = client.post("/provider/apis/import/", {"content": document})
    page = response.content.decode()
    assert response.status_code == 200 and API.objects.count() == 1
    assert "you already have an API called “RPC Server Example”" in page
    assert f'href="/provider/apis/import/?api={existing.slug}"' in page
    assert "Import it as a new version of RPC Server Example" in page


def test_import_page_of_a_retired_api_says_it_takes_no_versions(client, alice):
    api = import_shared(alice, "spec_rpc-server-asyncapi.yml").api
    api.status = API.Status.RETIRED
    api.save()
    client.force_login(alice)
    page = client.get(f"/provider/apis/import/?api={api.slug}").content.decode()
    assert "RPC Server Example is retired and takes no new versions." in page
    assert 'enctype="multipart/form-data"' not in page  # no form to fill in for nothing
    document = (SHARED_ASYNCAPI / "spec_rpc-server-asyncapi.yml").read_text().replace("1.0.0", "2.0.0", 1)
    page = client.post(f"/provider/apis/import/?api={api.slug}", {"content": document}).content.decode()
    assert "is retired and takes no new versions" in page
    assert api.versions.count() == 1
    assert "Import a new version" not in client.get(f"/provider/apis/{api.slug}/").content.decode()


def _tagged(version: str, tag: str, protocol: str) -> str:
    return (
        f"asyncapi: 3.0.0\ninfo:\n  title: Radar\n  version: {version}\n  tags: [{{name: {tag}}}]\n"
        f"servers:\n  main: {{host: radar.example.org, protocol: {protocol}}}\n"
        "channels:\n  blips: {address: blips}\n"
    )


def test_a_draft_version_does_not_change_the_catalogs_tags_and_protocols(client, alice):
    first = api_import(provider=alice, content=_tagged("1.0.0", "weather", "ws"), filename="radar.yaml")
    api = first.api
    assert (api.tags, api.protocols) == (["weather"], ["ws"])  # nothing live yet: the draft's
    api_publish(api_version=first, actor=alice)

    draft = api_import(
        provider=alice, content=_tagged("2.0.0", "secret", "mqtt"), filename="radar.yaml", api=api
    )
    api.refresh_from_db()
    assert (api.tags, api.protocols) == (["weather"], ["ws"])
    assert client.get("/api/v1/apis/?tag=secret").json() == []
    assert "secret" not in client.get("/apis/radar/").content.decode()

    api_publish(api_version=draft, actor=alice)
    api.refresh_from_db()
    assert (api.tags, api.protocols) == (["secret"], ["mqtt"])
    assert [a["slug"] for a in client.get("/api/v1/apis/?tag=secret").json()] == ["radar"]


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


# --- hostile and careless documents: refused with a place, never a 500, nothing stored ---------


def nested_schemas_document(*, channels: int, depth: int = 8, width: int = 10) -> str:
    """A few KB of YAML: every channel's payload is schema S1, whose `width` properties are each
    S2, and so on `depth` levels down; copied blindly that is width**depth values per payload."""
    lines = ["asyncapi: 2.6.0", "info: {title: Nested, version: '1'}", "channels:"]
    for index in range(channels):
        lines += [f"  c{index}:", "    subscribe:", "      message:"]
        lines += ["        payload: {$ref: '#/components/schemas/S1'}"]
    lines += ["components:", "  schemas:"]
    for level in range(1, depth + 1):
        lines += [f"    S{level}:", "      type: object", "      properties:"]
        leaf = "{type: string, description: a leaf field}"
        inner = leaf if level == depth else f"{{$ref: '#/components/schemas/S{level + 1}'}}"
        lines += [f"        p{name}: {inner}" for name in range(width)]
    return "\n".join(lines) + "\n"


def stored_messages_bytes(version: APIVersion) -> int:
    operations = Operation.objects.filter(channel__api_version=version)
    return sum(len(json.dumps(operation.messages)) for operation in operations)


def test_shared_schemas_share_one_expansion_budget_per_document(alice, client):
    document = nested_schemas_document(channels=20)
    assert len(document) < 8_000
    version = api_import(provider=alice, content=document, filename="nested.yaml")
    # Once 22 MB; now the budget for the whole document plus the references kept after it.
    assert stored_messages_bytes(version) < EXPANSION_BUDGET_BYTES + 100_000
    first = version.channels.get(key="c0").operations.get().messages[0]["payload"]
    assert first["properties"]["p0"]["properties"]["p0"]["type"] == "object"
    # The schema was expanded once; later channels keep it as the reference they wrote.
    last = version.channels.get(key="c19").operations.get().messages[0]["payload"]
    assert last == {"$ref": "#/components/schemas/S1", "x-truncated": True}
    api_publish(api_version=version)
    page = client.get(f"/apis/{version.api.slug}/")
    assert page.status_code == 200
    assert len(page.content) < 8_000_000  # was 149 MB


def fan_out_document(*, messages: int, operations: int, summary: str = "A reading.") -> str:
    """One 3.0 channel of ``messages`` messages and ``operations`` operations on it that list no
    messages, so each carries all of them: ``messages * operations`` in all."""
    lines = ["asyncapi: 3.0.0", "info: {title: Fan-out, version: '1'}", "channels:", "  readings:"]
    lines += ["    messages:"]
    lines += [f"      m{n}: {{summary: '{summary}', payload: {{type: string}}}}" for n in range(messages)]
    lines += ["operations:"]
    lines += [
        f"  o{n}: {{action: send, channel: {{$ref: '#/channels/readings'}}}}" for n in range(operations)
    ]
    return "\n".join(lines) + "\n"


def test_payloads_expanding_past_the_document_limit_are_refused_naming_where(alice):
    # 40 messages of 6 KB, each carried by each of 50 operations: 2,000 messages, 12 MB.
    document = fan_out_document(messages=40, operations=50, summary="A reading. " * 550)
    assert len(document) < 300_000
    before = row_counts()
    with pytest.raises(DocumentTooLargeError) as caught:
        api_import(provider=alice, content=document, filename="fan-out.yaml")
    assert caught.value.pointer.startswith("/channels/readings/messages/m")
    assert caught.value.line is not None
    assert f"more than {MAX_EXPANDED_BYTES // (1024 * 1024)} MB" in caught.value.message
    assert row_counts() == before


def test_operations_carrying_more_than_2000_messages_are_refused_at_the_operation(alice, client):
    # 230 operations × all 230 messages of their channel: 52,900 messages from 43 KB, which
    # once rendered a 79 MB API page. The ninth operation (o8) takes the count past 2,000.
    document = fan_out_document(messages=230, operations=230)
    assert len(document) < 50_000
    before = row_counts()
    with pytest.raises(DocumentTooLargeError) as caught:
        api_import(provider=alice, content=document, filename="fan-out.yaml")
    assert caught.value.pointer == "/operations/o8"
    assert caught.value.line == 245  # o0 is on line 237, after the 230 messages
    assert 'operation "o8" lists no "messages", so it carries all 230 messages' in caught.value.message
    assert f"at most {MAX_MESSAGES:,} per document" in caught.value.message
    assert row_counts() == before
    response = client.post(
        "/api/v1/apis/import",
        json.dumps({"filename": "fan-out.yaml", "content": document}),
        content_type="application/json",
        HTTP_AUTHORIZATION="Basic " + base64.b64encode(b"alice@example.com:correct horse battery").decode(),
    )
    assert response.status_code == 413
    assert response.json()["pointer"] == "/operations/o8"
    assert row_counts() == before


def test_operations_listing_more_than_2000_messages_are_refused_at_their_messages(alice):
    lines = ["asyncapi: 3.0.0", "info: {title: Listed, version: '1'}", "channels:", "  readings:"]
    lines += ["    messages:", "      m: {payload: {type: string}}", "operations:"]
    refs = ", ".join(["{$ref: '#/channels/readings/messages/m'}"] * 700)
    lines += [
        f"  o{n}: {{action: send, channel: {{$ref: '#/channels/readings'}}, messages: [{refs}]}}"
        for n in range(3)
    ]
    with pytest.raises(DocumentTooLargeError) as caught:
        api_import(provider=alice, content="\n".join(lines) + "\n", filename="listed.yaml")
    assert caught.value.pointer == "/operations/o2/messages"
    assert caught.value.line == 10
    assert 'operation "o2" lists 700 messages' in caught.value.message


def test_a_document_with_2000_messages_imports(alice):
    version = api_import(
        provider=alice, content=fan_out_document(messages=200, operations=10), filename="fan-out.yaml"
    )
    assert (
        sum(len(operation.messages) for operation in Operation.objects.filter(channel__api_version=version))
        == 2000
    )


def test_yaml_aliases_cannot_expand_into_huge_data(alice):
    levels = ["  x-a: &a " + "x" * 10_000]
    for name, below in zip("bcd", "abc", strict=True):
        levels.append(f"  x-{name}: &{name} [{', '.join([f'*{below}'] * 10)}]")
    levels.append(f"  x-e: [{', '.join(['*d'] * 10)}]")  # 10,000 copies: 100 MB from 11 KB
    document = "asyncapi: 3.0.0\ninfo:\n  title: Laughs\n  version: '1'\n" + "\n".join(levels) + "\n"
    with pytest.raises(DocumentTooLargeError) as caught:
        api_import(provider=alice, content=document, filename="laughs.yaml")
    assert "YAML aliases" in caught.value.message
    assert caught.value.pointer.startswith("/info/x-")
    assert caught.value.line in (5, 6, 7, 8, 9)


def test_references_nested_past_200_levels_are_kept_as_references(alice, client):
    schemas = [
        f"    S{n}: {{type: object, properties: {{next: {{$ref: '#/components/schemas/S{n + 1}'}}}}}}"
        for n in range(300)
    ]
    document = (
        "asyncapi: 2.6.0\ninfo: {title: Chain, version: '1'}\nchannels:\n  c:\n    subscribe:\n"
        "      message: {payload: {$ref: '#/components/schemas/S0'}}\ncomponents:\n  schemas:\n"
        + "\n".join(schemas)
        + "\n    S300: {type: string}\n"
    )
    version = api_import(provider=alice, content=document, filename="chain.yaml")
    node, levels = version.channels.get().operations.get().messages[0]["payload"], 0
    while "properties" in node:
        node, levels = node["properties"]["next"], levels + 1
    assert node == {"$ref": f"#/components/schemas/S{levels}", "x-truncated": True}
    assert 50 < levels < 100
    # Pages and JSON encoders recurse per level; the kept reference keeps them within bounds.
    api_publish(api_version=version)
    assert client.get(f"/apis/{version.api.slug}/").status_code == 200


V26 = "asyncapi: 2.6.0\ninfo:\n  title: T\n  version: '1'\n"
V30 = "asyncapi: 3.0.0\ninfo:\n  title: T\n  version: '1'\n"
V30_OPERATION = "operations:\n  o:\n    action: send\n    channel: {$ref: '#/channels/c'}\n"


@pytest.mark.parametrize(
    ("document", "pointer", "line", "fragment"),
    [
        (
            V26 + "channels:\n  c:\n    subscribe:\n      message:\n        $ref: '#/info/title'\n",
            "/channels/c/subscribe/message/$ref",
            9,
            'points to a string ("T"), but a Message Object',
        ),
        (
            V26 + "tags: [{name: a}]\nchannels:\n  c:\n    subscribe:\n      message: {$ref: '#/tags'}\n",
            "/channels/c/subscribe/message/$ref",
            9,
            "points to a list, but a Message Object",
        ),
        (
            V26 + "channels:\n  c/{x}:\n    parameters:\n      x:\n        schema: {$ref: '#/info/title'}\n",
            "/channels/c~1{x}/parameters/x/schema/$ref",
            9,
            'points to a string ("T"), not to a schema',
        ),
        (
            V26 + "channels:\n  c:\n    subscribe:\n      traits: [{$ref: '#/info/version'}]\n",
            "/channels/c/subscribe/traits/0/$ref",
            8,
            "but a trait (a mapping)",
        ),
        (
            V30 + "channels:\n  c:\n    address: c/{x}\n    parameters:\n      x: {$ref: '#/info/title'}\n",
            "/channels/c/parameters/x/$ref",
            9,
            "but a Parameter Object (a mapping)",
        ),
        (
            V30
            + "channels:\n  c:\n    address: c/{x}\n    parameters:\n"
            + "      x: {$ref: '#/components/schemas/S/properties'}\n"
            + "components:\n  schemas:\n    S:\n      properties:\n        enum: {type: string}\n",
            "/channels/c/parameters/x/enum",
            9,
            '"enum" must be a list, found a mapping',
        ),
        (
            V30 + "channels:\n  c:\n    bindings: {$ref: '#/info/title'}\n",
            "/channels/c/bindings/$ref",
            7,
            "but a Channel Bindings Object",
        ),
        (
            V30 + "channels:\n  c:\n    address: c\noperations:\n  o: {$ref: '#/info'}\n",
            "/operations/o/action",
            9,
            '"action" must be "send" or "receive"',
        ),
        (
            V30
            + "channels:\n  c:\n    messages:\n      m:\n        payload: {$ref: '#/info/title'}\n"
            + V30_OPERATION,
            "/channels/c/messages/m/payload/$ref",
            9,
            "not to a schema",
        ),
    ],
)
def test_references_to_the_wrong_kind_of_value_are_refused_at_the_reference(
    alice, document, pointer, line, fragment
):
    before = row_counts()
    with pytest.raises(AsyncAPIError) as caught:
        api_import(provider=alice, content=document, filename="refs.yaml")
    assert (caught.value.pointer, caught.value.line) == (pointer, line)
    assert fragment in caught.value.message
    assert row_counts() == before


def test_stored_parameters_are_always_mappings(alice):
    document = V26 + (
        "channels:\n  c/{x}/{y}:\n    parameters:\n      x: {$ref: '#/components/parameters/x'}\n"
        "      y: {schema: true}\n    subscribe: {message: {payload: {type: string}}}\n"
        "components:\n  parameters:\n    x: {schema: {$ref: '#/components/schemas/Id'}}\n"
        "  schemas:\n    Id: {type: string, enum: [a1, b2]}\n"
    )
    channel = api_import(provider=alice, content=document, filename="params.yaml").channels.get()
    assert channel.parameters == {
        "x": {"schema": {"type": "string", "enum": ["a1", "b2"]}},
        "y": {"schema": {}},
    }
    assert channel.example_address() == "c/a1/{y}"


@pytest.mark.parametrize(
    ("content", "line"),
    [
        (V30.replace("  version", "  x-big: 1e999\n  version"), 4),
        (V30.replace("  version", "  x-big: -1e999\n  version"), 4),
        ('{"asyncapi": "3.0.0",\n "info": {"title": "T", "version": "1",\n "x-big": 1e999}}', 3),
        (
            '{"asyncapi": "3.0.0",\n "info": {"title": "T", "version": "1",\n "x-big": 1'
            + "0" * 400
            + ".5}}",
            3,
        ),
    ],
)
def test_numbers_beyond_json_range_are_refused_with_pointer_and_line(alice, content, line):
    before = row_counts()
    with pytest.raises(AsyncAPIError) as caught:
        api_import(provider=alice, content=content, filename="big.json")
    assert (caught.value.pointer, caught.value.line) == ("/info/x-big", line)
    assert "beyond the range of JSON numbers" in caught.value.message
    assert row_counts() == before


@pytest.mark.parametrize(
    ("content", "pointer", "line", "fragment"),
    [
        (
            '{"asyncapi": "3.0.0",\n "info": {"title": "a",\n  "title": "b", "version": "1"}}',
            "/info/title",
            3,
            'duplicate key "title"',
        ),
        (
            '{"asyncapi": "3.0.0", "info": {"title": "a\\ud800", "version": "1"}}',
            "/info/title",
            1,
            "lone UTF-16 surrogate",
        ),
        (
            '{"asyncapi": "3.0.0",\n "info": {"title": "a\\u0000", "version": "1"}}',
            "/info/title",
            2,
            "U+0000",
        ),
    ],
)
def test_json_values_that_cannot_be_stored_are_refused_with_pointer_and_line(
    alice, content, pointer, line, fragment
):
    before = row_counts()
    with pytest.raises(AsyncAPIError) as caught:
        api_import(provider=alice, content=content, filename="api.json")
    assert (caught.value.pointer, caught.value.line) == (pointer, line)
    assert fragment in caught.value.message
    assert row_counts() == before


@pytest.mark.parametrize(
    "version", ["1.0/../../x", "", " ", ".", "..", "1.0 beta", "1.0\t", "1\u0007", "1?x", "1#x", "1%2F2"]
)
def test_versions_unusable_in_gateway_urls_are_refused(alice, version):
    document = V30.replace("version: '1'", f"version: {json.dumps(version)}")
    before = row_counts()
    with pytest.raises(AsyncAPIError) as caught:
        api_import(provider=alice, content=document, filename="v.yaml")
    assert (caught.value.pointer, caught.value.line) == ("/info/version", 4)
    assert "gateway URLs" in caught.value.message
    assert row_counts() == before


@pytest.mark.parametrize("version", ["2024-01-01", "v1.0.0-rc.1+build.5", "1.0_β"])
def test_unusual_but_usable_versions_import(alice, version):
    document = V30.replace("version: '1'", f"version: {json.dumps(version)}")
    assert api_import(provider=alice, content=document, filename="v.yaml").version == version


@pytest.mark.parametrize(
    "content",
    [b"#" * (MAX_DOCUMENT_BYTES + 1), "é" * (MAX_DOCUMENT_BYTES // 2 + 1)],
    ids=["bytes", "text-counted-as-utf8"],
)
def test_documents_over_the_size_limit_are_refused(alice, content):
    with pytest.raises(DocumentTooLargeError) as caught:
        api_import(provider=alice, content=content, filename="huge.yaml")
    assert f"larger than the {MAX_DOCUMENT_BYTES // (1024 * 1024)} MB" in caught.value.message
    assert caught.value.filename == "huge.yaml"


def test_file_names_are_stored_without_characters_the_database_refuses(alice):
    # A multipart file name or a direct call may carry NUL or a lone surrogate; PostgreSQL
    # refuses both (a DataError or UnicodeEncodeError, a 500, before).
    version = api_import(provider=alice, content=RECURSIVE, filename="org\x00\ud800.yaml")
    assert version.source_filename == "org.yaml"


def test_a_document_with_700_channels_imports_completely(alice):
    """Speed is measured by `manage.py bench_import`, not asserted here."""
    document = fleet_document(700)
    assert len(document.encode()) > 500_000
    version = api_import(provider=alice, content=document, filename="fleet.yaml")
    assert version.channels.count() == 700
    assert Operation.objects.filter(channel__api_version=version).count() == 700
    last = version.channels.get(key="vehicle699").operations.get().messages[0]["payload"]
    assert last["properties"]["header"]["properties"]["field9"]["type"] == "string"


# --- servers, security schemes, tags, protocols, bindings, examples ------------------------------


def test_streetlights_26_server_url_is_split_and_security_requirements_kept(alice):
    version = import_shared(alice, "spec_streetlights-mqtt.yml")
    server = version.servers["production"]
    assert (server["host"], server["pathname"], server["protocol"]) == (
        "test.mosquitto.org:{port}",
        "",
        "mqtt",
    )
    assert server["description"] == "Test broker"
    assert server["variables"]["port"]["enum"] == ["1883", "8883"]
    assert server["security"] == [
        {"apiKey": []},
        {"supportedOauthFlows": ["streetlights:on", "streetlights:off", "streetlights:dim"]},
        {"openIdConnectWellKnown": []},
    ]
    assert sorted(version.security_schemes) == ["apiKey", "openIdConnectWellKnown", "supportedOauthFlows"]
    assert version.security_schemes["apiKey"]["type"] == "apiKey"
    assert version.security_schemes["supportedOauthFlows"]["flows"]["implicit"]["authorizationUrl"]
    assert version.protocols == ["mqtt"]
    assert version.api.protocols == ["mqtt"]
    turn_on = version.channels.get(key__endswith="turn/on").operations.get()
    assert turn_on.bindings == {"mqtt": {"qos": 1}}


def test_gemini_31_server_host_and_message_examples(alice):
    version = import_shared(alice, "spec_websocket-gemini-asyncapi.yml")
    assert version.servers["public"]["host"] == "api.gemini.com"
    assert version.servers["public"]["protocol"] == "wss"
    assert version.api.protocols == ["wss"]
    [message] = version.channels.get().operations.get().messages
    assert len(message["examples"]) == 2
    assert {"name", "summary", "payload"} <= set(message["examples"][0])
    assert [example["payload"]["type"] for example in message["examples"]] == ["update", "heartbeat"]


def test_supermq_26_ws_bindings_tags_and_bearer_scheme(alice):
    version = import_shared(alice, "supermq_websocket.yaml")
    assert version.servers["dev"]["host"] == "{host}:{port}"
    assert version.protocols == ["ws"]
    assert version.tags == [{"name": "WebSocket", "description": ""}]
    assert version.api.tags == ["WebSocket"]
    assert version.security_schemes["bearerAuth"]["scheme"] == "bearer"
    operation = Operation.objects.get(channel__api_version=version, key="publishToChannel")
    assert operation.bindings["ws"]["method"] == "POST"


def test_slack_20_root_tags_and_two_https_servers(alice):
    version = import_shared(alice, SLACK)
    assert [tag["name"] for tag in version.tags] == [
        "app_event",
        "permissions_api",
        "allows_user_tokens",
        "allows_workspace_tokens",
    ]
    console = version.servers["app-management-console"]
    assert (console["host"], console["pathname"]) == (
        "api.slack.com",
        "/apps/{slack_app_id}/event-subscriptions",
    )
    assert version.servers["default"]["host"] == "{request_url}"
    assert version.protocols == ["https"]


def test_rpc_31_amqp_server_and_operation_binding(alice):
    version = import_shared(alice, "spec_rpc-server-asyncapi.yml")
    assert version.servers == {
        "production": {
            "host": "rabbitmq.example.org",
            "protocol": "amqp",
            "protocol_version": "",
            "pathname": "",
            "description": "",
            "variables": {},
            "security": [],
            "bindings": {},
        }
    }
    assert Operation.objects.get(channel__api_version=version, key="sendSumResult").bindings == {
        "amqp": {"ack": True}
    }


def test_product_apim_20_message_examples_and_operation_bindings(alice):
    version = import_shared(alice, "product-apim_APIMaintenance.yml")
    operation = Operation.objects.get(channel__api_version=version, key="publishStatus")
    assert operation.bindings["mqtt"]["retain"] is False
    assert len(operation.messages[0]["examples"]) == 2
    assert version.servers == {} and version.protocols == [] and version.api.protocols == []


V3_SECURITY_AND_WS = """
asyncapi: 3.0.0
info:
  title: Ticker
  version: 1.0.0
  tags:
    - {name: prices, description: Market prices}
    - $ref: '#/components/tags/live'
servers:
  edge:
    host: ws.example.com:443
    pathname: /v1
    protocol: WSS
    protocolVersion: '13'
    security:
      - $ref: '#/components/securitySchemes/token'
      - type: httpApiKey
        name: key
        in: query
    bindings:
      ws: {bindingVersion: 0.1.0}
channels:
  ticks:
    address: ticks/{symbol}
    parameters:
      symbol: {enum: [btc, eth]}
    bindings:
      ws: {query: {type: object, properties: {depth: {type: integer}}}}
    messages:
      tick:
        payload: {type: object, properties: {price: {type: number}}}
        bindings:
          ws: {bindingVersion: 0.1.0}
        examples:
          - name: cheap
            summary: A cheap coin
            payload: {price: 1.5}
operations:
  sendTick:
    action: send
    channel: {$ref: '#/channels/ticks'}
    bindings:
      ws: {bindingVersion: 0.1.0}
components:
  tags:
    live: {name: live}
  securitySchemes:
    token:
      type: http
      scheme: bearer
"""


def test_31_servers_security_tags_and_ws_bindings_of_every_level(alice):
    version = api_import(provider=alice, content=V3_SECURITY_AND_WS, filename="ticker.yaml")
    server = version.servers["edge"]
    assert (server["host"], server["pathname"], server["protocol"], server["protocol_version"]) == (
        "ws.example.com:443",
        "/v1",
        "wss",
        "13",
    )
    # A reference names its scheme; an inline scheme gets a name and joins the schemes.
    assert server["security"] == [{"token": []}, {"edge-1": []}]
    assert version.security_schemes["token"] == {"type": "http", "scheme": "bearer"}
    assert version.security_schemes["edge-1"]["in"] == "query"
    assert server["bindings"] == {"ws": {"bindingVersion": "0.1.0"}}
    assert version.tags == [
        {"name": "prices", "description": "Market prices"},
        {"name": "live", "description": ""},
    ]
    assert (version.api.tags, version.api.protocols) == (["prices", "live"], ["wss"])
    channel = version.channels.get()
    assert channel.bindings["ws"]["query"]["properties"]["depth"] == {"type": "integer"}
    operation = channel.operations.get()
    assert operation.bindings == {"ws": {"bindingVersion": "0.1.0"}}
    [message] = operation.messages
    assert message["bindings"] == {"ws": {"bindingVersion": "0.1.0"}}
    assert message["examples"] == [{"name": "cheap", "summary": "A cheap coin", "payload": {"price": 1.5}}]


def test_api_tags_and_protocols_follow_the_newest_imported_version(alice):
    version = api_import(provider=alice, content=V3_SECURITY_AND_WS, filename="ticker.yaml")
    newer = V3_SECURITY_AND_WS.replace("version: 1.0.0", "version: 2.0.0").replace(
        "protocol: WSS", "protocol: ws"
    )
    newer = newer.replace("name: prices", "name: quotes")
    api_import(provider=alice, content=newer, filename="ticker2.yaml", api=version.api)
    version.api.refresh_from_db()
    assert (version.api.tags, version.api.protocols) == (["quotes", "live"], ["ws"])
    version.refresh_from_db()
    assert version.protocols == ["wss"]


RECURSIVE_V2 = """
asyncapi: 2.6.0
info: {title: Tree, version: 1.0.0}
channels:
  nodes:
    subscribe:
      operationId: onNode
      message:
        payload: {$ref: '#/components/schemas/Node'}
components:
  schemas:
    Node:
      type: object
      properties:
        label: {type: string}
        children:
          type: array
          items: {$ref: '#/components/schemas/Node'}
"""


def test_recursive_schema_in_26_imports_and_the_stored_document_keeps_the_cycle(alice):
    version = api_import(provider=alice, content=RECURSIVE_V2, filename="tree.yaml")
    payload = version.channels.get().operations.get().messages[0]["payload"]
    assert payload["properties"]["label"] == {"type": "string"}
    assert payload["properties"]["children"]["items"] == {
        "$ref": "#/components/schemas/Node",
        "x-recursive": True,
    }
    node = version.document["components"]["schemas"]["Node"]
    assert node["properties"]["children"]["items"] == {"$ref": "#/components/schemas/Node"}


def test_a_refused_import_of_a_new_version_stores_nothing_and_keeps_the_api_tags(alice):
    version = api_import(provider=alice, content=V3_SECURITY_AND_WS, filename="ticker.yaml")
    before = row_counts()
    broken = V3_SECURITY_AND_WS.replace("version: 1.0.0", "version: 2.0.0").replace(
        "$ref: '#/components/tags/live'", "$ref: '#/components/tags/gone'"
    )
    with pytest.raises(AsyncAPIError) as refused:
        api_import(provider=alice, content=broken, filename="ticker2.yaml", api=version.api)
    assert refused.value.pointer == "/info/tags/1/$ref"
    assert refused.value.line == 8
    assert row_counts() == before
    version.api.refresh_from_db()
    assert version.api.tags == ["prices", "live"]


def test_a_blank_title_is_refused_at_info_title(alice):
    document = V30.replace("title: T", "title: '   '", 1)
    before = row_counts()
    with pytest.raises(AsyncAPIError) as caught:
        api_import(provider=alice, content=document, filename="blank.yaml")
    assert caught.value.pointer == "/info/title"
    assert "blank" in caught.value.message
    assert row_counts() == before
