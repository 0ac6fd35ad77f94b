"""Providers turn payload validation of client events on and off per API version, on their API
page and over REST; nobody else can (the gateway side: tests/gateway/test_client_events.py)."""

from __future__ import annotations

import pytest
from rest_framework.test import APIClient


@pytest.fixture
def version(ticker_api):
    return ticker_api.versions.get()


def test_provider_switches_validation_on_and_off_on_the_api_page(client, alice, ticker_api, version):
    client.force_login(alice)
    page = client.get(f"/provider/apis/{ticker_api.slug}/")
    assert 'data-testid="payload-validation"' in page.content.decode()
    url = f"/provider/apis/{ticker_api.slug}/versions/{version.pk}/validation/"
    response = client.post(url, {"enabled": "on"}, follow=True)
    assert "now checked against their payload schemas" in response.content.decode()
    version.refresh_from_db()
    assert version.validate_payloads is True
    client.post(url, {})
    version.refresh_from_db()
    assert version.validate_payloads is False


def test_other_users_cannot_switch_validation(client, bob, ticker_api, version):
    client.force_login(bob)
    url = f"/provider/apis/{ticker_api.slug}/versions/{version.pk}/validation/"
    assert client.post(url, {"enabled": "on"}).status_code in (403, 404)
    rest = APIClient()
    rest.force_authenticate(bob)
    path = f"/api/v1/apis/{ticker_api.slug}/versions/{version.version}/payload-validation"
    assert rest.post(path, {"enabled": True}, format="json").status_code in (403, 404)
    version.refresh_from_db()
    assert version.validate_payloads is False


def test_rest_switch_reports_the_new_state_and_refuses_junk(alice, admin_user, ticker_api, version):
    rest = APIClient()
    rest.force_authenticate(alice)
    path = f"/api/v1/apis/{ticker_api.slug}/versions/{version.version}/payload-validation"
    response = rest.post(path, {"enabled": True}, format="json")
    assert response.status_code == 200, response.content
    assert response.json()["validate_payloads"] is True
    junk = rest.post(path, {"enabled": "perhaps"}, format="json")
    assert junk.status_code == 400 and "enabled" in junk.json()
    rest.force_authenticate(admin_user)
    assert rest.post(path, {"enabled": False}, format="json").json()["validate_payloads"] is False
