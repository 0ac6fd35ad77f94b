"""API and version lifecycle: allowed and refused moves, who and when, providers and admins,
the provider page's lifecycle section, and what consumers notice (subscriptions, handshakes)."""

from __future__ import annotations

import itertools

import pytest
from django.core.exceptions import PermissionDenied, ValidationError
from django.db.models.signals import post_save
from django.template.defaultfilters import date as date_filter

from gateway.auth import HandshakeRefused, handshake_authorize
from portal.models import API, APIKey, APILifecycleEvent, APIVersion, Subscription
from portal.services.apis import api_publish
from portal.services.lifecycle import api_block_details, api_transition, api_version_transition
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


# Unblocking, admin blocks, first publication, retiring with subscriptions


def _block_form(page: str, slug: str = "ticker") -> int:
    """How many API-level lifecycle forms the page has for ``slug``."""
    return page.count(f'action="/provider/apis/{slug}/lifecycle/"')


def test_unblocking_a_deprecated_api_returns_it_to_deprecated(alice, bob, ticker_api):
    api_transition(api=ticker_api, to_status="deprecated", actor=alice)
    api_transition(api=ticker_api, to_status="blocked", actor=alice, reason="Incident")
    block = api_block_details(api=ticker_api)
    assert (block.restores, block.by_admin, block.reason) == ("deprecated", False, "Incident")
    api_transition(api=ticker_api, to_status=block.restores, actor=alice)
    assert ticker_api.status == "deprecated"
    # Still closed to new subscriptions, as before the block.
    with pytest.raises(ValidationError, match="deprecated and accepts no new subscriptions"):
        subscription_create(application=ApplicationFactory(owner=bob), plan=ticker_api.plans.get(name="Free"))


def test_provider_page_offers_one_unblock_back_to_the_state_before_the_block(client, alice, ticker_api):
    api_transition(api=ticker_api, to_status="deprecated", actor=alice)
    api_transition(api=ticker_api, to_status="blocked", actor=alice)
    client.force_login(alice)
    page = _content(client.get("/provider/apis/ticker/"))
    assert page.count(">Unblock</button>") == 1
    assert _block_form(page) == 2  # Unblock and Retire
    assert "active subscriptions are cancelled, pending ones rejected" in page
    assert '<input type="hidden" name="to_status" value="deprecated">' in page
    assert '<input type="hidden" name="to_status" value="published">' not in page
    assert "Unblock Ticker? Connections are accepted again\\u003B it stays deprecated" in page

    client.post("/provider/apis/ticker/lifecycle/", {"to_status": "deprecated"})
    ticker_api.refresh_from_db()
    assert ticker_api.status == "deprecated"


def test_staff_page_offers_one_unblock_per_blocked_api(client, admin_user, alice, ticker_api):
    published = APIFactory(provider=alice, name="Weather", slug="weather")
    APIVersionFactory(api=published)
    api_transition(api=ticker_api, to_status="deprecated", actor=alice)
    for api in (ticker_api, published):
        api_transition(api=api, to_status="blocked", actor=admin_user, reason="Abuse report")
    client.force_login(admin_user)
    page = _content(client.get("/staff/apis/"))
    assert page.count(">Unblock</button>") == 2
    ticker_row = page[page.index("/staff/apis/ticker/lifecycle/") - 2000 : page.index("Weather")]
    assert 'value="deprecated"' in ticker_row and 'value="published"' not in ticker_row

    client.post("/staff/apis/ticker/lifecycle/", {"to_status": "deprecated"})
    client.post("/staff/apis/weather/lifecycle/", {"to_status": "published"})
    ticker_api.refresh_from_db()
    published.refresh_from_db()
    assert (ticker_api.status, published.status) == ("deprecated", "published")


def test_admin_blocked_api_offers_its_provider_no_moves_and_says_who_to_ask(
    client, admin_user, alice, ticker_api
):
    api_transition(api=ticker_api, to_status="blocked", actor=admin_user, reason="Abuse report")
    event = APILifecycleEvent.objects.get(api=ticker_api, to_status="blocked")
    client.force_login(alice)
    page = _content(client.get("/provider/apis/ticker/"))
    assert _block_form(page) == 0
    assert (
        f"An admin blocked this API on {date_filter(event.at, 'j M Y')}: Abuse report. "
        "Contact the platform team." in page
    )
    # The admin still has the way back.
    client.force_login(admin_user)
    assert ">Unblock</button>" in _content(client.get("/staff/apis/"))


def test_a_providers_own_block_keeps_their_unblock_button(client, alice, ticker_api):
    api_transition(api=ticker_api, to_status="blocked", actor=alice)
    client.force_login(alice)
    page = _content(client.get("/provider/apis/ticker/"))
    assert ">Unblock</button>" in page and "Contact the platform team" not in page


def test_catalog_blocked_banner_does_not_promise_the_provider_can_unblock(client, admin_user, ticker_api):
    api_transition(api=ticker_api, to_status="blocked", actor=admin_user)
    page = _content(client.get("/apis/ticker/"))
    assert "they work again when it is unblocked." in page
    assert "if the provider unblocks" not in page


def test_draft_api_without_a_published_version_offers_only_the_versions_publish(client, alice):
    api = APIFactory(provider=alice, name="Radar", slug="radar", status=API.Status.DRAFT)
    APIVersionFactory(api=api, status=APIVersion.Status.DRAFT)
    client.force_login(alice)
    page = _content(client.get("/provider/apis/radar/"))
    assert 'data-move="published"' not in page  # no API-level Publish that would fail
    assert ">Publish</button>" in page  # the version's own button
    assert _block_form(page, "radar") == 1  # Retire only


def test_first_publication_of_a_draft_api_does_not_say_again(client, alice):
    api = APIFactory(provider=alice, name="Radar", slug="radar", status=API.Status.DRAFT)
    APIVersionFactory(api=api, status=APIVersion.Status.PUBLISHED)
    client.force_login(alice)
    page = _content(client.get("/provider/apis/radar/"))
    assert "Publish Radar? It is listed in the catalog\\u003B consumers can subscribe and connect." in page
    assert "again" not in page[page.index("Publish Radar?") :][:200]
    client.post("/provider/apis/radar/lifecycle/", {"to_status": "published"})
    api.refresh_from_db()
    assert api.status == "published"


def test_retiring_an_api_ends_its_subscriptions_through_save(alice, bob, admin_user, ticker_api):
    active = SubscriptionFactory(
        application=ApplicationFactory(owner=bob, name="Desk"), plan=ticker_api.plans.get(name="Free")
    )
    pending = SubscriptionFactory(
        application=ApplicationFactory(owner=bob, name="Lab"),
        plan=ticker_api.plans.get(name="Gold"),
        status=Subscription.Status.PENDING,
    )
    other = SubscriptionFactory(application=ApplicationFactory(owner=bob, name="Other"))
    saved: list[tuple[int, str]] = []

    def record(sender, instance, **kwargs):
        saved.append((instance.pk, instance.status))

    post_save.connect(record, sender=Subscription, dispatch_uid="test.retire")
    try:
        api_transition(api=ticker_api, to_status="retired", actor=alice)
    finally:
        post_save.disconnect(dispatch_uid="test.retire", sender=Subscription)

    for subscription in (active, pending, other):
        subscription.refresh_from_db()
    assert (active.status, pending.status, other.status) == ("cancelled", "rejected", "active")
    for ended in (active, pending):
        assert (ended.decision_reason, ended.decided_by, ended.decided_at) == (
            "The API was retired.",
            alice,
            ticker_api.status_changed_at,
        )
    # Saved one by one (gateway.signals closes connections on save), not by a bulk UPDATE.
    assert sorted(saved) == sorted([(active.pk, "cancelled"), (pending.pk, "rejected")])


def test_a_refused_retire_ends_no_subscription(alice, bob, ticker_api):
    active = SubscriptionFactory(
        application=ApplicationFactory(owner=bob), plan=ticker_api.plans.get(name="Free")
    )
    with pytest.raises(PermissionDenied):
        api_transition(api=ticker_api, to_status="retired", actor=bob)
    active.refresh_from_db()
    assert active.status == "active"


def test_consumer_sees_the_retired_reason_on_a_rejected_subscription(client, alice, bob, ticker_api):
    application = ApplicationFactory(owner=bob, name="Lab")
    SubscriptionFactory(application=application, plan=ticker_api.plans.get(name="Gold"), status="pending")
    api_transition(api=ticker_api, to_status="retired", actor=alice)
    client.force_login(bob)
    page = _content(client.get(f"/apps/{application.pk}/"))
    assert "The API was retired." in page


def test_tags_and_protocols_follow_version_moves(alice):
    api = APIFactory(provider=alice, tags=[], protocols=[])
    old = APIVersionFactory(api=api, version="1.0.0", tags=[{"name": "v1"}], protocols=["ws"])
    new = APIVersionFactory(
        api=api, version="2.0.0", status=APIVersion.Status.DRAFT, tags=[{"name": "v2"}], protocols=["mqtt"]
    )
    api.refresh_tags_and_protocols()
    assert (api.tags, api.protocols) == (["v1"], ["ws"])  # the draft is newer, but not live
    api_publish(api_version=new, actor=alice)
    api.refresh_from_db()
    assert (api.tags, api.protocols) == (["v2"], ["mqtt"])
    api_version_transition(api_version=new, to_status="retired", actor=alice)
    api.refresh_from_db()
    assert (api.tags, api.protocols) == (["v1"], ["ws"])
    assert old.status == "published"


def test_retiring_an_api_retires_its_versions_and_tells_consumers_the_providers_reason(
    alice, bob, ticker_api
):
    subscription = SubscriptionFactory(
        application=ApplicationFactory(owner=bob, name="Desk"), plan=ticker_api.plans.get(name="Free")
    )
    api_transition(api=ticker_api, to_status="retired", actor=alice, reason="Replaced by Ticker 2")
    subscription.refresh_from_db()
    assert subscription.decision_reason == "The API was retired: Replaced by Ticker 2"
    assert set(ticker_api.versions.values_list("status", flat=True)) == {"retired"}
    assert ticker_api.lifecycle_events.filter(api_version__isnull=False, to_status="retired").exists()


def test_django_admin_actions_block_and_unblock_through_the_lifecycle_service(client, admin_user, ticker_api):
    ticker_api.status = API.Status.DEPRECATED
    ticker_api.save()
    client.force_login(admin_user)
    changelist = "/admin/portal/api/"
    for action in ("move_to_blocked", "unblock"):
        response = client.post(
            changelist, {"action": action, "_selected_action": [ticker_api.pk]}, follow=True
        )
        assert response.status_code == 200
    ticker_api.refresh_from_db()
    assert ticker_api.status == API.Status.DEPRECATED  # the state before the block
    assert list(ticker_api.lifecycle_events.values_list("to_status", "reason")) == [
        ("deprecated", "Django admin"),
        ("blocked", "Django admin"),
    ]
    refused = client.post(changelist, {"action": "unblock", "_selected_action": [ticker_api.pk]}, follow=True)
    assert "Ticker is not blocked." in refused.content.decode()
