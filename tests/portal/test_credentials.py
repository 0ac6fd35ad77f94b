"""Credentials of an application (docs/credentials.md): API keys with expiry and rotation, the
OAuth2 consumer key and secret, the token endpoint's scopes, token revocation; through the
services, the portal pages and the REST API, each by its literal URL."""

from __future__ import annotations

import base64
import json
from datetime import date, timedelta

import pytest
from django.core.exceptions import ValidationError
from django.utils import timezone
from oauth2_provider.models import AccessToken

from gateway.credentials import OAUTH_TOKEN, credential_resolve
from portal.models import APIKey, Application
from portal.oauth import SubscriptionScopes, application_scopes
from portal.services.credentials import (
    api_key_create,
    api_key_expiry,
    api_key_revoke,
    api_key_rotate,
    oauth_client_create,
    oauth_client_secret_regenerate,
    oauth_tokens_revoke,
)
from tests.factories import (
    APIFactory,
    APIVersionFactory,
    ApplicationFactory,
    BusinessPlanFactory,
    ChannelFactory,
    OperationFactory,
    SubscriptionFactory,
)
from tests.portal.test_api_rest import basic


@pytest.fixture
def bob_app(bob, ticker_api) -> Application:
    """Bob's application, subscribed (active) to ``ticker`` (prices/{symbol}: receive; orders: send)."""
    version = ticker_api.versions.get()
    orders = ChannelFactory(api_version=version, key="orders", address="/orders", parameters={})
    OperationFactory(channel=orders, key="placeOrder", action="send")
    application = ApplicationFactory(owner=bob, name="Bob's app")
    SubscriptionFactory(application=application, plan=ticker_api.plans.get(name="Free"))
    return application


def _basic_client(client_id: str, secret: str) -> dict[str, str]:
    token = base64.b64encode(f"{client_id}:{secret}".encode()).decode()
    return {"HTTP_AUTHORIZATION": f"Basic {token}"}


def _token(client, oauth_client, secret: str, scope: str | None = None):
    data = {"grant_type": "client_credentials"}
    if scope is not None:
        data["scope"] = scope
    return client.post("/o/token/", data, **_basic_client(oauth_client.client_id, secret))


# --- API keys: expiry -----------------------------------------------------------------------------


def test_key_expiry_choices():
    assert api_key_expiry() is None
    before = timezone.now()
    in_30 = api_key_expiry(days=30)
    assert before + timedelta(days=30) <= in_30 <= timezone.now() + timedelta(days=30)
    now = timezone.now()
    # "Valid until 1 March" works through 1 March: it ends at midnight starting 2 March (UTC).
    day = (now + timedelta(days=10)).date()
    assert api_key_expiry(on=day) == timezone.make_aware(
        timezone.datetime.combine(day + timedelta(days=1), timezone.datetime.min.time())
    )


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"days": 0}, "at least 1 day"),
        ({"on": date(2000, 1, 1)}, "in the future"),
        ({"on": date(9999, 12, 31)}, "within the next 5 years"),
        ({"days": 30, "on": date(2100, 1, 1)}, "not both"),
    ],
)
def test_key_expiry_refuses_what_makes_no_sense(arguments, message):
    with pytest.raises(ValidationError) as refused:
        api_key_expiry(**arguments)
    assert message in str(refused.value.message_dict["expires_at"])


def test_key_created_with_an_expiry_stops_resolving_after_it(bob_app, django_capture_on_commit_callbacks):
    key, secret = api_key_create(application=bob_app, name="ci", expires_at=api_key_expiry(days=30))
    assert key.name == "ci" and key.expires_at > timezone.now() + timedelta(days=29)
    assert credential_resolve(secret).expires_at == pytest.approx(key.expires_at.timestamp())
    with django_capture_on_commit_callbacks(execute=True):  # e.g. an admin ends it now
        key.expires_at = timezone.now() - timedelta(seconds=1)
        key.save()
    assert credential_resolve(secret) is None


# --- API keys: rotation ---------------------------------------------------------------------------


def test_rotation_keeps_both_keys_working_during_the_grace(bob_app, django_capture_on_commit_callbacks):
    old, old_secret = api_key_create(application=bob_app, name="prod", expires_at=api_key_expiry(days=90))
    assert credential_resolve(old_secret) is not None  # cached before the rotation
    with django_capture_on_commit_callbacks(execute=True):
        new, new_secret = api_key_rotate(key=old, grace_seconds=3600)
    old.refresh_from_db()
    assert old.replaced_by == new
    assert new_secret.startswith("eg_") and new_secret[:11] == new.prefix and new.name == "prod"
    assert timedelta(minutes=59) < old.expires_at - timezone.now() <= timedelta(hours=1)
    # The new key gets the old one's 90-day lifetime afresh.
    assert new.expires_at - timezone.now() > timedelta(days=89)
    old_credential = credential_resolve(old_secret)
    assert old_credential is not None and old_credential.expires_at == pytest.approx(
        old.expires_at.timestamp()
    )
    assert credential_resolve(new_secret).id == new.pk


def test_rotation_with_no_grace_ends_the_old_key_at_once(bob_app, django_capture_on_commit_callbacks):
    old, old_secret = api_key_create(application=bob_app)
    assert credential_resolve(old_secret) is not None
    with django_capture_on_commit_callbacks(execute=True):
        new, new_secret = api_key_rotate(key=old, grace_seconds=0)
    assert credential_resolve(old_secret) is None
    assert credential_resolve(new_secret) is not None
    assert new.expires_at is None  # the old key never expired, nor does its replacement


def test_rotation_never_extends_an_earlier_expiry(bob_app):
    soon = timezone.now() + timedelta(minutes=10)
    old, _ = api_key_create(application=bob_app, expires_at=soon)
    api_key_rotate(key=old, grace_seconds=86400)
    old.refresh_from_db()
    assert old.expires_at == soon


def test_rotated_revoked_and_expired_keys_are_not_rotated(bob_app):
    old, _ = api_key_create(application=bob_app)
    api_key_rotate(key=old)
    with pytest.raises(ValidationError, match="already rotated"):
        api_key_rotate(key=old)
    revoked, _ = api_key_create(application=bob_app)
    api_key_revoke(key=revoked)
    with pytest.raises(ValidationError, match="revoked or expired"):
        api_key_rotate(key=revoked)
    with pytest.raises(ValidationError, match="between 0 seconds and 30 days"):
        api_key_rotate(key=api_key_create(application=bob_app)[0], grace_seconds=31 * 86400)


# --- OAuth2 client and scopes ---------------------------------------------------------------------


def test_scopes_come_from_active_subscriptions_and_live_versions(bob_app, ticker_api):
    draft = APIVersionFactory(api=ticker_api, version="2.0.0", status="draft")
    OperationFactory(channel=ChannelFactory(api_version=draft, key="news", address="news"))
    assert application_scopes(bob_app.pk) == {
        "ticker:receive": "Receive events from every channel of ticker",
        "ticker:receive:prices/{symbol}": "Receive events from prices/{symbol} of ticker",
        "ticker:send": "Send events to every channel of ticker",
        "ticker:send:orders": "Send events to orders of ticker",
    }
    bob_app.subscriptions.update(status="cancelled")
    assert application_scopes(bob_app.pk) == {}


def test_scopes_backend_knows_only_clients_of_applications(bob_app):
    client, _ = oauth_client_create(application=bob_app)
    backend = SubscriptionScopes()
    assert backend.get_default_scopes(application=client) == ["ticker:receive", "ticker:send"]
    assert backend.get_available_scopes(application=None) == []


def test_client_secret_is_stored_hashed_and_a_second_client_is_refused(bob_app):
    client, secret = oauth_client_create(application=bob_app)
    bob_app.refresh_from_db()
    assert bob_app.oauth_client == client
    assert client.client_type == "confidential" and client.authorization_grant_type == "client-credentials"
    assert client.client_secret != secret and secret not in client.client_secret
    with pytest.raises(ValidationError, match="already has a consumer key"):
        oauth_client_create(application=bob_app)


def test_token_without_scope_gets_everything_available(client, bob_app):
    oauth_client, secret = oauth_client_create(application=bob_app)
    response = _token(client, oauth_client, secret)
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["token_type"] == "Bearer" and body["expires_in"] == 3600
    assert body["scope"] == "ticker:receive ticker:send"
    credential = credential_resolve(body["access_token"])
    assert credential.kind == OAUTH_TOKEN and credential.application_id == bob_app.pk
    assert credential.allows(api_slug="ticker", channel="orders", direction="send")


def test_token_for_one_channel_and_direction(client, bob_app):
    oauth_client, secret = oauth_client_create(application=bob_app)
    response = _token(client, oauth_client, secret, scope="ticker:receive:prices/{symbol}")
    assert response.status_code == 200, response.content
    credential = credential_resolve(response.json()["access_token"])
    assert credential.scopes == frozenset({"ticker:receive:prices/{symbol}"})
    assert credential.allows(api_slug="ticker", channel="prices/{symbol}", direction="receive")
    assert not credential.allows(api_slug="ticker", channel="orders", direction="send")


def test_unavailable_scope_is_invalid_scope_naming_it(client, bob_app):
    oauth_client, secret = oauth_client_create(application=bob_app)
    response = _token(client, oauth_client, secret, scope='ticker:receive other:send ticker:send:"x\\')
    assert response.status_code == 400
    body = response.json()
    assert body["error"] == "invalid_scope"  # RFC 6749 §5.2
    assert "other:send, ticker:send:?x?" in body["error_description"]
    assert not AccessToken.objects.exists()


def test_invalid_scope_never_echoes_values_outside_the_grammar(client, bob_app):
    oauth_client, secret = oauth_client_create(application=bob_app)
    response = _token(client, oauth_client, secret, scope=f"{secret} eg_pasted_key")
    assert response.status_code == 400
    description = response.json()["error_description"]
    assert "2 values not of the form <api>:<receive|send>[:<channel>]" in description
    assert secret not in response.content.decode() and "eg_pasted" not in description


@pytest.mark.parametrize(
    "grant_type",
    [
        "urn:ietf:params:oauth:grant-type:device_code",
        "authorization_code",
        "password",
        "refresh_token",
        "implicit",
        "urn:ietf:params:oauth:grant-type:jwt-bearer",
        "x" * 5000,
        "clïent_credentials",
    ],
)
@pytest.mark.parametrize("authenticated", [False, True])
def test_other_grant_types_are_unsupported_grant_type(client, bob_app, grant_type, authenticated):
    """RFC 6749 §5.2: only client credentials; never a 500 (DOT's device code branch raised
    KeyError 'device_code' without authentication)."""
    oauth_client, secret = oauth_client_create(application=bob_app)
    headers = _basic_client(oauth_client.client_id, secret) if authenticated else {}
    response = client.post("/o/token/", {"grant_type": grant_type}, **headers)
    assert response.status_code == 400, response.content
    assert response["Content-Type"] == "application/json" and response["Cache-Control"] == "no-store"
    body = response.json()
    assert body["error"] == "unsupported_grant_type"
    assert "client_credentials" in body["error_description"] and len(body["error_description"]) < 200
    assert not AccessToken.objects.exists()


@pytest.mark.parametrize(
    ("body", "error"),
    [
        ("", "invalid_request"),
        ("grant_type=", "invalid_request"),
        ("scope=ticker%3Areceive", "invalid_request"),
        ("grant_type=client_credentials&grant_type=client_credentials", "invalid_request"),
        ("grant_type=client_credentials&grant_type=password", "invalid_request"),
    ],
)
def test_missing_empty_or_duplicate_grant_type_is_invalid_request(client, bob_app, body, error):
    oauth_client, secret = oauth_client_create(application=bob_app)
    response = client.post(
        "/o/token/",
        body,
        content_type="application/x-www-form-urlencoded",
        **_basic_client(oauth_client.client_id, secret),
    )
    assert response.status_code == 400, response.content
    assert response.json()["error"] == error


@pytest.mark.parametrize(
    "body",
    [
        b"grant_type=client_credentials&scope=" + b"ticker%3Areceive+" * 20000,
        b"grant_type=client_credentials&scope=" + b"a" * 100_000,
        b"grant_type=client_credentials&scope=%FF%FE%00",
        b"grant_type=client_credentials&scope=\xff\xfe",
        b"grant_type=client_credentials&scope=ticker%3Areceive&scope=ticker%3Asend",
        b"grant_type=client_credentials&client_id=%00&client_secret=%00",
        b"grant_type=\xff%00",
        b"\xff\xfe\x00=1",
        b"grant_type=client_credentials&client_id=x&client_id=y",
        b"grant_type=client_credentials&scope=ticker%3Areceive&unknown=%00",
    ],
)
@pytest.mark.parametrize("authenticated", [False, True])
def test_token_endpoint_answers_odd_requests_with_a_4xx(client, bob_app, body, authenticated):
    oauth_client, secret = oauth_client_create(application=bob_app)
    headers = _basic_client(oauth_client.client_id, secret) if authenticated else {}
    response = client.post("/o/token/", body, content_type="application/x-www-form-urlencoded", **headers)
    assert 400 <= response.status_code < 500, response.content
    assert "error" in response.json()
    assert secret not in response.content.decode()


@pytest.mark.parametrize("credentials", ["a\x00b:c", "a%00b:c", "a:\x00", "\x00:"])
def test_nul_in_basic_client_credentials_is_invalid_request(client, bob_app, credentials):
    token = base64.b64encode(credentials.encode()).decode()
    for path, data in (
        ("/o/token/", {"grant_type": "client_credentials"}),
        ("/o/revoke_token/", {"token": "x"}),
    ):
        response = client.post(path, data, HTTP_AUTHORIZATION=f"Basic {token}")
        assert response.status_code == 400, (path, response.content)
        assert response.json()["error"] == "invalid_request"


def test_revocation_with_a_nul_token_is_invalid_request(client, bob_app):
    oauth_client, secret = oauth_client_create(application=bob_app)
    response = client.post(
        "/o/revoke_token/", {"token": "abc\x00"}, **_basic_client(oauth_client.client_id, secret)
    )
    assert response.status_code == 400 and response.json()["error"] == "invalid_request"


def test_application_without_subscriptions_gets_no_scope(client, bob):
    application = ApplicationFactory(owner=bob)
    oauth_client, secret = oauth_client_create(application=application)
    response = _token(client, oauth_client, secret, scope="ticker:receive")
    assert response.status_code == 400
    assert "no active subscription" in response.json()["error_description"]


def test_regenerated_secret_replaces_the_old_one(client, bob_app):
    oauth_client, old_secret = oauth_client_create(application=bob_app)
    token = _token(client, oauth_client, old_secret).json()["access_token"]
    bob_app.refresh_from_db()
    _, new_secret = oauth_client_secret_regenerate(application=bob_app)
    assert _token(client, oauth_client, old_secret).status_code == 401
    assert _token(client, oauth_client, new_secret).status_code == 200
    assert credential_resolve(token) is not None  # issued tokens stay valid
    with pytest.raises(ValidationError, match="no consumer key yet"):
        oauth_client_secret_regenerate(application=ApplicationFactory(owner=bob_app.owner))


def test_revoke_endpoint_revokes_only_the_clients_own_token(client, bob_app, carol, ticker_api):
    oauth_client, secret = oauth_client_create(application=bob_app)
    token = _token(client, oauth_client, secret).json()["access_token"]
    assert credential_resolve(token) is not None  # cached
    other_app = ApplicationFactory(owner=carol)
    SubscriptionFactory(application=other_app, plan=ticker_api.plans.get(name="Free"))
    other_client, other_secret = oauth_client_create(application=other_app)
    response = client.post(
        "/o/revoke_token/", {"token": token}, **_basic_client(other_client.client_id, other_secret)
    )
    assert response.status_code == 200  # RFC 7009 §2.2: no hint whether the token exists
    assert credential_resolve(token) is not None
    response = client.post(
        "/o/revoke_token/", {"token": token}, **_basic_client(oauth_client.client_id, secret)
    )
    assert response.status_code == 200
    assert not AccessToken.objects.filter(application=oauth_client).exists()


def test_revoked_token_is_refused_from_the_cache(client, bob_app, django_capture_on_commit_callbacks):
    oauth_client, secret = oauth_client_create(application=bob_app)
    token = _token(client, oauth_client, secret).json()["access_token"]
    assert credential_resolve(token) is not None
    with django_capture_on_commit_callbacks(execute=True):
        assert oauth_tokens_revoke(application=bob_app) == 1
    assert credential_resolve(token) is None


def test_admin_revoking_a_token_revokes_it(client, bob_app, admin_user, django_capture_on_commit_callbacks):
    oauth_client, secret = oauth_client_create(application=bob_app)
    token = _token(client, oauth_client, secret).json()["access_token"]
    assert credential_resolve(token) is not None
    row = AccessToken.objects.get()
    client.force_login(admin_user)
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(
            "/admin/oauth2_provider/accesstoken/", {"action": "revoke_tokens", "_selected_action": [row.pk]}
        )
    assert response.status_code == 302
    assert not AccessToken.objects.exists()
    assert credential_resolve(token) is None


def test_deleting_the_application_deletes_its_client_and_tokens(client, bob, bob_app):
    oauth_client, secret = oauth_client_create(application=bob_app)
    _token(client, oauth_client, secret)
    bob_app.subscriptions.update(status="cancelled")
    client.force_login(bob)
    assert client.post(f"/apps/{bob_app.pk}/delete/").status_code == 302
    assert not AccessToken.objects.exists()
    assert _token(client, oauth_client, secret).status_code == 401


# --- portal pages ---------------------------------------------------------------------------------


def test_key_generated_with_an_expiry_from_the_page(client, bob, bob_app):
    client.force_login(bob)
    last_day = (timezone.now() + timedelta(days=40)).date()
    response = client.post(
        f"/apps/{bob_app.pk}/keys/", {"name": "ci", "expires": "date", "expires_on": last_day.isoformat()}
    )
    assert response.status_code == 302
    key = bob_app.api_keys.get()
    assert (key.name, key.expires_at.date()) == ("ci", last_day + timedelta(days=1))
    page = client.get(f"/apps/{bob_app.pk}/").content.decode()
    assert f"expires {key.expires_at:%d %b %Y}" in page


def test_key_page_form_errors_are_shown_not_raised(client, bob, bob_app):
    client.force_login(bob)
    response = client.post(f"/apps/{bob_app.pk}/keys/", {"expires": "date"}, follow=True)
    assert "Pick the last day the key should work." in response.content.decode()
    response = client.post(
        f"/apps/{bob_app.pk}/keys/", {"expires": "date", "expires_on": "1999-01-01"}, follow=True
    )
    assert "The expiry must be in the future." in response.content.decode()
    response = client.post(f"/apps/{bob_app.pk}/keys/", {"expires": "forever"}, follow=True)
    assert response.status_code == 200 and "Select a valid choice" in response.content.decode()
    assert not bob_app.api_keys.exists()


def test_rotating_from_the_page_shows_the_new_key_once(client, bob, bob_app):
    client.force_login(bob)
    old, old_secret = api_key_create(application=bob_app)
    response = client.post(
        f"/apps/{bob_app.pk}/keys/{old.pk}/rotate/", {"grace_seconds": "3600"}, follow=True
    )
    page = response.content.decode()
    new = bob_app.api_keys.exclude(pk=old.pk).get()
    assert f"Rotated {old.prefix}… to {new.prefix}…" in page
    assert 'data-testid="api-key-secret"' in page and new.prefix in page
    assert "works until" in page and "ending" in page
    assert old_secret not in page
    # Shown once.
    assert 'data-testid="api-key-secret"' not in client.get(f"/apps/{bob_app.pk}/").content.decode()
    response = client.post(
        f"/apps/{bob_app.pk}/keys/{old.pk}/rotate/", {"grace_seconds": "3600"}, follow=True
    )
    assert "already rotated" in response.content.decode()
    response = client.post(f"/apps/{bob_app.pk}/keys/{new.pk}/rotate/", {"grace_seconds": "12"}, follow=True)
    assert "Select a valid choice" in response.content.decode()


def test_oauth_client_from_the_page_secret_shown_once(client, bob, bob_app):
    client.force_login(bob)
    page = client.get(f"/apps/{bob_app.pk}/").content.decode()
    assert "Create consumer key and secret" in page
    response = client.post(f"/apps/{bob_app.pk}/oauth/", follow=True)
    page = response.content.decode()
    bob_app.refresh_from_db()
    assert bob_app.oauth_client.client_id in page
    assert 'data-testid="client-secret"' in page
    secret = page.split('data-testid="client-secret">')[1].split("<")[0]
    assert _token(client, bob_app.oauth_client, secret).status_code == 200
    page = client.get(f"/apps/{bob_app.pk}/").content.decode()
    assert secret not in page and 'data-testid="client-secret"' not in page
    assert "ticker:receive:prices/{symbol}" in page  # the available scopes
    token = AccessToken.objects.get()
    assert f"#{token.pk}" in page and token.token not in page
    client.post(f"/apps/{bob_app.pk}/oauth/tokens/{token.pk}/revoke/")
    assert not AccessToken.objects.exists()
    response = client.post(f"/apps/{bob_app.pk}/oauth/secret/", follow=True)
    assert 'data-testid="client-secret"' in response.content.decode()


def test_carol_sees_and_touches_none_of_bobs_credentials(client, carol, bob_app):
    key, _ = api_key_create(application=bob_app)
    oauth_client, secret = oauth_client_create(application=bob_app)
    _token(client, oauth_client, secret)
    token = AccessToken.objects.get()
    client.force_login(carol)
    for url in [
        f"/apps/{bob_app.pk}/keys/{key.pk}/rotate/",
        f"/apps/{bob_app.pk}/oauth/",
        f"/apps/{bob_app.pk}/oauth/secret/",
        f"/apps/{bob_app.pk}/oauth/tokens/{token.pk}/revoke/",
        f"/apps/{bob_app.pk}/oauth/tokens/revoke/",
    ]:
        assert client.post(url).status_code == 404, url
    for url in [
        f"/api/v1/applications/{bob_app.pk}/oauth-client",
        f"/api/v1/applications/{bob_app.pk}/oauth-tokens/",
    ]:
        assert client.get(url, **basic(carol)).status_code == 404, url
    for url in [
        f"/api/v1/applications/{bob_app.pk}/keys/{key.pk}/rotate",
        f"/api/v1/applications/{bob_app.pk}/oauth-client/secret",
        f"/api/v1/applications/{bob_app.pk}/oauth-tokens/{token.pk}/revoke",
    ]:
        assert client.post(url, **basic(carol)).status_code == 404, url
    assert AccessToken.objects.exists() and APIKey.objects.get(pk=key.pk).replaced_by is None


# --- REST API -------------------------------------------------------------------------------------


def _post(client, url, body, user):
    return client.post(url, json.dumps(body), content_type="application/json", **basic(user))


def test_rest_key_with_expiry_then_rotation(client, bob, bob_app):
    url = f"/api/v1/applications/{bob_app.pk}/keys/"
    response = _post(client, url, {"name": "ci", "expires_in_days": 90}, bob)
    assert response.status_code == 201, response.content
    created = response.json()
    assert created["key"].startswith("eg_") and created["expires_at"] is not None
    response = _post(client, url, {"expires_in_days": 30, "expires_at": "2100-01-01T00:00:00Z"}, bob)
    assert response.status_code == 400 and "not both" in response.json()["expires_at"][0]
    response = _post(client, url, {"expires_at": "2001-01-01T00:00:00Z"}, bob)
    assert response.status_code == 400 and response.json() == {
        "expires_at": ["The expiry must be in the future."]
    }

    rotate = f"/api/v1/applications/{bob_app.pk}/keys/{created['id']}/rotate"
    response = _post(client, rotate, {"grace_seconds": 600}, bob)
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["key"].startswith("eg_") and body["key"] != created["key"]
    assert body["old_key"]["replaced_by"] == body["new_key"]["id"]
    assert body["new_key"]["prefix"] == body["key"][:11]
    assert credential_resolve(created["key"]) is not None and credential_resolve(body["key"]) is not None
    response = _post(client, rotate, {}, bob)
    assert response.status_code == 400 and "already rotated" in response.json()["non_field_errors"][0]
    response = _post(client, rotate, {"grace_seconds": -1}, bob)
    assert response.status_code == 400


def test_rest_oauth_client_tokens_and_revocation(client, bob, bob_app):
    url = f"/api/v1/applications/{bob_app.pk}/oauth-client"
    assert client.get(url, **basic(bob)).status_code == 404
    response = client.post(url, **basic(bob))
    assert response.status_code == 201, response.content
    created = response.json()
    assert created["token_url"] == "http://testserver/o/token/"
    assert "ticker:send:orders" in created["scopes_available"]
    assert client.post(url, **basic(bob)).status_code == 400
    shown = client.get(url, **basic(bob)).json()
    assert "client_secret" not in shown and shown["client_id"] == created["client_id"]

    bob_app.refresh_from_db()
    token = _token(client, bob_app.oauth_client, created["client_secret"], scope="ticker:send").json()
    tokens = client.get(f"/api/v1/applications/{bob_app.pk}/oauth-tokens/", **basic(bob)).json()
    assert [(t["scopes"]) for t in tokens] == [["ticker:send"]]
    assert token["access_token"] not in json.dumps(tokens)
    revoke = f"/api/v1/applications/{bob_app.pk}/oauth-tokens/{tokens[0]['id']}/revoke"
    assert client.post(revoke, **basic(bob)).status_code == 204
    assert client.post(revoke, **basic(bob)).status_code == 404
    assert credential_resolve(token["access_token"]) is None

    response = client.post(f"{url}/secret", **basic(bob))
    assert response.status_code == 200
    assert response.json()["client_secret"] != created["client_secret"]


# --- the application page's snippets ----------------------------------------------------------------


def _pre(page: str, element_id: str) -> str:
    """The text of ``<pre id=element_id>`` on ``page`` (HTML-unescaped)."""
    import html

    return html.unescape(page.split(f'id="{element_id}">', 1)[1].split("</pre>", 1)[0])


@pytest.mark.parametrize("second_first", [False, True])
def test_oauth_snippets_ask_for_the_scope_of_the_channel_they_connect_to(
    client, bob, bob_app, alice, second_first
):
    """Copying the token snippet and then the connect snippet works (no 4405): both name the
    same API and channel, whichever subscription came first."""
    weather = APIFactory(provider=alice, name="Weather", slug="weather")
    version = APIVersionFactory(api=weather, version="2.0.0")
    OperationFactory(channel=ChannelFactory(api_version=version, key="alerts", address="alerts/{region}"))
    second = SubscriptionFactory(application=bob_app, plan=BusinessPlanFactory(api=weather, name="Free"))
    if second_first:  # the other subscription is the older one
        second.created = timezone.now() - timedelta(days=30)
        second.save()
    oauth_client_create(application=bob_app)
    client.force_login(bob)
    page = client.get(f"/apps/{bob_app.pk}/").content.decode()
    token_snippet, connect_snippet = _pre(page, "snippet-token"), _pre(page, "snippet-oauth-js")
    scope = token_snippet.split('-d "scope=', 1)[1].split('"', 1)[0]
    api_slug, direction, template = scope.split(":", 2)
    url = connect_snippet.split('WebSocket("', 1)[1].split('"', 1)[0]
    assert direction == "receive"
    assert f"/ws/{api_slug}/" in url, (scope, url)
    channel = {"ticker": "prices/{symbol}", "weather": "alerts/{region}"}[api_slug]
    assert template == channel
    # The gateway's own check: a token with this scope may receive the connected channel.
    token = _token(client, bob_app.oauth_client, _regenerated_secret(bob_app), scope=scope)
    assert token.status_code == 200, token.content
    credential = credential_resolve(token.json()["access_token"])
    assert credential.allows(api_slug=api_slug, channel=channel, direction="receive")


def _regenerated_secret(application: Application) -> str:
    _, secret = oauth_client_secret_regenerate(application=application)
    return secret


def test_new_key_javascript_snippet_authenticates_with_the_subprotocol(client, bob, bob_app):
    client.force_login(bob)
    page = client.post(f"/apps/{bob_app.pk}/keys/", follow=True).content.decode()
    snippet = _pre(page, "snippet-js")
    secret = page.split('data-testid="api-key-secret">', 1)[1].split("<", 1)[0]
    assert f'const key = "{secret}";' in snippet
    assert (
        'new WebSocket("ws://127.0.0.1:8000/ws/ticker/1.0.0/prices/ACME", '
        '["eventgate.v1", "eventgate.bearer." + key]);' in snippet
    )
    assert "access_token" not in snippet


def test_unnamed_keys_are_listed_as_default(client, bob, bob_app):
    api_key_create(application=bob_app)
    api_key_create(application=bob_app, name="production")
    client.force_login(bob)
    page = client.get(f"/apps/{bob_app.pk}/").content.decode()
    names = [part.split(">", 1)[1].split("<", 1)[0] for part in page.split('data-testid="key-name"')[1:]]
    assert sorted(names) == ["default", "production"]
