"""Multi-file AsyncAPI uploads: a .zip of a document and the files its $refs point to, bundled
into one self-contained stored document; root selection, refs escaping the archive, zip bombs."""

from __future__ import annotations

import io
import json
import zipfile

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from portal.asyncapi import AsyncAPIError, DocumentTooLargeError, parse_document
from portal.asyncapi.archive import MAX_ARCHIVE_MEMBERS
from portal.models import API, APIVersion, Channel, Operation
from portal.services.apis import api_import


def make_zip(files: dict[str, str | bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for path, content in files.items():
            archive.writestr(path, content)
    return buffer.getvalue()


def row_counts() -> tuple[int, ...]:
    return tuple(model.objects.count() for model in (API, APIVersion, Channel, Operation))


def external_refs(node) -> list[str]:
    found = []
    stack = [node]
    while stack:
        value = stack.pop()
        if isinstance(value, dict):
            if isinstance(value.get("$ref"), str) and not value["$ref"].startswith("#"):
                found.append(value["$ref"])
            stack.extend(value.values())
        elif isinstance(value, list):
            stack.extend(value)
    return found


ROOT = """asyncapi: 3.0.0
info:
  title: Prices
  version: 1.0.0
channels:
  prices:
    address: prices/{symbol}
    parameters:
      symbol: {$ref: 'common.json#/parameters/symbol'}
    messages:
      tick: {$ref: './messages/tick.yaml'}
      quote:
        payload: {$ref: './schemas/price.yaml#/Price'}
operations:
  sendTick:
    action: send
    channel: {$ref: '#/channels/prices'}
"""
TICK = """name: tick
title: A price tick
payload:
  type: object
  properties:
    price: {$ref: '../schemas/price.yaml#/Price'}
    at: {type: string, format: date-time}
"""
PRICE = """Price:
  type: object
  properties:
    amount: {type: number}
    currency: {$ref: '#/Currency'}
Currency:
  type: string
  enum: [USD, EUR]
"""
COMMON = json.dumps({"parameters": {"symbol": {"enum": ["btc", "eth"], "description": "The coin."}}})
FILES = {
    "asyncapi.yaml": ROOT,
    "messages/tick.yaml": TICK,
    "schemas/price.yaml": PRICE,
    "common.json": COMMON,
}


def test_zip_with_refs_to_other_files_imports_as_one_self_contained_document(alice):
    version = api_import(provider=alice, content=make_zip(FILES), filename="prices.zip")
    channel = version.channels.get()
    assert channel.address == "prices/{symbol}"
    assert channel.parameters["symbol"] == {"enum": ["btc", "eth"], "description": "The coin."}
    operation = channel.operations.get()
    assert (operation.key, operation.action) == ("sendTick", "receive")
    messages = {message["name"]: message for message in operation.messages}
    assert messages["tick"]["title"] == "A price tick"
    # ../schemas/price.yaml from messages/tick.yaml is schemas/price.yaml; #/Currency inside it
    # points into price.yaml, not into the root document.
    price = messages["tick"]["payload"]["properties"]["price"]
    assert price["properties"]["currency"] == {"type": "string", "enum": ["USD", "EUR"]}
    assert messages["quote"]["payload"] == price
    assert version.source == ROOT
    assert version.source_filename == "prices.zip"
    assert version.source_files == {path: text for path, text in FILES.items() if path != "asyncapi.yaml"}
    assert external_refs(version.document) == []


def test_the_bundled_document_validates_and_imports_on_its_own(alice):
    version = api_import(provider=alice, content=make_zip(FILES), filename="prices.zip")
    again = parse_document(content=json.dumps(version.document), filename="bundled.json")
    payload = again.channels[0].operations[0].messages[0]["payload"]
    assert payload["properties"]["price"]["properties"]["currency"]["enum"] == ["USD", "EUR"]


def test_a_zip_is_told_by_its_bytes_not_its_name(alice):
    version = api_import(provider=alice, content=make_zip(FILES), filename="prices.yaml")
    assert version.channels.get().address == "prices/{symbol}"


@pytest.mark.parametrize(
    ("files", "root"),
    [
        ({"api/events.yaml": ROOT.replace("common.json", "../common.json"), "common.json": COMMON}, "api"),
        (
            {"asyncapi.yaml": ROOT, "old/asyncapi.yaml": ROOT.replace("Prices", "Old"), "other.yml": ROOT},
            "top",
        ),
    ],
)
def test_the_root_document_is_the_one_with_asyncapi_preferring_asyncapi_yaml_at_the_top(alice, files, root):
    files = {**FILES, **files} if root == "top" else {**files, **{k: v for k, v in FILES.items() if "/" in k}}
    if root == "api":
        files = {
            path.replace("messages/", "api/messages/").replace("schemas/", "api/schemas/"): text
            for path, text in files.items()
        }
    version = api_import(provider=alice, content=make_zip(files), filename="prices.zip")
    assert version.api.name == "Prices"
    assert version.channels.get().parameters["symbol"]["enum"] == ["btc", "eth"]


def test_several_documents_and_no_asyncapi_yaml_are_refused_listing_them(alice):
    files = {"a.yaml": ROOT, "b/c.yaml": ROOT, **{k: v for k, v in FILES.items() if k != "asyncapi.yaml"}}
    with pytest.raises(AsyncAPIError) as refused:
        api_import(provider=alice, content=make_zip(files), filename="prices.zip")
    assert "2 AsyncAPI documents (a.yaml, b/c.yaml)" in refused.value.message
    assert "name it asyncapi.yaml" in refused.value.message
    assert refused.value.filename == "prices.zip"


def test_a_zip_without_an_asyncapi_document_is_refused_naming_its_files(alice):
    with pytest.raises(AsyncAPIError) as refused:
        api_import(provider=alice, content=make_zip({"schemas/price.yaml": PRICE}), filename="p.zip")
    assert "holds no AsyncAPI document" in refused.value.message
    assert "schemas/price.yaml" in refused.value.message


@pytest.mark.parametrize(
    ("ref", "why"),
    [
        ("../outside.yaml#/Price", "points outside the archive"),
        ("schemas/../../outside.yaml#/Price", "points outside the archive"),
        ("/etc/passwd", "points outside the archive"),
        ("file:///etc/passwd", 'uses the "file:" scheme'),
        ("./schemas/missing.yaml#/Price", 'points to "schemas/missing.yaml", which is not in the archive'),
        ("./schemas/price.yaml#/Nothing", "points to nothing"),
    ],
)
def test_refs_leaving_the_archive_or_missing_are_refused_with_file_line_and_pointer(alice, ref, why):
    files = {**FILES, "asyncapi.yaml": ROOT.replace("./schemas/price.yaml#/Price", ref)}
    before = row_counts()
    with pytest.raises(AsyncAPIError) as refused:
        api_import(provider=alice, content=make_zip(files), filename="prices.zip")
    error = refused.value
    assert why in error.message
    assert (error.filename, error.line) == ("prices.zip:asyncapi.yaml", 13)
    assert error.pointer == "/channels/prices/messages/quote/payload/$ref"
    assert row_counts() == before


def test_errors_inside_another_file_of_the_zip_cite_that_file_its_line_and_pointer(alice):
    files = {
        **FILES,
        "schemas/price.yaml": PRICE.replace("currency: {$ref: '#/Currency'}", "currency: {$ref: '#/Money'}"),
    }
    with pytest.raises(AsyncAPIError) as refused:
        api_import(provider=alice, content=make_zip(files), filename="api.zip")
    error = refused.value
    assert (error.filename, error.line, error.pointer) == (
        "api.zip:schemas/price.yaml",
        5,
        "/Price/properties/currency/$ref",
    )
    assert str(error).startswith("api.zip:schemas/price.yaml, line 5, at /Price/properties/currency/$ref: ")


def test_schema_violations_in_another_file_cite_that_file(alice):
    files = {
        **FILES,
        "messages/tick.yaml": TICK.replace("title: A price tick", "title: A price tick\nflavour: sour"),
    }
    with pytest.raises(AsyncAPIError) as refused:
        api_import(provider=alice, content=make_zip(files), filename="api.zip")
    error = refused.value
    # 3.0 channel messages are "Message Object | Reference Object", so the schema cannot say which.
    assert error.message == "this value matches none of the forms the AsyncAPI 3.0.0 schema allows"
    assert (error.filename, error.line, error.pointer) == ("api.zip:messages/tick.yaml", 1, "")


def test_syntax_errors_in_another_file_cite_that_file_and_line(alice):
    files = {**FILES, "schemas/price.yaml": PRICE.replace("amount: {type: number}", "amount: {type: number")}
    with pytest.raises(AsyncAPIError) as refused:
        api_import(provider=alice, content=make_zip(files), filename="api.zip")
    assert refused.value.filename == "api.zip:schemas/price.yaml"
    assert refused.value.message.startswith("not valid YAML")
    assert refused.value.line in (4, 5)


CYCLE_ROOT = """asyncapi: 2.6.0
info: {title: Org, version: 1.0.0}
channels:
  people:
    subscribe:
      message:
        payload: {$ref: 'person.yaml'}
"""
PERSON = """type: object
properties:
  name: {type: string}
  team: {$ref: 'team.yaml'}
"""
TEAM = """type: object
properties:
  members:
    type: array
    items: {$ref: 'person.yaml'}
"""


def test_a_cycle_through_files_of_the_zip_imports_and_stays_a_cycle_in_the_document(alice):
    files = {"asyncapi.yaml": CYCLE_ROOT, "person.yaml": PERSON, "team.yaml": TEAM}
    version = api_import(provider=alice, content=make_zip(files), filename="org.zip")
    payload = version.channels.get().operations.get().messages[0]["payload"]
    members = payload["properties"]["team"]["properties"]["members"]
    # person.yaml was bundled where it was first referred to; the cycle comes back there.
    home = "#/channels/people/subscribe/message/payload"
    again = members["items"]["properties"]["team"]["properties"]["members"]
    assert again["items"] == {"$ref": home, "x-recursive": True}
    stored = version.document["channels"]["people"]["subscribe"]["message"]["payload"]
    assert stored["properties"]["team"]["properties"]["members"]["items"] == {"$ref": home}
    assert external_refs(version.document) == []


def test_a_single_document_referring_to_another_file_asks_for_a_zip(alice):
    with pytest.raises(AsyncAPIError) as refused:
        api_import(provider=alice, content=ROOT, filename="prices.yaml")
    error = refused.value
    assert "upload a .zip" in error.message
    assert (error.filename, error.line, error.pointer) == (
        "prices.yaml",
        9,
        "/channels/prices/parameters/symbol/$ref",
    )


def test_a_zip_bomb_is_refused_before_it_is_inflated(alice):
    bomb = make_zip({**FILES, "padding.txt": b"\0" * (6 * 1024 * 1024)})
    assert len(bomb) < 100_000
    before = row_counts()
    with pytest.raises(DocumentTooLargeError) as refused:
        api_import(provider=alice, content=bomb, filename="bomb.zip")
    assert "more than 5 MB uncompressed" in refused.value.message
    assert refused.value.filename == "bomb.zip"
    assert row_counts() == before


def test_a_zip_of_too_many_files_is_refused(alice):
    files = {**FILES, **{f"extra/{index}.yaml": "x: 1\n" for index in range(MAX_ARCHIVE_MEMBERS)}}
    with pytest.raises(DocumentTooLargeError) as refused:
        api_import(provider=alice, content=make_zip(files), filename="many.zip")
    assert f"at most {MAX_ARCHIVE_MEMBERS}" in refused.value.message


def test_a_file_twice_in_the_zip_is_refused_rather_than_one_copy_winning(alice):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for path, text in FILES.items():
            archive.writestr(path, text)
        with pytest.warns(UserWarning, match="Duplicate name"):  # zipfile allows it, with a warning
            archive.writestr(next(iter(FILES)), "asyncapi: 3.0.0\n")  # a second copy of the first file
    before = row_counts()
    with pytest.raises(AsyncAPIError) as refused:
        api_import(provider=alice, content=buffer.getvalue(), filename="twice.zip")
    assert f'holds "{next(iter(FILES))}" more than once' in refused.value.message
    assert row_counts() == before


def test_a_damaged_zip_is_refused(alice):
    with pytest.raises(AsyncAPIError) as refused:
        api_import(provider=alice, content=make_zip(FILES)[:200], filename="cut.zip")
    assert "cannot be read" in refused.value.message


def test_import_page_takes_a_zip_and_shows_inner_file_errors(alice, client):
    client.force_login(alice)
    upload = SimpleUploadedFile("prices.zip", make_zip(FILES), content_type="application/zip")
    response = client.post("/provider/apis/import/", {"file": upload})
    assert response.status_code == 302
    version = APIVersion.objects.get(api__provider=alice)
    assert response["Location"] == f"/provider/apis/{version.api.slug}/"
    assert version.source_files["schemas/price.yaml"] == PRICE

    page = client.get("/provider/apis/import/")
    assert ".zip" in page.content.decode()
    broken = {**FILES, "schemas/price.yaml": PRICE.replace("'#/Currency'", "'#/Money'")}
    upload = SimpleUploadedFile("broken.zip", make_zip(broken), content_type="application/zip")
    response = client.post("/provider/apis/import/", {"file": upload})
    assert response.status_code == 200
    html = response.content.decode()
    assert "broken.zip:schemas/price.yaml" in html
    assert "/Price/properties/currency/$ref" in html
    assert APIVersion.objects.count() == 1


def test_rest_import_takes_a_zip_as_multipart(alice, client):
    client.force_login(alice)
    upload = SimpleUploadedFile("prices.zip", make_zip(FILES), content_type="application/zip")
    response = client.post("/api/v1/apis/import", {"file": upload})
    assert response.status_code == 201, response.content
    assert APIVersion.objects.get(api__provider=alice).channels.get().address == "prices/{symbol}"
    bomb = SimpleUploadedFile("bomb.zip", make_zip({**FILES, "pad": b"\0" * (6 * 1024 * 1024)}))
    response = client.post("/api/v1/apis/import", {"file": bomb})
    assert response.status_code == 413
    assert response.json()["file"] == "bomb.zip"
