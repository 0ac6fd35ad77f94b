"""API and API version lifecycle: moves between states, who made them and when.

States and allowed moves are ``API.TRANSITIONS`` and ``APIVersion.TRANSITIONS`` (modelled on WSO2
API Manager's API lifecycle: created, published, deprecated, blocked, retired). Every move is
saved with ``Model.save()``, so ``gateway.signals`` sees it and, once it commits, tells every
gateway process to close the live connections of a blocked or retired API or a retired version
(close code 4410). Every move is recorded as an ``APILifecycleEvent``.

Rules beyond the transition tables, and why:

- An API is published only with a published version: a published API without one would be
  neither in the catalog nor connectable, which reads as "published" but is not.
- The last live (published or deprecated) version of a listed API cannot be retired: the API
  would stay "published" with nothing to serve. Retire (or block) the API instead, or publish
  another version first.
- Providers move their own APIs; admins (staff) move any. An API an admin blocked can be
  unblocked only by an admin, so a provider cannot undo a platform decision.
- Unblocking returns an API to the state it had before the block (published or deprecated):
  a block is a pause, and must not undo a deprecation (``api_block_details(...).restores``).
  The table still allows the other state, for a caller who asks for it by name.
- Retiring an API ends its subscriptions in the same transaction: active ones are cancelled
  (billing stops charging flat fees for an API nobody can use), pending ones are rejected with
  the reason "The API was retired." (and the provider's reason, when given). Each is saved with
  ``save()``, so the gateway hears of it. Its versions are retired too, and plans still awaiting
  approval are rejected, so nothing is left waiting on a decision nobody can make.
- ``API.tags`` and ``API.protocols`` follow the newest live version: every version move
  refreshes them (``API.refresh_tags_and_protocols``).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from django.core.exceptions import PermissionDenied, ValidationError
from django.db import transaction
from django.utils import timezone

from portal.models import API, APILifecycleEvent, APIVersion, Subscription, User

# decision_reason of the subscriptions that retiring their API ended; consumers see it.
RETIRED_REASON = "The API was retired."


@dataclass(frozen=True)
class Block:
    """Why a blocked API is blocked: when (``at``), by whom (``actor``, None for the system or
    an unknown origin), why (``reason``, may be empty), whether only an admin may lift it
    (``by_admin``: an admin other than the provider set it) and the ``API.Status`` an unblock
    returns it to (``restores``: published or deprecated)."""

    at: datetime | None
    actor: User | None
    reason: str
    by_admin: bool
    restores: str


def api_block_details(*, api: API) -> Block | None:
    """The block on ``api`` (from its latest API-level move to blocked), or None unless blocked.

    An API saved as blocked without such an event (data loaded by hand) restores to published
    and counts as the provider's own block. One query.
    """
    if api.status != API.Status.BLOCKED:
        return None
    event = (
        api.lifecycle_events.filter(api_version=None, to_status=API.Status.BLOCKED)
        .select_related("actor")
        .first()  # newest first (APILifecycleEvent.Meta.ordering)
    )
    if event is None:
        return Block(
            at=api.status_changed_at, actor=None, reason="", by_admin=False, restores=API.Status.PUBLISHED
        )
    actor = event.actor
    by_admin = actor is not None and actor.is_staff and actor.pk != api.provider_id
    restores = event.from_status if event.from_status in API.CONNECTABLE_STATUSES else API.Status.PUBLISHED
    return Block(at=event.at, actor=actor, reason=event.reason, by_admin=by_admin, restores=restores)


def _check_actor(*, api: API, actor: User | None) -> None:
    if actor is None or not actor.is_active:
        raise PermissionDenied("Sign in as the API's provider or an admin to change its lifecycle.")
    if not (actor.is_staff or api.provider_id == actor.pk):
        raise PermissionDenied("Only the API's provider or an admin can change its lifecycle.")


def _moves_text(choices: type[API.Status] | type[APIVersion.Status], moves: tuple[str, ...]) -> str:
    labels = dict(choices.choices)
    return ", ".join(str(labels[move]).lower() for move in moves) or "none (this state is final)"


def _refuse(what: str, current: str, to_status: str, choices, transitions) -> ValidationError:  # type: ignore[no-untyped-def]
    labels = dict(choices.choices)
    if to_status not in labels:
        return ValidationError({"to_status": f"Unknown state “{to_status}”; states: {', '.join(labels)}."})
    return ValidationError(
        {
            "to_status": (
                f"{what} is {str(labels[current]).lower()} and cannot become "
                f"{str(labels[to_status]).lower()}; allowed moves: "
                f"{_moves_text(choices, transitions.get(current, ()))}."
            )
        }
    )


def api_transition(*, api: API, to_status: str, actor: User | None, reason: str = "") -> API:
    """Move ``api`` to ``to_status`` (an ``API.Status`` value) and record who, when and why.

    Returns the API, refreshed. Moving to the current state is refused like any move the table
    does not list. Raises:
        PermissionDenied: ``actor`` is neither the API's provider nor staff, or a provider tries
            to lift a block an admin set.
        ValidationError: ``{"to_status": ...}`` when ``API.TRANSITIONS`` has no such move (the
            message names the allowed moves), or when publishing an API with no published version.

    Retiring ends the API's live subscriptions (see the module docstring). To unblock, move to
    ``api_block_details(api=api).restores``.
    """
    _check_actor(api=api, actor=actor)
    return _api_transition(api=api, to_status=to_status, actor=actor, reason=reason)


def _api_transition(*, api: API, to_status: str, actor: User | None, reason: str = "") -> API:
    """``api_transition`` without the actor check; ``actor`` None is the system (a command)."""
    reason = reason.strip()
    with transaction.atomic():
        # Row lock: two concurrent moves serialize, and the second sees the first's state.
        locked = API.objects.select_for_update().get(pk=api.pk)
        if not locked.can_move_to(to_status):
            raise _refuse(locked.name, locked.status, to_status, API.Status, API.TRANSITIONS)
        if (
            to_status == API.Status.PUBLISHED
            and not locked.versions.filter(status=APIVersion.Status.PUBLISHED).exists()
        ):
            raise ValidationError(
                {
                    "to_status": (
                        f"Publish a version of {locked.name} first: an API is published with its versions."
                    )
                }
            )
        if locked.status == API.Status.BLOCKED and actor is not None and not actor.is_staff:
            block = api_block_details(api=locked)
            if block is not None and block.by_admin:
                raise PermissionDenied("An admin blocked this API; only an admin can lift the block.")
        _api_move(api=locked, to_status=to_status, actor=actor, reason=reason)
        if to_status == API.Status.RETIRED:
            at = locked.status_changed_at or timezone.now()
            ending = f"{RETIRED_REASON[:-1]}: {reason}" if reason else RETIRED_REASON
            _subscriptions_end(api=locked, actor=actor, at=at, reason=ending)
            _retired_api_wind_up(api=locked, actor=actor, at=at)
    api.refresh_from_db()
    return api


def _api_move(*, api: API, to_status: str, actor: User | None, reason: str) -> None:
    """Save the new state (through ``save()``: the gateway's signal must see it) and the event."""
    now = timezone.now()
    APILifecycleEvent.objects.create(
        api=api, from_status=api.status, to_status=to_status, actor=actor, reason=reason, at=now
    )
    api.status, api.status_changed_at = to_status, now
    api.save(update_fields=["status", "status_changed_at"])


def _subscriptions_end(*, api: API, actor: User | None, at: datetime, reason: str) -> None:
    """End the live subscriptions of a retired ``api``: active → cancelled, pending → rejected,
    each with ``reason`` (``RETIRED_REASON``, plus the provider's own reason when they gave one)
    and the retiring ``actor``. One ``save()`` per subscription, so ``gateway.signals`` closes
    their connections and billing sees a status that stops charging."""
    live = Subscription.objects.select_for_update().filter(
        api=api, status__in=[Subscription.Status.ACTIVE, Subscription.Status.PENDING]
    )
    for subscription in live:
        subscription.status = (
            Subscription.Status.CANCELLED
            if subscription.status == Subscription.Status.ACTIVE
            else Subscription.Status.REJECTED
        )
        subscription.decided_at, subscription.decided_by = at, actor
        subscription.decision_reason = reason
        subscription.save(update_fields=["status", "decided_at", "decided_by", "decision_reason"])


def _retired_api_wind_up(*, api: API, actor: User | None, at: datetime) -> None:
    """Retire every version of a retired ``api`` (recorded as events, saved with ``save()`` so the
    gateway hears of it) and reject its plans still awaiting approval: nobody could ever approve
    them, and the provider would see them waiting for good."""
    for version in api.versions.select_for_update().exclude(status=APIVersion.Status.RETIRED):
        _version_move(api_version=version, to_status=APIVersion.Status.RETIRED, actor=actor, reason="")
    api.plans.filter(is_approved=False, rejected_at__isnull=True).update(
        rejected_at=at, decided_at=at, decided_by=actor, decision_reason=RETIRED_REASON
    )


def api_version_transition(
    *, api_version: APIVersion, to_status: str, actor: User | None, reason: str = ""
) -> APIVersion:
    """Move ``api_version`` to ``to_status`` (an ``APIVersion.Status`` value); record the event.

    Publishing a version of a draft API does not publish the API (``api_publish`` does both).
    Returns the version, refreshed. Raises:
        PermissionDenied: ``actor`` is neither the API's provider nor staff.
        ValidationError: ``{"to_status": ...}`` when ``APIVersion.TRANSITIONS`` has no such
            move (naming the allowed ones), when the API is retired, or when this is the last
            live version of a listed API and the move would leave it with none.
    """
    _check_actor(api=api_version.api, actor=actor)
    return _api_version_transition(api_version=api_version, to_status=to_status, actor=actor, reason=reason)


def _api_version_transition(
    *, api_version: APIVersion, to_status: str, actor: User | None, reason: str = ""
) -> APIVersion:
    """``api_version_transition`` without the actor check; ``actor`` None is the system."""
    api = api_version.api
    reason = reason.strip()
    with transaction.atomic():
        # Lock the API too: two versions retired at once must not both pass the "last live" check.
        locked_api = API.objects.select_for_update().get(pk=api.pk)
        locked = APIVersion.objects.select_for_update().get(pk=api_version.pk)
        label = f"{locked_api.name} {locked.version}"
        if locked_api.status == API.Status.RETIRED:
            raise ValidationError(
                {"to_status": f"{locked_api.name} is retired; its versions can no longer change."}
            )
        if not locked.can_move_to(to_status):
            raise _refuse(label, locked.status, to_status, APIVersion.Status, APIVersion.TRANSITIONS)
        if (
            to_status not in APIVersion.LIVE_STATUSES
            and locked.status in APIVersion.LIVE_STATUSES
            and locked_api.status in API.LISTED_STATUSES
            and not locked_api.versions.filter(status__in=APIVersion.LIVE_STATUSES)
            .exclude(pk=locked.pk)
            .exists()
        ):
            raise ValidationError(
                {
                    "to_status": (
                        f"{label} is the last live version of {locked_api.name}: publish another version "
                        "first, or retire the API itself."
                    )
                }
            )
        _version_move(api_version=locked, to_status=to_status, actor=actor, reason=reason)
    api_version.refresh_from_db()
    return api_version


def _version_move(*, api_version: APIVersion, to_status: str, actor: User | None, reason: str) -> None:
    APILifecycleEvent.objects.create(
        api_id=api_version.api_id,
        api_version=api_version,
        from_status=api_version.status,
        to_status=to_status,
        actor=actor,
        reason=reason,
    )
    api_version.status = to_status
    api_version.save(update_fields=["status"])
    # A version going live (or leaving) changes which one the catalog's tags and filters show.
    api_version.api.refresh_tags_and_protocols()


def api_publish_version(*, api_version: APIVersion, actor: User | None) -> APIVersion:
    """Publish ``api_version`` and, if the API is a draft, the API: the first publication.

    A published version stays as it is. A deprecated or blocked API keeps its state (publishing
    a new version does not undo a deprecation or an admin's block). ``actor`` None is the system
    (management commands); the events then record no actor. Raises ``ValidationError`` when the
    API is retired or the version cannot be published (retired), and ``PermissionDenied`` as
    ``api_version_transition``. Used by ``portal.services.apis.api_publish``.
    """
    api = api_version.api
    if actor is not None:
        _check_actor(api=api, actor=actor)
    if api.status == API.Status.RETIRED:
        raise ValidationError(f"{api.name} is retired and cannot be published again.")
    with transaction.atomic():
        if api_version.status != APIVersion.Status.PUBLISHED:
            _api_version_transition(
                api_version=api_version, to_status=APIVersion.Status.PUBLISHED, actor=actor
            )
        api.refresh_from_db()
        if api.status == API.Status.DRAFT:
            _api_transition(api=api, to_status=API.Status.PUBLISHED, actor=actor)
    api_version.refresh_from_db()
    return api_version
