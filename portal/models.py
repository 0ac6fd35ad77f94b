"""The portal's data model: users, APIs and their AsyncAPI documents, channels, operations,
business plans, applications, subscriptions and API keys.

Operations are stored from the *consumer's* point of view (AsyncAPI 2.x ``subscribe`` and 3.x
``send`` by the provider both become ``receive`` for the consumer); see ``portal.asyncapi``.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from datetime import datetime
from typing import Any

import regex
from django.conf import settings
from django.contrib.auth.models import AbstractUser, UserManager
from django.db import models
from django.db.models import Q
from django.db.models.functions import Lower
from django.urls import reverse
from django.utils import timezone


class EmailUserManager(UserManager["User"]):
    """Creates users identified by email (no username)."""

    def _create_user(self, username: Any, email: str | None, password: str | None, **extra: Any) -> User:
        email = self.normalize_email(email or "")
        user = self.model(email=email, **extra)
        user.set_password(password)
        user.save(using=self._db)
        return user

    def create_user(self, email: str | None = None, password: str | None = None, **extra: Any) -> User:  # type: ignore[override]
        extra.setdefault("is_staff", False)
        extra.setdefault("is_superuser", False)
        return self._create_user(None, email, password, **extra)

    def create_superuser(self, email: str | None = None, password: str | None = None, **extra: Any) -> User:  # type: ignore[override]
        extra.setdefault("is_staff", True)
        extra.setdefault("is_superuser", True)
        return self._create_user(None, email, password, **extra)


class User(AbstractUser):
    """A person using the portal, identified by email.

    ``is_provider`` lets the user publish APIs; ``is_staff`` makes them a platform admin who
    approves business plans and subscriptions. Every user can be a consumer.
    """

    username = None  # type: ignore[assignment]
    email = models.EmailField("email address", unique=True)
    is_provider = models.BooleanField(default=False, help_text="May publish APIs.")
    organization = models.CharField(
        max_length=100, blank=True, help_text="Shown to consumers as the provider of this user's APIs."
    )

    class Meta(AbstractUser.Meta):
        constraints = [
            # Case-insensitive, and only for names that are set: one provider must not pass
            # for another.
            models.UniqueConstraint(
                Lower("organization"), condition=~Q(organization=""), name="unique_organization_ci"
            ),
        ]

    USERNAME_FIELD = "email"
    REQUIRED_FIELDS: list[str] = []

    objects = EmailUserManager()  # type: ignore[misc]

    def __str__(self) -> str:
        return self.email

    @property
    def public_name(self) -> str:
        """How consumers and anonymous visitors see this user as a provider: ``organization``,
        else the domain of the email address. Never the whole address, which stays private."""
        return self.organization or self.email.rpartition("@")[2] or "Unnamed provider"


class APIQuerySet(models.QuerySet["API"]):
    def listed(self) -> APIQuerySet:
        """APIs the catalog lists: published, deprecated or blocked, with at least one published
        or deprecated version. Blocked APIs stay visible (as in WSO2 API Manager) so subscribers
        can see why their connections are refused; drafts and retired APIs are not listed."""
        return self.filter(
            status__in=API.LISTED_STATUSES, versions__status__in=APIVersion.LIVE_STATUSES
        ).distinct()

    def published(self) -> APIQuerySet:
        """APIs that accept new subscriptions: published, with at least one published version."""
        return self.filter(
            status=API.Status.PUBLISHED, versions__status=APIVersion.Status.PUBLISHED
        ).distinct()

    def managed_by(self, user: Any) -> APIQuerySet:
        """APIs ``user`` may manage: their own as a provider, every API for staff, none for
        anonymous users."""
        if not user.is_authenticated:
            return self.none()
        return self if user.is_staff else self.filter(provider=user)

    def visible_to(self, user: Any) -> APIQuerySet:
        """Listed APIs plus those ``user`` manages (their drafts and retired APIs)."""
        return self.filter(
            Q(pk__in=self.listed().values("pk")) | Q(pk__in=self.managed_by(user).values("pk"))
        )


class API(models.Model):
    """An async API offered by a provider; its shape lives in its versions' AsyncAPI documents.

    Lifecycle (``status``, modelled on WSO2 API Manager's API lifecycle): created as a draft;
    published (listed, open to subscriptions and connections); deprecated (listed, no new
    subscriptions, live subscriptions keep working); blocked (listed, connections refused and
    live ones closed, reversible); retired (unlisted, connections refused, final). Allowed moves
    are in ``TRANSITIONS``; each move is recorded as an ``APILifecycleEvent``.
    ``tags`` and ``protocols`` (lists of strings) come from the newest live (published or
    deprecated) version, or the newest version while none is live (``refresh_tags_and_protocols``).
    """

    class Status(models.TextChoices):
        DRAFT = "draft", "Created (draft)"
        PUBLISHED = "published", "Published"
        DEPRECATED = "deprecated", "Deprecated"
        BLOCKED = "blocked", "Blocked"
        RETIRED = "retired", "Retired"

    # from → the states it may move to.
    TRANSITIONS: dict[str, tuple[str, ...]] = {
        Status.DRAFT: (Status.PUBLISHED, Status.RETIRED),
        Status.PUBLISHED: (Status.DEPRECATED, Status.BLOCKED, Status.RETIRED),
        Status.DEPRECATED: (Status.PUBLISHED, Status.BLOCKED, Status.RETIRED),
        Status.BLOCKED: (Status.PUBLISHED, Status.DEPRECATED, Status.RETIRED),
        Status.RETIRED: (),
    }
    LISTED_STATUSES = (Status.PUBLISHED, Status.DEPRECATED, Status.BLOCKED)
    # States whose APIs the gateway serves.
    CONNECTABLE_STATUSES = (Status.PUBLISHED, Status.DEPRECATED)

    provider = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="apis")
    name = models.CharField(max_length=200)
    slug = models.SlugField(max_length=100, unique=True, help_text="Used in gateway URLs: /ws/<slug>/...")
    summary = models.CharField(max_length=300, blank=True)
    description = models.TextField(
        blank=True, help_text="Markdown from the AsyncAPI document's info.description."
    )
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.DRAFT)
    status_changed_at = models.DateTimeField(null=True, blank=True)
    tags = models.JSONField(default=list, blank=True, help_text="Tag names from info.tags.")
    protocols = models.JSONField(
        default=list, blank=True, help_text="Protocols of the document's servers (ws, mqtt, kafka, ...)."
    )
    created = models.DateTimeField(default=timezone.now)

    objects = APIQuerySet.as_manager()

    class Meta:
        verbose_name = "API"
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    def get_absolute_url(self) -> str:
        return reverse("portal:api_detail", args=[self.slug])

    def latest_version(self, *, published_only: bool = True) -> APIVersion | None:
        """The most recently created version (published or deprecated ones only by default), or None."""
        versions = self.versions.all()
        if published_only:
            versions = versions.filter(status__in=APIVersion.LIVE_STATUSES)
        return versions.order_by("-created").first()

    def can_move_to(self, status: str) -> bool:
        """Whether the lifecycle allows moving from the current status to ``status``."""
        return status in self.TRANSITIONS.get(self.status, ())

    def refresh_tags_and_protocols(self) -> None:
        """Set ``tags`` (tag names) and ``protocols`` from the newest live (published or
        deprecated) version, or from the newest version while the API has no live one.

        The catalog's cards, search and filters read these, so a draft version must not change
        what everyone sees of a released API. Call it after a version is imported or changes
        state. Saved with ``update()``: the gateway has nothing to do with tags.
        """
        versions = self.versions.order_by("-created", "-pk")
        source = versions.filter(status__in=APIVersion.LIVE_STATUSES).first() or versions.first()
        tags = [tag["name"] if isinstance(tag, dict) else str(tag) for tag in source.tags] if source else []
        protocols = list(source.protocols) if source else []
        API.objects.filter(pk=self.pk).update(tags=tags, protocols=protocols)
        self.tags, self.protocols = tags, protocols


class APILifecycleEvent(models.Model):
    """One lifecycle change of an API (or of one of its versions): who, when, from, to, why."""

    api = models.ForeignKey(API, on_delete=models.CASCADE, related_name="lifecycle_events")
    api_version = models.ForeignKey(
        "APIVersion",
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="lifecycle_events",
        help_text="Set when the change was to one version rather than the whole API.",
    )
    from_status = models.CharField(max_length=16)
    to_status = models.CharField(max_length=16)
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    reason = models.TextField(blank=True)
    at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-at", "-pk"]

    def __str__(self) -> str:
        target = f"{self.api} {self.api_version.version}" if self.api_version_id else str(self.api)
        return f"{target}: {self.from_status} → {self.to_status}"


class APIVersion(models.Model):
    """One version of an API, imported from one AsyncAPI document (2.x or 3.x).

    ``document`` is the parsed document as a JSON object (refs unresolved); ``source`` keeps the
    uploaded text byte-for-byte so errors can cite its lines.
    """

    class Status(models.TextChoices):
        DRAFT = "draft", "Draft"
        PUBLISHED = "published", "Published"
        DEPRECATED = "deprecated", "Deprecated"
        RETIRED = "retired", "Retired"

    # Versions the catalog shows and the gateway serves (while their API is connectable).
    LIVE_STATUSES = (Status.PUBLISHED, Status.DEPRECATED)
    TRANSITIONS: dict[str, tuple[str, ...]] = {
        Status.DRAFT: (Status.PUBLISHED, Status.RETIRED),
        Status.PUBLISHED: (Status.DEPRECATED, Status.RETIRED),
        Status.DEPRECATED: (Status.PUBLISHED, Status.RETIRED),
        Status.RETIRED: (),
    }

    api = models.ForeignKey(API, on_delete=models.CASCADE, related_name="versions")
    version = models.CharField(
        max_length=64, help_text="info.version of the AsyncAPI document; used in gateway URLs."
    )
    asyncapi_version = models.CharField(max_length=16)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.DRAFT)
    document = models.JSONField()
    source = models.TextField()
    source_filename = models.CharField(max_length=255, blank=True)
    source_files = models.JSONField(
        default=dict,
        blank=True,
        help_text="Other files of a multi-file (.zip) upload: path → text; the root is ``source``.",
    )
    servers = models.JSONField(
        default=dict,
        blank=True,
        help_text="Servers by name: {host, protocol, protocol_version, pathname, description, security, "
        "bindings}.",
    )
    security_schemes = models.JSONField(
        default=dict, blank=True, help_text="components.securitySchemes, resolved."
    )
    tags = models.JSONField(default=list, blank=True, help_text="info.tags as [{name, description}].")
    protocols = models.JSONField(default=list, blank=True, help_text="Sorted distinct server protocols.")
    validate_payloads = models.BooleanField(
        default=False,
        help_text="Check events clients send against the message payload schema; refuse those that fail.",
    )
    created = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["api", "version"], name="unique_api_version")]
        ordering = ["api", "-created"]

    def __str__(self) -> str:
        return f"{self.api.name} {self.version}"

    def can_move_to(self, status: str) -> bool:
        """Whether the version lifecycle allows moving from the current status to ``status``."""
        return status in self.TRANSITIONS.get(self.status, ())


class Channel(models.Model):
    """A channel of an API version: an address template such as ``prices/{symbol}``.

    ``parameters`` maps each parameter name to its schema-like object (``enum``, ``pattern``,
    ``description``, ``default``), per AsyncAPI 2.6 §Parameter Object / 3.0 §Parameter Object.
    """

    api_version = models.ForeignKey(APIVersion, on_delete=models.CASCADE, related_name="channels")
    key = models.CharField(max_length=255, help_text="The channel's key in the document's channels object.")
    address = models.CharField(max_length=1000, help_text="Address template; may contain {parameters}.")
    title = models.CharField(max_length=255, blank=True)
    description = models.TextField(blank=True)
    parameters = models.JSONField(default=dict, blank=True)
    bindings = models.JSONField(default=dict, blank=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["api_version", "key"], name="unique_channel_key")]
        ordering = ["address"]

    def __str__(self) -> str:
        return self.address

    def address_regex(self) -> regex.Pattern[str]:
        """A ``regex`` pattern matching concrete addresses of this template; one named group per
        parameter (its name with punctuation turned into ``_``).

        Leading and trailing ``/`` are optional on both sides: ``/v1/marketdata/{symbol}``
        matches ``v1/marketdata/btcusd`` (the gateway's URLs carry addresses without them).
        A parameter value is one or more characters other than ``/``; where a template is
        ambiguous, the leftmost parameter takes as much as it can, as Python's greedy ``re`` did.
        Two rules keep the match close to linear in the address length (a template such as
        ``sensors/{region}.{sensor}.{metric}`` or ``x/{a}{b}{c}{d}{e}{f}z`` otherwise backtracks
        polynomially on a long address that does not match), and give the same values:

        - a parameter that follows another one after a one-character punctuation separator
          (not a letter, digit or ``/``) cannot contain that separator (``{region}.{sensor}``:
          ``sensor`` has no ``.``, so ``eu.west.s1`` gives ``region`` ``eu.west``, as before).
          The only addresses ``re`` matched and this does not are those where such a value ends
          with its separator (``eu.s1.``), or is the separator itself;
        - a parameter right after another one (``{a}{b}``) takes exactly one character, since
          the greedy one before it leaves it no more.

        Callers should match with a ``timeout=`` anyway (the gateway does): provider templates
        can still be slow. Raises ``regex.error`` for parameter names that collide once
        punctuation becomes ``_`` (``{a.b}`` and ``{a-b}``) or that are not group names
        (``{0}``).
        """
        parts = re.split(r"\{([^}]+)\}", self.address.strip("/"))
        pattern, groups, value_class = "", set(), "[^/]"
        for index, part in enumerate(parts):
            if index % 2 == 0:  # literal text between parameters
                pattern += regex.escape(part)
                continue
            group = re.sub(r"\W", "_", part)
            if group in groups:  # regex, unlike re, would accept the duplicate group name
                raise regex.error(f"parameter {part!r} collides with another as group {group!r}")
            groups.add(group)
            separator = parts[index - 1]
            if index > 1 and separator == "":
                pattern += f"(?P<{group}>{value_class})"
                continue
            punctuation = len(separator) == 1 and not separator.isalnum() and separator != "/"
            value_class = f"[^/{regex.escape(separator)}]" if index > 1 and punctuation else "[^/]"
            pattern += f"(?P<{group}>{value_class}+)"
        return regex.compile(f"^/?{pattern}/?$")

    def example_address(self) -> str:
        """The address with each parameter filled by its first enum value, default or example.

        A parameter with none of those stays a ``{placeholder}``, so nobody mistakes its name for
        a value to send.
        """

        def fill(match: re.Match[str]) -> str:
            spec = self.parameters.get(match.group(1)) or {}
            schema = spec.get("schema") or spec
            if spec.get("enum") or schema.get("enum"):
                return str((spec.get("enum") or schema.get("enum"))[0])
            if spec.get("default") or schema.get("default"):
                return str(spec.get("default") or schema.get("default"))
            examples = spec.get("examples") or schema.get("examples")
            if examples:
                return str(examples[0])
            return match.group(0)

        return re.sub(r"\{([^}]+)\}", fill, self.address)

    @property
    def can_receive(self) -> bool:
        return any(op.action == Operation.Action.RECEIVE for op in self.operations.all())

    @property
    def can_send(self) -> bool:
        return any(op.action == Operation.Action.SEND for op in self.operations.all())


class Operation(models.Model):
    """What a consumer may do on a channel: receive events from it or send events to it.

    ``messages`` is a list of ``{"name", "title", "summary", "content_type", "payload"}`` objects
    with payload schemas as written in the document (internal ``$ref``s resolved).
    """

    class Action(models.TextChoices):
        RECEIVE = "receive", "Receive"
        SEND = "send", "Send"

    channel = models.ForeignKey(Channel, on_delete=models.CASCADE, related_name="operations")
    key = models.CharField(max_length=255, blank=True, help_text="operationId (2.x) or operation key (3.x).")
    action = models.CharField(max_length=8, choices=Action.choices)
    summary = models.TextField(blank=True)
    messages = models.JSONField(default=list, blank=True)
    bindings = models.JSONField(default=dict, blank=True, help_text="Operation Bindings Object, resolved.")

    class Meta:
        ordering = ["channel", "action", "key"]

    def __str__(self) -> str:
        return f"{self.action} {self.channel.address}"


class BusinessPlan(models.Model):
    """A business plan of an API: its limits, what a subscription costs, and whether it needs approval.

    Prices are integer minor units (cents) of ``currency``. A billing period (``billing_period``:
    calendar month or year, UTC) costs ``flat_fee`` plus, per started 1,000 events over
    ``included_events``, ``price_per_1000_events`` (or the graduated ``price_tiers``), plus
    bandwidth: bytes over ``included_bytes`` at ``price_per_gb`` pro rata (``billing.pricing``).
    The plan is also the subscription's throttling policy (None = unlimited), enforced by
    ``gateway.throttling`` per subscription across gateway processes (docs/throttling.md):
    ``rate_limit_events`` per ``rate_limit_unit`` with ``burst_events`` extra, ``quota_events``
    and ``quota_bytes`` per billing period (calendar month, UTC), all counting the
    ``counted_directions``; ``max_connections`` per subscription and
    ``max_connections_per_application``; ``max_webhook_subscriptions``;
    ``max_connection_seconds``. At a quota, ``quota_action`` stops or bills the overage at
    ``overage_price_per_1000_events_minor`` / ``overage_price_per_gb_minor``; a stopped client
    is told as ``limit_notice`` says.
    Admins approve plans before consumers can pick them, or reject them with a reason the
    provider sees.
    """

    class RateUnit(models.TextChoices):
        SECOND = "second", "second"
        MINUTE = "minute", "minute"
        HOUR = "hour", "hour"
        DAY = "day", "day"
        MONTH = "month", "month"

    class CountedDirections(models.TextChoices):
        BOTH = "both", "Both directions"
        OUT = "out", "Server → client only"
        IN = "in", "Client → server only"

    class QuotaAction(models.TextChoices):
        STOP = "stop", "Stop delivering"
        OVERAGE = "overage", "Keep delivering; bill the overage"

    class LimitNotice(models.TextChoices):
        NOTIFY = "notify", "Notify and keep the connection"
        CLOSE = "close", "Close the connection (4429)"

    # The fields of the throttling policy (docs/throttling.md), in the order pages show them:
    # the one list the plan form, serializers, admin, services and the limits page read.
    POLICY_FIELDS = (
        "rate_limit_events",
        "rate_limit_unit",
        "burst_events",
        "quota_events",
        "quota_bytes",
        "counted_directions",
        "max_connections",
        "max_connections_per_application",
        "max_webhook_subscriptions",
        "max_connection_seconds",
        "quota_action",
        "limit_notice",
        "overage_price_per_1000_events_minor",
        "overage_price_per_gb_minor",
    )

    class BillingPeriod(models.TextChoices):
        MONTH = "month", "Monthly (calendar month, UTC)"
        YEAR = "year", "Yearly (calendar year, UTC)"

    class ApprovalStatus(models.TextChoices):
        PENDING = "pending", "Awaiting approval"
        APPROVED = "approved", "Approved"
        REJECTED = "rejected", "Rejected"

    api = models.ForeignKey(API, on_delete=models.CASCADE, related_name="plans")
    name = models.CharField(max_length=100)
    description = models.TextField(blank=True)
    requires_approval = models.BooleanField(
        default=False, help_text="Subscriptions stay pending until an admin approves."
    )
    is_approved = models.BooleanField(
        default=False, help_text="Approved by an admin; only approved plans are offered."
    )
    rejected_at = models.DateTimeField(null=True, blank=True)
    decided_at = models.DateTimeField(null=True, blank=True)
    decided_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    decision_reason = models.TextField(blank=True, help_text="Why the admin rejected (or approved) it.")
    rate_limit_events = models.PositiveIntegerField(
        null=True, blank=True, help_text="Events per rate-limit unit; empty for no rate limit."
    )
    rate_limit_unit = models.CharField(max_length=8, choices=RateUnit.choices, default=RateUnit.MINUTE)
    burst_events = models.PositiveIntegerField(
        null=True, blank=True, help_text="Events allowed above the rate in a burst; empty for none."
    )
    quota_events = models.PositiveBigIntegerField(
        null=True, blank=True, help_text="Events per billing period; empty for unlimited."
    )
    quota_bytes = models.PositiveBigIntegerField(
        null=True, blank=True, help_text="Bytes per billing period; empty for unlimited."
    )
    max_connections = models.PositiveIntegerField(
        null=True, blank=True, help_text="Concurrent connections per subscription; empty for unlimited."
    )
    counted_directions = models.CharField(
        max_length=4,
        choices=CountedDirections.choices,
        default=CountedDirections.BOTH,
        help_text="Which events the rate limit and the quotas count.",
    )
    max_connections_per_application = models.PositiveIntegerField(
        null=True,
        blank=True,
        help_text="Concurrent connections per application, over all its subscriptions; empty for unlimited.",
    )
    max_webhook_subscriptions = models.PositiveIntegerField(
        null=True, blank=True, help_text="Webhook subscriptions per subscription; empty for unlimited."
    )
    max_connection_seconds = models.PositiveIntegerField(
        null=True,
        blank=True,
        help_text="A connection is closed (4408) after this many seconds; the client may reconnect. "
        "Empty for no limit.",
    )
    quota_action = models.CharField(
        max_length=8,
        choices=QuotaAction.choices,
        default=QuotaAction.STOP,
        help_text="At the events or bytes quota: stop delivering, or keep delivering and bill the excess.",
    )
    limit_notice = models.CharField(
        max_length=8,
        choices=LimitNotice.choices,
        default=LimitNotice.NOTIFY,
        help_text="How a stopped client is told: a notice (control frame, SSE event, webhook header) "
        "with the connection kept open, or a close with 4429.",
    )
    overage_price_per_1000_events_minor = models.PositiveIntegerField(
        default=0, help_text="Per 1,000 events over the events quota, when the quota action is overage."
    )
    overage_price_per_gb_minor = models.PositiveIntegerField(
        default=0, help_text="Per GB (10^9 bytes) over the bytes quota, when the quota action is overage."
    )
    currency = models.CharField(max_length=3, default="usd")
    flat_fee_minor = models.PositiveIntegerField(
        default=0, help_text="Fee per billing period, in minor units."
    )
    included_events = models.PositiveBigIntegerField(
        default=0, help_text="Events per period included in the flat fee."
    )
    price_per_1000_events_minor = models.PositiveIntegerField(
        default=0, help_text="Per 1,000 events over the included amount."
    )
    price_tiers = models.JSONField(
        default=list,
        blank=True,
        help_text="Graduated prices per 1,000 events over the included amount, replacing the single "
        'price when set: [{"up_to": 100000, "price_per_1000_events_minor": 150}, '
        '{"up_to": null, "price_per_1000_events_minor": 100}] (up_to counts billable events).',
    )
    included_bytes = models.PositiveBigIntegerField(
        default=0, help_text="Bytes per period included before the bandwidth price applies."
    )
    price_per_gb_minor = models.PositiveIntegerField(
        default=0, help_text="Bandwidth: per GB (10^9 bytes) delivered over the included bytes, pro rata."
    )
    billing_period = models.CharField(
        max_length=8,
        choices=BillingPeriod.choices,
        default=BillingPeriod.MONTH,
        help_text="How often the flat fee is charged and included amounts and quotas reset (UTC).",
    )

    class Meta:
        ordering = ["api", "flat_fee_minor", "name"]
        constraints = [
            # Case-insensitive: "Free" and "FREE" would read as one plan to consumers.
            models.UniqueConstraint("api", Lower("name"), name="unique_plan_name_ci"),
        ]

    def __str__(self) -> str:
        return f"{self.api.name} — {self.name}"

    @property
    def directions_counted(self) -> tuple[str, ...]:
        """The ``UsageRecord`` directions (``"out"``, ``"in"``) whose events and bytes the rate
        limit and the quotas count (``counted_directions``; anything unknown counts both)."""
        return {self.CountedDirections.OUT: ("out",), self.CountedDirections.IN: ("in",)}.get(
            self.counted_directions, ("out", "in")
        )

    @property
    def is_free(self) -> bool:
        """No flat fee, no price per 1,000 events (single or tiered), no bandwidth price and no
        overage price that could apply."""
        overage = self.quota_action == self.QuotaAction.OVERAGE and (
            (self.quota_events is not None and self.overage_price_per_1000_events_minor > 0)
            or (self.quota_bytes is not None and self.overage_price_per_gb_minor > 0)
        )
        return not (self.flat_fee_minor or self.prices_events or self.price_per_gb_minor or overage)

    @property
    def prices_events(self) -> bool:
        """Whether events over ``included_events`` cost something: a price per 1,000 events, or
        ``price_tiers`` with a tier above 0."""
        if self.price_tiers:
            return any(int(tier.get("price_per_1000_events_minor") or 0) > 0 for tier in self.price_tiers)
        return self.price_per_1000_events_minor > 0

    @property
    def approval_status(self) -> str:
        """``approved``, ``rejected`` or ``pending`` (an ``ApprovalStatus`` value)."""
        if self.is_approved:
            return self.ApprovalStatus.APPROVED
        if self.rejected_at is not None:
            return self.ApprovalStatus.REJECTED
        return self.ApprovalStatus.PENDING

    @property
    def price_model(self) -> str:
        """``free``, ``flat`` (fee per period), ``per_event`` (per 1,000 events over the
        included ones) or ``flat_and_per_event``."""
        if self.is_free:
            return "free"
        if not self.prices_events and self.flat_fee_minor:
            return "flat"
        # No per-1,000 price and no fee, yet not free: only the overage is charged, per event.
        return "per_event" if self.flat_fee_minor == 0 else "flat_and_per_event"


class Application(models.Model):
    """A consumer's application: it holds subscriptions and API keys."""

    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="applications")
    name = models.CharField(max_length=100)
    description = models.TextField(blank=True)
    created = models.DateTimeField(default=timezone.now)
    # The OAuth2 client (django-oauth-toolkit) behind the consumer key and secret: client
    # credentials grant, confidential client (RFC 6749 §4.4).
    oauth_client = models.OneToOneField(
        "oauth2_provider.Application",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="eventgate_application",
    )

    class Meta:
        ordering = ["name"]
        constraints = [models.UniqueConstraint(fields=["owner", "name"], name="unique_application_name")]

    def __str__(self) -> str:
        return self.name

    def get_absolute_url(self) -> str:
        return reverse("portal:application_detail", args=[self.pk])


class SubscriptionQuerySet(models.QuerySet["Subscription"]):
    def active(self) -> SubscriptionQuerySet:
        return self.filter(status=Subscription.Status.ACTIVE)

    def pending(self) -> SubscriptionQuerySet:
        return self.filter(status=Subscription.Status.PENDING)


class Subscription(models.Model):
    """An application's subscription to an API under a business plan.

    Usage is counted and billed per subscription. One live (pending or active)
    subscription per application and API.
    """

    class Status(models.TextChoices):
        PENDING = "pending", "Pending approval"
        ACTIVE = "active", "Active"
        REJECTED = "rejected", "Rejected"
        CANCELLED = "cancelled", "Cancelled"
        # Paused by an admin (or, later, dunning): no connections until reinstated to active.
        SUSPENDED = "suspended", "Suspended"

    application = models.ForeignKey(Application, on_delete=models.CASCADE, related_name="subscriptions")
    api = models.ForeignKey(API, on_delete=models.PROTECT, related_name="subscriptions")
    plan = models.ForeignKey(BusinessPlan, on_delete=models.PROTECT, related_name="subscriptions")
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    created = models.DateTimeField(default=timezone.now)
    decided_at = models.DateTimeField(null=True, blank=True)
    decided_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    decision_reason = models.TextField(blank=True, help_text="The admin's reason, shown to the consumer.")
    # When it went live and when it ended (cancelled or rejected), kept by ``save()`` whatever
    # changes the status: billing charges a period's flat fee only if it was live in the period.
    activated_at = models.DateTimeField(null=True, blank=True, help_text="When it first became active.")
    ended_at = models.DateTimeField(null=True, blank=True, help_text="When it was cancelled or rejected.")

    objects = SubscriptionQuerySet.as_manager()

    class Meta:
        ordering = ["-created"]
        constraints = [
            models.UniqueConstraint(
                fields=["application", "api"],
                condition=Q(status__in=["pending", "active", "suspended"]),
                name="one_live_subscription_per_application_and_api",
            )
        ]

    def __str__(self) -> str:
        return f"{self.application} → {self.api} ({self.plan.name})"

    def save(self, *args: Any, **kwargs: Any) -> None:
        """Save, stamping ``activated_at`` the first time the status is active and ``ended_at``
        when it becomes cancelled or rejected (now; or ``created`` for a subscription created in
        that state, e.g. imported history, so backdated rows stay consistent); with
        ``update_fields``, the stamped field is saved too."""
        stamped = []
        moment = self.created if self._state.adding else timezone.now()
        was_live = (self.Status.ACTIVE, self.Status.SUSPENDED, self.Status.CANCELLED)
        if self.activated_at is None and (
            self.status == self.Status.ACTIVE or (self._state.adding and self.status in was_live)
        ):
            self.activated_at = moment
            stamped.append("activated_at")
        if self.status in (self.Status.CANCELLED, self.Status.REJECTED) and self.ended_at is None:
            self.ended_at = moment
            stamped.append("ended_at")
        if stamped and kwargs.get("update_fields") is not None:
            kwargs["update_fields"] = {*kwargs["update_fields"], *stamped}
        super().save(*args, **kwargs)

    def live_between(self, start: datetime, end: datetime) -> bool:
        """Whether it was active (or suspended) at some moment of ``[start, end)``: activated
        before ``end`` and not ended by ``start``. Billing charges a period's flat fee on this."""
        return (
            self.activated_at is not None
            and self.activated_at < end
            and (self.ended_at is None or self.ended_at > start)
        )


class APIKeyQuerySet(models.QuerySet["APIKey"]):
    def usable(self) -> APIKeyQuerySet:
        """Keys that are neither revoked nor expired, of applications whose owner is active."""
        now = timezone.now()
        return self.filter(revoked_at__isnull=True, application__owner__is_active=True).filter(
            Q(expires_at__isnull=True) | Q(expires_at__gt=now)
        )

    def for_secret(self, secret: str) -> APIKey | None:
        """The usable key whose hash matches ``secret``, or None."""
        return self.usable().select_related("application").filter(key_hash=APIKey.hash_secret(secret)).first()


class APIKey(models.Model):
    """An application's API key: ``eg_`` + 40 url-safe characters, shown once, stored as SHA-256.

    Keys are random with 240 bits of entropy, so an unsalted fast hash is enough (as for
    GitHub tokens); ``prefix`` (the first 11 characters) lets a consumer tell keys apart.
    """

    PREFIX = "eg_"

    application = models.ForeignKey(Application, on_delete=models.CASCADE, related_name="api_keys")
    name = models.CharField(max_length=100, default="default")
    prefix = models.CharField(max_length=16)
    key_hash = models.CharField(max_length=64, unique=True)
    created = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    # Set on the old key when it is rotated: the key that replaced it (both work until the old
    # key's ``expires_at``, the end of the grace period).
    replaced_by = models.OneToOneField(
        "self", null=True, blank=True, on_delete=models.SET_NULL, related_name="replaces"
    )

    objects = APIKeyQuerySet.as_manager()

    class Meta:
        ordering = ["-created"]
        verbose_name = "API key"

    def __str__(self) -> str:
        return f"{self.prefix}… ({self.application})"

    @staticmethod
    def hash_secret(secret: str) -> str:
        return hashlib.sha256(secret.encode()).hexdigest()

    @classmethod
    def generate(cls, *, application: Application, name: str = "default") -> tuple[APIKey, str]:
        """Create a key for ``application``; returns ``(key, secret)``. The secret is not stored."""
        secret = cls.PREFIX + secrets.token_urlsafe(30)
        key = cls.objects.create(
            application=application, name=name, prefix=secret[:11], key_hash=cls.hash_secret(secret)
        )
        return key, secret

    @property
    def is_usable(self) -> bool:
        now = timezone.now()
        return self.revoked_at is None and (self.expires_at is None or self.expires_at > now)
