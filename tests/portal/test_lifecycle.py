"""API and version lifecycle: allowed and refused moves, who and when, providers and admins,
the provider page's lifecycle section, and what consumers notice (subscriptions, handshakes)."""

from __future__ import annotations

import itertools

import pytest
from django.core.exceptions import PermissionDenied, ValidationError

from gateway.auth import HandshakeRefused, handshake_authorize
from portal.models import API, APIKey, APILifecycleEvent, APIVersion
from portal.services.apis import api_publish
from portal.services.lifecycle import api_transition, api_version_transition
from portal.services.subscriptions import subscription_create
from tests.factories import (
    APIFactory,
    APIVersionFactory,
    ApplicationFactory,
    SubscriptionFactory,
    UserFactory,
)

API_STATES = [value for value, _ in API.Status.choices]
VERSION_STATES = [value for value, _ in APIVersion.Status.choices]


def _content(response) -> str:
    return response.content.decode()


@pytest.mark.parametrize(("start", "target"), list(itertools.product(API_STATES, API_STATES)))
def test_api_moves_follow_the_lifecycle_table(alice, start, target):
    api = APIFactory(provider=alice, status=start)
    APIVersionFactory(api=api)
    allowed = target in API.TRANSITIONS[start]
    if allowed:
        api_transition(api=api, to_status=target, actor=alice)
        assert api.status == target
    else:
        with pytest.raises(ValidationError) as refused:
            api_transition(api=api, to_status=target, actor=alice)
        assert "allowed moves" in refused.value.message_dict["to_status"][0]
        api.refresh_from_db()
        assert api.status == start
        assert not APILifecycleEvent.objects.exists()


def test_refusal_names_the_allowed_moves(alice):
    api = APIFactory(provider=alice, status=API.Status.DEPRECATED)
    with pytest.raises(ValidationError) as refused:
        api_transition(api=api, to_status="draft", actor=alice)
    assert refused.value.message_dict["to_status"] == [
        f"{api.name} is deprecated and cannot become created (draft); "
        "allowed moves: published, blocked, retired."
    ]


def test_unknown_state_is_refused_by_name(alice):
    api = APIFactory(provider=alice)
    with pytest.raises(ValidationError) as refused:
        api_transition(api=api, to_status="frozen", actor=alice)
    assert "Unknown state “frozen”" in refused.value.message_dict["to_status"][0]


def test_a_draft_api_without_a_published_version_cannot_be_published(alice):
    api = APIFactory(provider=alice, status=API.Status.DRAFT)
    APIVersionFactory(api=api, status=APIVersion.Status.DRAFT)
    with pytest.raises(ValidationError) as refused:
        api_transition(api=api, to_status="published", actor=alice)
    assert "Publish a version" in refused.value.message_dict["to_status"][0]


def test_a_move_records_who_when_and_why(alice):
    api = APIFactory(provider=alice)
    APIVersionFactory(api=api)
    api_transition(api=api, to_status="deprecated", actor=alice, reason="  v2 replaces it ")
    event = APILifecycleEvent.objects.get(api=api)
    assert (event.from_status, event.to_status, event.actor, event.reason, event.api_version) == (
        "published",
        "deprecated",
        alice,
        "v2 replaces it",
        None,
    )
    assert api.status_changed_at == event.at


def test_publishing_a_draft_records_the_version_and_the_api(alice):
    api = APIFactory(provider=alice, status=API.Status.DRAFT)
    version = APIVersionFactory(api=api, status=APIVersion.Status.DRAFT)
    api_publish(api_version=version, actor=alice)
    api.refresh_from_db()
    assert (api.status, version.status) == ("published", "published")
    moves = {(e.api_version_id, e.from_status, e.to_status, e.actor_id) for e in api.lifecycle_events.all()}
    assert moves == {(version.pk, "draft", "published", alice.pk), (None, "draft", "published", alice.pk)}


def test_publishing_a_new_version_keeps_an_admins_block(alice, admin_user):
    api = APIFactory(provider=alice)
    APIVersionFactory(api=api)
    api_transition(api=api, to_status="blocked", actor=admin_user)
    newer = APIVersionFactory(api=api, version="2.0.0", status=APIVersion.Status.DRAFT)
    api_publish(api_version=newer, actor=alice)
    api.refresh_from_db()
    assert (api.status, newer.status) == ("blocked", "published")


def test_a_provider_cannot_move_another_providers_api(alice):
    api = APIFactory(provider=alice)
    other = UserFactory(is_provider=True)
    with pytest.raises(PermissionDenied):
        api_transition(api=api, to_status="retired", actor=other)
    with pytest.raises(PermissionDenied):
        api_version_transition(api_version=APIVersionFactory(api=api), to_status="retired", actor=other)
    api.refresh_from_db()
    assert api.status == "published"


def test_staff_block_any_api_and_only_staff_lift_it(alice, admin_user):
    api = APIFactory(provider=alice)
    APIVersionFactory(api=api)
    api_transition(api=api, to_status="blocked", actor=admin_user, reason="Abuse report")
    with pytest.raises(PermissionDenied, match="only an admin can lift the block"):
        api_transition(api=api, to_status="published", actor=alice)
    api_transition(api=api, to_status="published", actor=admin_user)
    assert api.status == "published"


def test_a_provider_lifts_their_own_block(alice):
    api = APIFactory(provider=alice)
    APIVersionFactory(api=api)
    api_transition(api=api, to_status="blocked", actor=alice)
    api_transition(api=api, to_status="published", actor=alice)
    assert api.status == "published"


@pytest.mark.parametrize(("start", "target"), list(itertools.product(VERSION_STATES, VERSION_STATES)))
def test_version_moves_follow_the_lifecycle_table(alice, start, target):
    api = APIFactory(provider=alice)
    APIVersionFactory(api=api, version="0.9.0")  # another live version, so retiring is allowed
    version = APIVersionFactory(api=api, version="1.0.0", status=start)
    if target in APIVersion.TRANSITIONS[start]:
        api_version_transition(api_version=version, to_status=target, actor=alice)
        assert version.status == target
        assert APILifecycleEvent.objects.get(api_version=version).to_status == target
    else:
        with pytest.raises(ValidationError, match="allowed moves"):
            api_version_transition(api_version=version, to_status=target, actor=alice)


def test_the_last_live_version_of_a_published_api_cannot_be_retired(alice):
    api = APIFactory(provider=alice)
    version = APIVersionFactory(api=api)
    with pytest.raises(ValidationError) as refused:
        api_version_transition(api_version=version, to_status="retired", actor=alice)
    assert "last live version" in refused.value.message_dict["to_status"][0]
    api_transition(api=api, to_status="retired", actor=alice)  # retiring the API is the way


def test_versions_of_a_retired_api_no_longer_change(alice):
    api = APIFactory(provider=alice, status=API.Status.RETIRED)
    version = APIVersionFactory(api=api)
    with pytest.raises(ValidationError, match="is retired"):
        api_version_transition(api_version=version, to_status="deprecated", actor=alice)


def test_deprecated_api_refuses_new_subscriptions_by_name(alice, bob, ticker_api):
    api_transition(api=ticker_api, to_status="deprecated", actor=alice)
    application = ApplicationFactory(owner=bob)
    with pytest.raises(ValidationError) as refused:
        subscription_create(application=application, plan=ticker_api.plans.get(name="Free"))
    assert refused.value.message_dict["plan"] == ["Ticker is deprecated and accepts no new subscriptions."]


def test_deprecated_api_still_serves_live_subscriptions_and_blocked_does_not(alice, bob, ticker_api):
    application = ApplicationFactory(owner=bob)
    SubscriptionFactory(application=application, plan=ticker_api.plans.get(name="Free"))
    _, secret = APIKey.generate(application=application)
    api_transition(api=ticker_api, to_status="deprecated", actor=alice)
    grant = handshake_authorize(secret=secret, api_slug="ticker", version="1.0.0", address="prices/ACME")
    assert grant.api_id == ticker_api.pk
    api_transition(api=ticker_api, to_status="blocked", actor=alice)
    with pytest.raises(HandshakeRefused):
        handshake_authorize(secret=secret, api_slug="ticker", version="1.0.0", address="prices/ACME")


def test_retired_version_refuses_handshakes(alice, bob, ticker_api):
    APIVersionFactory(api=ticker_api, version="2.0.0")
    application = ApplicationFactory(owner=bob)
    SubscriptionFactory(application=application, plan=ticker_api.plans.get(name="Free"))
    _, secret = APIKey.generate(application=application)
    api_version_transition(
        api_version=ticker_api.versions.get(version="1.0.0"), to_status="retired", actor=alice
    )
    with pytest.raises(HandshakeRefused, match="unpublished version"):
        handshake_authorize(secret=secret, api_slug="ticker", version="1.0.0", address="prices/ACME")


# Pages


def test_provider_page_offers_the_allowed_moves_and_shows_the_history(client, alice, ticker_api):
    client.force_login(alice)
    page = _content(client.get("/provider/apis/ticker/"))
    assert (
        'data-move="deprecated"' in page and 'data-move="blocked"' in page and 'data-move="retired"' in page
    )
    assert 'value="draft"' not in page

    response = client.post(
        "/provider/apis/ticker/lifecycle/", {"to_status": "deprecated", "reason": "Use v2"}
    )
    assert response.status_code == 302
    page = _content(client.get("/provider/apis/ticker/"))
    assert "Ticker is now deprecated." in page
    assert "published → deprecated" in page and "alice@example.com" in page and "Use v2" in page
    assert "accepts no new subscriptions" in page


def test_refused_move_on_the_page_is_a_message_naming_the_allowed_moves(client, alice, ticker_api):
    client.force_login(alice)
    response = client.post("/provider/apis/ticker/lifecycle/", {"to_status": "draft"}, follow=True)
    assert "allowed moves: deprecated, blocked, retired." in _content(response)
    ticker_api.refresh_from_db()
    assert ticker_api.status == "published"


def test_provider_page_retires_one_version(client, alice, ticker_api):
    newer = APIVersionFactory(api=ticker_api, version="2.0.0")
    older = ticker_api.versions.get(version="1.0.0")
    client.force_login(alice)
    client.post(f"/provider/apis/ticker/versions/{older.pk}/lifecycle/", {"to_status": "retired"})
    older.refresh_from_db()
    newer.refresh_from_db()
    assert (older.status, newer.status) == ("retired", "published")
    assert "v1.0.0" in _content(client.get("/provider/apis/ticker/"))


def test_another_provider_gets_404_on_lifecycle_pages(client, ticker_api):
    client.force_login(UserFactory(is_provider=True))
    version = ticker_api.versions.get()
    assert client.post("/provider/apis/ticker/lifecycle/", {"to_status": "retired"}).status_code == 404
    response = client.post(
        f"/provider/apis/ticker/versions/{version.pk}/lifecycle/", {"to_status": "retired"}
    )
    assert response.status_code == 404
    ticker_api.refresh_from_db()
    assert ticker_api.status == "published"


def test_admin_blocks_an_api_from_the_staff_page_and_the_provider_sees_why(
    client, admin_user, alice, ticker_api
):
    client.force_login(admin_user)
    assert "Ticker" in _content(client.get("/staff/apis/"))
    client.post("/staff/apis/ticker/lifecycle/", {"to_status": "blocked", "reason": "Abuse report"})
    ticker_api.refresh_from_db()
    assert ticker_api.status == "blocked"
    client.force_login(alice)
    page = _content(client.get("/provider/apis/ticker/"))
    assert "Abuse report" in page and "admin@example.com (admin)" in page
    assert "Blocked" in _content(client.get("/provider/apis/"))


def test_non_staff_cannot_use_the_staff_api_pages(client, alice, ticker_api):
    client.force_login(alice)
    assert client.get("/staff/apis/").status_code == 403
    assert client.post("/staff/apis/ticker/lifecycle/", {"to_status": "blocked"}).status_code == 403
