"""``manage.py load_demo``: idempotent demo data, and a fresh demo API key on every run.

Creates (or brings back to the demo state) three accounts with the password ``eventgate-demo``
(demo only), the two demo APIs imported from ``portal/demo/`` and published, a free and a paid
plan for each, the consumer's application "Demo dashboard" subscribed to both free plans, and a
new API key for it (the previous demo key is revoked). The key is written to
``var/demo-credentials.json`` (mode 0600; ``var/`` is git-ignored) for ``manage.py demo_banner``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.exceptions import PermissionDenied, ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import transaction
from django.utils import timezone

from portal.asyncapi import AsyncAPIError
from portal.demo import DEMO_APIS, DemoAPI
from portal.models import API, APIKey, APIVersion, Application, BusinessPlan, Subscription, User
from portal.plans import plan_template
from portal.services.apis import api_import, api_publish
from portal.services.credentials import api_key_create, api_key_revoke
from portal.services.lifecycle import api_transition
from portal.services.subscriptions import subscription_create

DEMO_PASSWORD = "eventgate-demo"
DEMO_KEY_NAME = "demo"
APPLICATION_NAME = "Demo dashboard"
CREDENTIALS_PATH = Path(settings.DEMO_CREDENTIALS_PATH)


@dataclass(frozen=True)
class DemoAccount:
    email: str
    role: str
    flags: dict[str, bool | str]


ACCOUNTS = (
    DemoAccount(
        "admin@eventgate.local",
        "platform admin: approves plans and subscriptions",
        {"is_staff": True, "is_superuser": True, "is_provider": False},
    ),
    DemoAccount(
        "provider@eventgate.local",
        "provider of Stock Prices and Train Departures",
        {
            "is_staff": False,
            "is_superuser": False,
            "is_provider": True,
            "organization": "Eventgate Demo Data",
        },
    ),
    DemoAccount(
        "consumer@eventgate.local",
        f'consumer; owns "{APPLICATION_NAME}" (free plans) and "Demo backtesting" (paid, invoiced)',
        {"is_staff": False, "is_superuser": False, "is_provider": False},
    ),
)

# Plans per demo API slug: (name, description, requires_approval, flat fee, included events, per 1,000).
# Amounts are US cents per monthly billing period. Limits: see DEMO_LIMITS.
PLANS: dict[str, list[tuple[str, str, bool, int, int, int]]] = {
    "stock-prices": [
        ("Free", "Delayed-grade access for prototypes: no fee, no approval.", False, 0, 0, 0),
        (
            "Pro",
            "For trading dashboards: $49/month including 1,000,000 events, then $0.02 per 1,000.",
            True,
            4900,
            1_000_000,
            2,
        ),
    ],
    "train-departures": [
        ("Free", "For hobby projects and station displays: no fee, no approval.", False, 0, 0, 0),
        (
            "Business",
            "For passenger apps: $19/month including 500,000 events, then $0.03 per 1,000.",
            True,
            1900,
            500_000,
            3,
        ),
    ],
}


# Throttling policies per plan name (docs/throttling.md). The free tier allows 1,200 events per
# minute (+300 burst) and 50 million a month, counted both ways, with 5 connections: the demo
# backend's whole stock feed (20 ticks/s) fits, so a watching consumer is never stopped; the
# Limits panel on the application page shows the windows filling.
DEMO_LIMITS: dict[str, dict[str, Any]] = {
    "Free": {
        "rate_limit_events": 1200,
        "rate_limit_unit": "minute",
        "burst_events": 300,
        "quota_events": 50_000_000,
        "max_connections": 5,
        "max_connection_seconds": None,
    },
    "Pro": {**plan_template("async-unlimited").fields, "quota_bytes": 10 * 10**9, "max_connections": 50},  # type: ignore[union-attr]
    "Business": {
        **plan_template("async-unlimited").fields,  # type: ignore[union-attr]
        "quota_bytes": 5 * 10**9,
        "max_connections": 25,
    },
}


class Command(BaseCommand):
    help = "Load the demo accounts, APIs, plans, application and subscriptions; issue a fresh demo API key."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--credentials", type=Path, default=CREDENTIALS_PATH, help="Where to write the demo key."
        )

    def handle(self, *args: Any, **options: Any) -> None:
        with transaction.atomic():
            users = {account.email: _user_ensure(account) for account in ACCOUNTS}
            admin, provider, consumer = users.values()
            versions = [_api_ensure(demo, provider=provider, approver=admin) for demo in DEMO_APIS]
            application = _application_ensure(owner=consumer)
            for version in versions:
                _subscription_ensure(application=application, api=version.api)
            secret = _demo_key_renew(application=application)
        credentials = _credentials(versions=versions, application=application, secret=secret)
        _credentials_write(credentials, path=options["credentials"])
        for version in versions:
            self.stdout.write(
                f"API {version.api.name} {version.version}: /ws/{version.api.slug}/{version.version}/..."
            )
        self.stdout.write(
            f"Demo accounts ready (password {DEMO_PASSWORD}); new demo key in {options['credentials']}."
        )


def _user_ensure(account: DemoAccount) -> User:
    user = User.objects.filter(email=account.email).first() or User(email=account.email)
    for flag, value in account.flags.items():
        setattr(user, flag, value)
    user.is_active = True
    user.set_password(DEMO_PASSWORD)
    user.save()
    return user


def _api_ensure(demo: DemoAPI, *, provider: User, approver: User) -> APIVersion:
    """Import (once) and publish ``demo`` (recorded as the provider's lifecycle move); ensure its
    approved plans with their limits. Raises ``CommandError``."""
    api = API.objects.filter(slug=demo.slug).first()
    version = api.versions.filter(version=demo.version).first() if api else None
    if version is None:
        try:
            version = api_import(provider=provider, content=demo.content(), filename=demo.filename, api=api)
        except (AsyncAPIError, PermissionDenied) as exc:
            raise CommandError(f"Cannot import {demo.filename}: {exc}") from exc
    if version.api.slug != demo.slug:
        raise CommandError(f"{demo.filename} was imported as {version.api.slug!r}, expected {demo.slug!r}.")
    try:
        # The provider publishes, so the lifecycle history names them.
        version = api_publish(api_version=version, actor=provider)
        if version.api.status in (API.Status.DEPRECATED, API.Status.BLOCKED):
            # Back to the demo state; the admin, since only an admin lifts an admin's block.
            api_transition(
                api=version.api, to_status=API.Status.PUBLISHED, actor=approver, reason="Demo data reloaded"
            )
    except (ValidationError, PermissionDenied) as exc:
        raise CommandError(f"Cannot publish {demo.slug}: {exc}") from exc
    for name, description, approval, fee, included, per_1000 in PLANS[demo.slug]:
        BusinessPlan.objects.update_or_create(
            api=version.api,
            name=name,
            defaults=dict(
                description=description,
                requires_approval=approval,
                is_approved=True,
                currency="usd",
                flat_fee_minor=fee,
                included_events=included,
                price_per_1000_events_minor=per_1000,
                decided_by=approver,
                decided_at=timezone.now(),
                rejected_at=None,
                **DEMO_LIMITS[name],
            ),
        )
    return version


def _application_ensure(*, owner: User) -> Application:
    application, _ = Application.objects.get_or_create(
        owner=owner, name=APPLICATION_NAME, defaults={"description": "Live boards for the demo APIs."}
    )
    return application


def _subscription_ensure(*, application: Application, api: API) -> Subscription:
    """The application's live subscription to ``api``; a new active Free one if it has none."""
    live = Subscription.objects.filter(
        application=application, api=api, status__in=["pending", "active"]
    ).first()
    if live is not None:
        return live
    return subscription_create(application=application, plan=api.plans.get(name="Free"))


def _demo_key_renew(*, application: Application) -> str:
    for key in APIKey.objects.filter(application=application, name=DEMO_KEY_NAME, revoked_at__isnull=True):
        api_key_revoke(key=key)
    _, secret = api_key_create(application=application, name=DEMO_KEY_NAME)
    return secret


def _credentials(*, versions: list[APIVersion], application: Application, secret: str) -> dict[str, Any]:
    channels = []
    for version in versions:
        channel = version.channels.order_by("address").first()
        if channel is not None:
            channels.append(
                {"api": version.api.slug, "version": version.version, "address": channel.example_address()}
            )
    return {
        "note": "Demo only. Regenerated (and the previous key revoked) by every `manage.py load_demo`.",
        "created": timezone.now().isoformat(),
        "accounts": [{"email": a.email, "password": DEMO_PASSWORD, "role": a.role} for a in ACCOUNTS],
        "application": application.name,
        "api_key": secret,
        "channels": channels,
    }


def _credentials_write(credentials: dict[str, Any], *, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as file:
        json.dump(credentials, file, indent=2)
    os.replace(temporary, path)
