"""An AsyncAPI document with several schema problems has all of them reported in one go."""

from __future__ import annotations

import io
import zipfile

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from portal.asyncapi import AsyncAPIError
from portal.models import API
from portal.services.apis import api_import
from tests.conftest import SHARED_ASYNCAPI
from tests.portal.test_api_rest import basic

INVALID = "spec-json-schemas_asyncapi.yml"

# Three independent problems: an unknown key (line 5), a wrong enum value (line 15) and a
# schema whose "type" is neither a type name nor a list of them (line 21).
THREE_PROBLEMS = """\
asyncapi: 3.0.0
info:
  title: Three Problems
  version: 1.0.0
  colour: blue
channels:
  lights:
    address: lights
    messages:
      reading:
        payload:
          type: object
operations:
  readLights:
    action: listen
    channel:
      $ref: '#/channels/lights'
components:
  schemas:
    reading:
      type: 12
"""
FIRST = ("/info", 5, 'unknown key "colour" (not allowed by the AsyncAPI 3.0.0 schema)')
SECOND = (
    "/operations/readLights/action",
    15,
    '"listen" is not one of the allowed values: "send", "receive" (the AsyncAPI 3.0.0 schema)',
)
THIRD = (
    "/components/schemas/reading/type",
    21,
    "this value matches none of the forms the AsyncAPI 3.0.0 schema allows",
)


def test_three_schema_problems_are_all_reported_with_pointer_and_line(alice):
    with pytest.raises(AsyncAPIError) as caught:
        api_import(provider=alice, content=THREE_PROBLEMS, filename="three.yaml")
    error = caught.value
    assert (error.pointer, error.line, error.message) == FIRST
    assert str(error) == f"three.yaml, line 5, at /info: {FIRST[2]}"
    assert [(p.pointer, p.line, p.message) for p in error.more] == [SECOND, THIRD]
    assert {p.filename for p in error.problems} == {"three.yaml"}
    assert error.more_omitted == 0
    assert not API.objects.exists()


def test_the_shared_invalid_document_keeps_its_first_error(alice, client):
    content = (SHARED_ASYNCAPI / INVALID).read_text()
    with pytest.raises(AsyncAPIError) as caught:
        api_import(provider=alice, content=content, filename=INVALID)
    error = caught.value
    assert (error.pointer, error.line, error.filename) == ("/info", 6, INVALID)
    assert error.message == 'unknown key "dupa" (not allowed by the AsyncAPI 3.0.0 schema)'

    upload = SimpleUploadedFile(INVALID, content.encode(), content_type="application/yaml")
    response = client.post("/api/v1/apis/import", {"file": upload}, **basic(alice))
    assert response.status_code == 400
    body = response.json()
    first = {"error": error.message, "pointer": "/info", "line": 6, "file": INVALID}
    assert body["errors"][0] == first
    assert {key: body[key] for key in first} == first


def test_import_page_lists_every_problem_under_the_first(client, alice):
    client.force_login(alice)
    response = client.post("/provider/apis/import/", {"content": THREE_PROBLEMS})
    page = response.content.decode()
    assert response.status_code == 200 and not API.objects.exists()
    main, more = page.split('data-testid="import-more-errors"')
    assert "unknown key &quot;colour&quot;" in main
    assert "line 15 · /operations/readLights/action" in more
    assert "&quot;listen&quot; is not one of the allowed values" in more
    assert "line 21 · /components/schemas/reading/type" in more
    assert more.index("line 15") < more.index("line 21")
    assert "more</li>" not in more


def test_rest_import_lists_every_problem_and_keeps_the_top_level_keys(client, alice):
    upload = SimpleUploadedFile("three.yaml", THREE_PROBLEMS.encode(), content_type="application/yaml")
    response = client.post("/api/v1/apis/import", {"file": upload}, **basic(alice))
    assert response.status_code == 400
    body = response.json()
    expected = [
        {"error": message, "pointer": pointer, "line": line, "file": "three.yaml"}
        for pointer, line, message in (FIRST, SECOND, THIRD)
    ]
    assert body == {**expected[0], "errors": expected}


def test_problems_are_capped_at_20_and_the_page_says_how_many_more(client, alice):
    operations = "".join(
        f"  op{n}: {{action: listen, channel: {{$ref: '#/channels/lights'}}}}\n" for n in range(25)
    )
    document = (
        "asyncapi: 3.0.0\ninfo:\n  title: Many\n  version: 1.0.0\n"
        f"channels:\n  lights: {{address: lights}}\noperations:\n{operations}"
    )
    with pytest.raises(AsyncAPIError) as caught:
        api_import(provider=alice, content=document, filename="many.yaml")
    error = caught.value
    assert len(error.problems) == 20 and error.more_omitted == 5
    assert all(p.message.startswith('"listen" is not one of the allowed values') for p in error.problems)
    assert all(p.pointer == f"/operations/op{p.line - 8}/action" for p in error.problems)
    more_lines = [p.line for p in error.more]
    assert more_lines == sorted(more_lines) and error.line not in more_lines

    client.force_login(alice)
    page = client.post("/provider/apis/import/", {"content": document}).content.decode()
    assert page.count("is not one of the allowed values") == 20
    assert "and 5 more" in page

    upload = SimpleUploadedFile("many.yaml", document.encode(), content_type="application/yaml")
    body = client.post("/api/v1/apis/import", {"file": upload}, **basic(alice)).json()
    assert len(body["errors"]) == 20 and body["errors"][0]["line"] == error.line


def test_problems_in_a_zip_name_the_inner_file(client, alice):
    root = THREE_PROBLEMS.replace("reading:\n      type: 12", "reading: {$ref: 'schemas/reading.yaml'}")
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("asyncapi.yaml", root)
        archive.writestr("schemas/reading.yaml", "description: A reading.\ntype: 12\n")
    upload = SimpleUploadedFile("lights.zip", buffer.getvalue(), content_type="application/zip")
    response = client.post("/api/v1/apis/import", {"file": upload}, **basic(alice))
    assert response.status_code == 400
    places = [(p["file"], p["pointer"], p["line"]) for p in response.json()["errors"]]
    assert places == [
        ("lights.zip:asyncapi.yaml", "/info", 5),
        ("lights.zip:asyncapi.yaml", "/operations/readLights/action", 15),
        ("lights.zip:schemas/reading.yaml", "/type", 2),
    ]
