"""Input and output serializers of the REST API v1 (portal/api/), one per shape."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from django.core.exceptions import ValidationError as DjangoValidationError
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from portal.asyncapi import MAX_DOCUMENT_BYTES
from portal.models import (
    API,
    APIKey,
    APILifecycleEvent,
    APIVersion,
    Application,
    BusinessPlan,
    Channel,
    Operation,
    Subscription,
)
from portal.money import CURRENCIES
from portal.plans import (
    MAX_BYTES,
    MAX_EVENTS,
    MAX_FLAT_FEE_MINOR,
    MAX_PRICE_PER_1000_MINOR,
    MAX_PRICE_PER_GB_MINOR,
    MAX_PRICE_TIERS,
    PLAN_TEMPLATES,
    PlanTemplate,
    PriceModel,
    plan_fields_validate,
    plan_price_summary,
    plan_template,
)

PRICE_MODELS = PriceModel.CHOICES
# Bounds of numbers a client may send, so none reaches PostgreSQL out of its column's range
# (a 500): integer columns hold 2**31 - 1, bigint columns 2**63 - 1. Prices are bounded like the
# portal's plan form ($1,000,000.00 flat, $100,000.00 per 1,000 events or per GB), events to
# 10**15, bytes to 10**18 (portal.plans).
MAX_INT32 = 2**31 - 1
MAX_INT64 = 2**63 - 1

# --- catalog ---------------------------------------------------------------------------------


class PriceTierSerializer(serializers.Serializer[Any]):
    """One graduated tier of a business plan's price per 1,000 events (``price_tiers``)."""

    up_to = serializers.IntegerField(
        allow_null=True,
        help_text="Billable events (events over `included_events`) at which this tier ends: a multiple "
        "of 1,000, greater than the previous tier's; null for the last tier (no upper bound).",
    )
    price_per_1000_events_minor = serializers.IntegerField(
        help_text="Per started block of 1,000 events in this tier, in minor units (cents)."
    )


@extend_schema_field(PriceTierSerializer(many=True))
class PriceTiersField(serializers.JSONField):
    """``BusinessPlan.price_tiers`` as JSON (``[]``: the single ``price_per_1000_events_minor``);
    documented in the schema as a list of ``PriceTierSerializer``. Input is checked by
    ``portal.plans.price_tiers_errors`` (400 naming ``price_tiers/<index>/<key>``)."""


class BusinessPlanSerializer(serializers.ModelSerializer[BusinessPlan]):
    """A business plan as consumers see it: prices in minor units (cents) of ``currency`` per
    ``billing_period`` ("month" or "year", calendar, UTC): ``flat_fee_minor``, then per started
    1,000 events over ``included_events`` ``price_per_1000_events_minor`` or the graduated
    ``price_tiers``, and bandwidth over ``included_bytes`` at ``price_per_gb_minor`` per GB
    (10^9 bytes) pro rata (docs/billing.md › Pricing); ``price_summary`` says it in words. Its
    throttling policy (docs/throttling.md), null meaning unlimited: ``rate_limit_events``
    per ``rate_limit_unit`` with ``burst_events`` above it; ``quota_events`` and ``quota_bytes``
    per billing period, counting the events of ``counted_directions``;
    ``max_connections`` per subscription, ``max_connections_per_application``,
    ``max_webhook_subscriptions`` per subscription, ``max_connection_seconds``; at the quota
    ``quota_action`` stops or bills the overage at ``overage_price_per_1000_events_minor`` /
    ``overage_price_per_gb_minor``; a stopped client is told as ``limit_notice`` says."""

    is_free = serializers.BooleanField(read_only=True)
    price_model = serializers.ChoiceField(choices=PRICE_MODELS, read_only=True)
    price_tiers = PriceTiersField(read_only=True)
    price_summary = serializers.SerializerMethodField(
        help_text="The price in words, e.g. “$49.00/month · 10,000 events included · then $1.50 per "
        "1,000 events”."
    )

    class Meta:
        model = BusinessPlan
        fields = [
            "id",
            "name",
            "description",
            "requires_approval",
            "currency",
            "billing_period",
            "flat_fee_minor",
            "included_events",
            "price_per_1000_events_minor",
            "price_tiers",
            "included_bytes",
            "price_per_gb_minor",
            "is_free",
            "price_model",
            "price_summary",
            *BusinessPlan.POLICY_FIELDS,
        ]
        read_only_fields = fields

    def get_price_summary(self, plan: BusinessPlan) -> str:
        return str(plan_price_summary(plan))


class BusinessPlanOwnerSerializer(BusinessPlanSerializer):
    """A plan as its provider (and admins) see it: also where the admin's approval stands and
    the reason they gave (``decision_reason``, shown to the provider when rejected)."""

    approval_status = serializers.ChoiceField(choices=BusinessPlan.ApprovalStatus.choices, read_only=True)
    api = serializers.SlugRelatedField(slug_field="slug", read_only=True)

    class Meta(BusinessPlanSerializer.Meta):
        fields = [
            *BusinessPlanSerializer.Meta.fields,
            "api",
            "approval_status",
            "decided_at",
            "decision_reason",
        ]
        read_only_fields = fields


class PlanCreateSerializer(serializers.Serializer[Any]):
    """A new business plan; an admin approves it before consumers can pick it.

    ``template`` (a key of ``GET /api/v1/plan-templates/``) fills the fields it defines; fields
    given here win. Prices are integer minor units (cents), bounded like the portal's plan form
    so the billing ledger can hold them; limits are events (or bytes, or seconds), null for
    unlimited. The policy's coherence (``portal.plans.plan_fields_validate``) answers 400 with
    the fields at fault.
    """

    template = serializers.CharField(required=False, max_length=50, help_text="A plan template key.")
    name = serializers.CharField(max_length=100, required=False, help_text="Required without a template.")
    description = serializers.CharField(required=False, allow_blank=True, max_length=5000)
    requires_approval = serializers.BooleanField(
        required=False, help_text="Subscriptions under this plan wait for an admin's approval."
    )
    price_model = serializers.ChoiceField(
        choices=PRICE_MODELS,
        required=False,
        help_text="When given, the amounts must fit it (`flat`: a flat fee, no per-event price).",
    )
    currency = serializers.ChoiceField(
        choices=CURRENCIES,
        required=False,
        help_text="ISO 4217 code, lower case (default `usd`): the plan's prices are minor units of it.",
    )
    billing_period = serializers.ChoiceField(
        choices=BusinessPlan.BillingPeriod.choices,
        required=False,
        help_text="`month` (default) or `year` (calendar, UTC): how often the flat fee is charged and the "
        "included events, included bytes and quotas start again.",
    )
    flat_fee_minor = serializers.IntegerField(
        required=False, min_value=0, max_value=MAX_FLAT_FEE_MINOR, help_text="Per billing period."
    )
    included_events = serializers.IntegerField(required=False, min_value=0, max_value=MAX_EVENTS)
    price_per_1000_events_minor = serializers.IntegerField(
        required=False,
        min_value=0,
        max_value=MAX_PRICE_PER_1000_MINOR,
        help_text="Per started block of 1,000 events over `included_events`; 0 when `price_tiers` is set.",
    )
    price_tiers = PriceTiersField(
        required=False,
        allow_null=True,
        help_text=f"Graduated prices replacing `price_per_1000_events_minor`: 1 to {MAX_PRICE_TIERS} "
        '`{"up_to": <billable events, multiple of 1,000, increasing>, "price_per_1000_events_minor": '
        "<cents>}`, the last with `up_to` null. `[]` or null: none. A fault answers 400 naming its JSON "
        "pointer, e.g. `price_tiers/1/up_to`.",
    )
    included_bytes = serializers.IntegerField(
        required=False,
        min_value=0,
        max_value=MAX_BYTES,
        help_text="Bytes per billing period delivered before `price_per_gb_minor` applies.",
    )
    price_per_gb_minor = serializers.IntegerField(
        required=False,
        min_value=0,
        max_value=MAX_PRICE_PER_GB_MINOR,
        help_text="Bandwidth: per GB (10^9 bytes) delivered over `included_bytes`, pro rata, rounded up.",
    )
    rate_limit_events = serializers.IntegerField(
        required=False, allow_null=True, min_value=1, max_value=MAX_INT32
    )
    rate_limit_unit = serializers.ChoiceField(choices=BusinessPlan.RateUnit.choices, required=False)
    burst_events = serializers.IntegerField(required=False, allow_null=True, min_value=1, max_value=MAX_INT32)
    quota_events = serializers.IntegerField(
        required=False, allow_null=True, min_value=1, max_value=MAX_EVENTS
    )
    quota_bytes = serializers.IntegerField(required=False, allow_null=True, min_value=1, max_value=MAX_INT64)
    max_connections = serializers.IntegerField(
        required=False, allow_null=True, min_value=1, max_value=MAX_INT32
    )
    counted_directions = serializers.ChoiceField(
        choices=BusinessPlan.CountedDirections.choices,
        required=False,
        help_text="Events the rate limit and quotas count: `both` (default), `out` (server → client), "
        "`in` (client → server).",
    )
    max_connections_per_application = serializers.IntegerField(
        required=False,
        allow_null=True,
        min_value=1,
        max_value=MAX_INT32,
        help_text="Concurrent connections per application over all its subscriptions.",
    )
    max_webhook_subscriptions = serializers.IntegerField(
        required=False, allow_null=True, min_value=1, max_value=MAX_INT32, help_text="Per subscription."
    )
    max_connection_seconds = serializers.IntegerField(
        required=False,
        allow_null=True,
        min_value=1,
        max_value=MAX_INT32,
        help_text="A connection is closed (4408) after this many seconds; the client may reconnect.",
    )
    quota_action = serializers.ChoiceField(
        choices=BusinessPlan.QuotaAction.choices,
        required=False,
        help_text="At a quota: `stop` (default) or `overage` (keep delivering, bill the excess; needs a "
        "quota and its overage price).",
    )
    limit_notice = serializers.ChoiceField(
        choices=BusinessPlan.LimitNotice.choices,
        required=False,
        help_text="How a stopped client is told: `notify` (default; a notice, the connection stays) or "
        "`close` (close code 4429).",
    )
    overage_price_per_1000_events_minor = serializers.IntegerField(
        required=False,
        min_value=0,
        max_value=MAX_PRICE_PER_1000_MINOR,
        help_text="Per 1,000 events over `quota_events`, with `quota_action` `overage`.",
    )
    overage_price_per_gb_minor = serializers.IntegerField(
        required=False,
        min_value=0,
        max_value=MAX_PRICE_PER_1000_MINOR,
        help_text="Per GB (10^9 bytes) over `quota_bytes`, with `quota_action` `overage`.",
    )

    def validate_template(self, key: str) -> PlanTemplate:
        template = plan_template(key)
        if template is None:
            keys = ", ".join(template.key for template in PLAN_TEMPLATES)
            raise serializers.ValidationError(f"There is no plan template “{key}”; choose one of: {keys}.")
        return template

    def validate_price_tiers(self, tiers: Any) -> Any:
        # null reads as "no tiers"; the tiers' rules are portal.plans' (plan_create applies them).
        return [] if tiers is None else tiers

    def validate(self, data: dict[str, Any]) -> dict[str, Any]:
        if not data.get("name") and "template" not in data:
            raise serializers.ValidationError({"name": "Give the plan a name, or start from a template."})
        # The plan's coherence, as the portal's form checks it before ``plan_create`` (which
        # checks it again): 400 naming each field at fault, ``price_tiers/<i>/<key>`` included.
        fields = self._merged(data)
        try:
            plan_fields_validate(fields, price_model=fields.pop("price_model", None))
        except DjangoValidationError as error:
            raise serializers.ValidationError(error.message_dict) from None
        return data

    def plan_fields(self) -> dict[str, Any]:
        """``BusinessPlan`` field values (with ``name``), the template's first, then the body's."""
        return self._merged(self.validated_data)

    @staticmethod
    def _merged(data: Mapping[str, Any]) -> dict[str, Any]:
        data = dict(data)
        template: PlanTemplate | None = data.pop("template", None)
        fields: dict[str, Any] = {}
        if template is not None:
            fields.update(name=template.name, description=template.description, **template.fields)
        fields.update(data)
        return fields


class PlanTemplateSerializer(serializers.Serializer[Any]):
    """A shipped plan template (like WSO2 API Manager's async tiers); ``fields`` are
    ``BusinessPlan`` field values to start a plan from."""

    key = serializers.CharField()
    name = serializers.CharField()
    description = serializers.CharField()
    fields = serializers.DictField(child=serializers.JSONField())


class OperationSerializer(serializers.ModelSerializer[Operation]):
    """What a consumer may do on a channel (``receive`` or ``send``) and with which messages."""

    class Meta:
        model = Operation
        fields = ["key", "action", "summary", "messages"]
        read_only_fields = fields


class ChannelSerializer(serializers.ModelSerializer[Channel]):
    operations = OperationSerializer(many=True, read_only=True)

    class Meta:
        model = Channel
        fields = ["key", "address", "title", "description", "parameters", "bindings", "operations"]
        read_only_fields = fields


class APIVersionSummarySerializer(serializers.ModelSerializer[APIVersion]):
    """One version of an API in a list: ``status`` is draft, published, deprecated or retired."""

    class Meta:
        model = APIVersion
        fields = ["version", "asyncapi_version", "status", "created", "protocols"]
        read_only_fields = fields


class APIVersionSerializer(serializers.ModelSerializer[APIVersion]):
    """A version with its channels, operations and messages, servers (by name: ``host``,
    ``protocol``, ``pathname``, ...), security schemes, tags and protocols as the document
    declares them (the consumer-facing document is at ``.../asyncapi``)."""

    api = serializers.SlugRelatedField(slug_field="slug", read_only=True)
    channels = ChannelSerializer(many=True, read_only=True)

    class Meta:
        model = APIVersion
        fields = [
            "api",
            "version",
            "asyncapi_version",
            "status",
            "created",
            "protocols",
            "tags",
            "servers",
            "security_schemes",
            "validate_payloads",
            "channels",
        ]
        read_only_fields = fields


class PlanSummarySerializer(serializers.ModelSerializer[BusinessPlan]):
    price_model = serializers.ChoiceField(choices=PRICE_MODELS, read_only=True)

    class Meta:
        model = BusinessPlan
        fields = ["id", "name", "price_model", "requires_approval"]
        read_only_fields = fields


class APIListSerializer(serializers.ModelSerializer[API]):
    """An API in the catalog. ``status`` is published, deprecated (no new subscriptions) or
    blocked (connections refused); the view prefetches ``live_versions`` and ``approved_plans``."""

    latest_version = serializers.SerializerMethodField()
    provider = serializers.CharField(
        source="provider.public_name",
        read_only=True,
        help_text="The provider's public name (never an email).",
    )
    plans = PlanSummarySerializer(source="approved_plans", many=True, read_only=True)

    class Meta:
        model = API
        fields = [
            "slug",
            "name",
            "summary",
            "status",
            "provider",
            "tags",
            "protocols",
            "latest_version",
            "plans",
        ]
        read_only_fields = fields

    def get_latest_version(self, api: API) -> str | None:
        versions = getattr(api, "live_versions", None)
        version = versions[0] if versions else (None if versions is not None else api.latest_version())
        return version.version if version else None


class APIDetailSerializer(serializers.ModelSerializer[API]):
    """An API with its latest live version in full (set by the view as ``api.latest``), all
    versions the reader may see (``api.visible_versions``) and its plans (``api.visible_plans``:
    approved ones; every plan with its approval for the owner). Prices in minor units."""

    provider = serializers.CharField(
        source="provider.public_name",
        read_only=True,
        help_text="The provider's public name (never an email).",
    )
    version = APIVersionSerializer(source="latest", read_only=True, allow_null=True)
    versions = APIVersionSummarySerializer(source="visible_versions", many=True, read_only=True)
    plans = BusinessPlanSerializer(source="visible_plans", many=True, read_only=True)

    class Meta:
        model = API
        fields = [
            "slug",
            "name",
            "summary",
            "description",
            "status",
            "status_changed_at",
            "provider",
            "tags",
            "protocols",
            "version",
            "versions",
            "plans",
        ]
        read_only_fields = fields


class ProviderAPISerializer(serializers.ModelSerializer[API]):
    """One of the provider's own APIs, in any lifecycle state, with all versions and plans."""

    versions = APIVersionSummarySerializer(source="all_versions", many=True, read_only=True)
    plans = BusinessPlanOwnerSerializer(source="all_plans", many=True, read_only=True)

    class Meta:
        model = API
        fields = [
            "slug",
            "name",
            "summary",
            "status",
            "status_changed_at",
            "tags",
            "protocols",
            "versions",
            "plans",
        ]
        read_only_fields = fields


class CatalogQuerySerializer(serializers.Serializer[Any]):
    """Query parameters of the catalog search; all optional, combined with AND."""

    q = serializers.CharField(
        required=False,
        default="",
        max_length=200,
        help_text="Words in name, summary, description, tags or channel addresses.",
    )
    tag = serializers.CharField(required=False, default="", max_length=100)
    protocol = serializers.CharField(
        required=False, default="", max_length=50, help_text="e.g. ws, mqtt, kafka"
    )
    provider = serializers.CharField(
        required=False, default="", max_length=254, help_text="Provider email or id."
    )
    status = serializers.ChoiceField(
        choices=[(value, API.Status(value).label) for value in API.LISTED_STATUSES],
        required=False,
        default="",
    )


class LifecycleTransitionSerializer(serializers.Serializer[Any]):
    """A lifecycle move: the state to go to and why (recorded with who and when)."""

    status = serializers.CharField(max_length=16, help_text="The state to move to.")
    reason = serializers.CharField(required=False, default="", allow_blank=True, max_length=2000)


class LifecycleEventSerializer(serializers.ModelSerializer[APILifecycleEvent]):
    """One recorded lifecycle move; ``version`` is null for a move of the whole API."""

    version = serializers.SlugRelatedField(source="api_version", slug_field="version", read_only=True)
    actor = serializers.SlugRelatedField(slug_field="email", read_only=True)

    class Meta:
        model = APILifecycleEvent
        fields = ["version", "from_status", "to_status", "actor", "reason", "at"]
        read_only_fields = fields


# --- import ----------------------------------------------------------------------------------


class APIImportUploadSerializer(serializers.Serializer[Any]):
    """Multipart upload of an AsyncAPI document, or of a .zip holding it and the files its
    ``$ref``s point to; ``api`` (a slug of yours) adds a new version."""

    file = serializers.FileField(
        help_text=f"YAML, JSON or a .zip of several files, at most {MAX_DOCUMENT_BYTES // (1024 * 1024)} MB "
        "(larger answers 413)."
    )
    api = serializers.SlugField(
        required=False, help_text="Slug of your API to add this document as a new version."
    )


class APIImportTextSerializer(serializers.Serializer[Any]):
    """An AsyncAPI document (YAML or JSON text) in a JSON body."""

    filename = serializers.CharField(max_length=255, required=False, default="asyncapi.yaml")
    content = serializers.CharField(
        trim_whitespace=False,
        help_text=f"YAML or JSON text, at most {MAX_DOCUMENT_BYTES // (1024 * 1024)} MB as UTF-8 "
        "(larger answers 413); use a multipart upload for large documents.",
    )
    api = serializers.SlugField(
        required=False, help_text="Slug of your API to add this document as a new version."
    )


class APIImportProblemSerializer(serializers.Serializer[Any]):
    """One problem in a refused document: ``pointer`` is a JSON pointer (RFC 6901, ``""`` for
    the whole document), ``line`` 1-based in ``file`` (a zip upload's inner file) or null."""

    error = serializers.CharField()
    pointer = serializers.CharField(allow_blank=True)
    line = serializers.IntegerField(allow_null=True)
    file = serializers.CharField(allow_blank=True)


class APIImportErrorSerializer(APIImportProblemSerializer):
    """Why a document was refused (400, or 413 when too large). The top-level keys are the main
    problem; on a 400 ``errors`` lists every problem reported, the main one first: schema
    violations up to 20 (one per location, the rest in file and line order), any other refusal
    just the one. A 413 has no ``errors``."""

    errors = APIImportProblemSerializer(
        many=True,
        required=False,
        help_text="Every problem reported, the main one first (400 only): up to 20 schema "
        "violations, one per JSON pointer, the others in file and line order.",
    )


# --- applications, subscriptions, keys ---------------------------------------------------------


class SubscriptionSerializer(serializers.ModelSerializer[Subscription]):
    """A subscription: ``status`` pending (awaiting an admin), active, rejected (see
    ``decision_reason``) or cancelled."""

    api = serializers.SlugRelatedField(slug_field="slug", read_only=True)
    plan = BusinessPlanSerializer(read_only=True)

    class Meta:
        model = Subscription
        fields = ["id", "application", "api", "plan", "status", "created", "decided_at", "decision_reason"]
        read_only_fields = fields


class PlanPolicySerializer(serializers.ModelSerializer[BusinessPlan]):
    """A plan's throttling policy (``BusinessPlanSerializer``'s limit fields), null = unlimited;
    the quotas count per billing period (``LimitPeriodSerializer.billing_period``)."""

    class Meta:
        model = BusinessPlan
        fields = [
            *BusinessPlan.POLICY_FIELDS,
            "currency",
        ]
        read_only_fields = fields


class LimitWindowSerializer(serializers.Serializer[Any]):
    """One live counter of the subscription in Redis, as the gateway takes from it (leases
    included, so ``used`` may run slightly ahead of what was delivered)."""

    limit = serializers.ChoiceField(
        choices=["rate", "burst", "quota", "bytes"],
        help_text="`rate` (rate + burst per unit), `burst` (the sustained rate over 10 units), "
        "`quota` (events this billing period), `bytes` (bytes this billing period).",
    )
    label = serializers.CharField(help_text="The counter in words.")
    measure = serializers.ChoiceField(choices=["events", "bytes"])
    unit = serializers.CharField(
        help_text="The window: `minute`, `10 minutes`, …; `month` or `year` for the quotas (the plan's "
        "billing period)."
    )
    allowed = serializers.IntegerField(help_text="Events (or bytes) the window allows.")
    used = serializers.IntegerField()
    remaining = serializers.IntegerField()
    percent_used = serializers.FloatField(allow_null=True)
    resets_at = serializers.DateTimeField(
        allow_null=True, help_text="When the window starts afresh; null while it has not started."
    )


class LimitPeriodSerializer(serializers.Serializer[Any]):
    """The billing period (the plan's ``billing_period``: calendar month or year, UTC) so far, from
    analytics: ``events``/``bytes`` delivered in the counted directions (what billing charges),
    ``throttled_*`` stopped by the policy (never billed); quotas and what remains of them (null
    = no quota)."""

    billing_period = serializers.ChoiceField(
        choices=BusinessPlan.BillingPeriod.choices,
        required=False,
        help_text="`month` or `year`: the plan's billing period (absent where the period is always the "
        "calendar month).",
    )
    start = serializers.DateTimeField()
    end = serializers.DateTimeField(help_text="Exclusive: the next period's start.")
    directions = serializers.ListField(child=serializers.ChoiceField(choices=["out", "in"]))
    events = serializers.IntegerField()
    bytes = serializers.IntegerField()
    throttled_events = serializers.IntegerField()
    throttled_bytes = serializers.IntegerField()
    quota_events = serializers.IntegerField(allow_null=True)
    events_remaining = serializers.IntegerField(allow_null=True)
    events_percent = serializers.FloatField(allow_null=True)
    quota_bytes = serializers.IntegerField(allow_null=True)
    bytes_remaining = serializers.IntegerField(allow_null=True)
    bytes_percent = serializers.FloatField(allow_null=True)
    overage_events = serializers.IntegerField(help_text="Events over the events quota (billed as overage).")
    overage_bytes = serializers.IntegerField(help_text="Bytes over the bytes quota (billed as overage).")
    quota_action = serializers.ChoiceField(choices=BusinessPlan.QuotaAction.choices)


class SubscriptionLimitsSerializer(serializers.Serializer[Any]):
    """A subscription's throttling policy, its live windows and its billing period so far
    (``portal.services.limits.subscription_limits``). ``redis_available`` false: the live
    counters could not be read, ``windows`` is empty."""

    subscription = serializers.IntegerField()
    plan = serializers.CharField()
    policy = PlanPolicySerializer()
    windows = LimitWindowSerializer(many=True)
    period = LimitPeriodSerializer()
    redis_available = serializers.BooleanField()


class SubscriptionCreateSerializer(serializers.Serializer[Any]):
    plan = serializers.PrimaryKeyRelatedField(
        queryset=BusinessPlan.objects.all(), help_text="Id of an approved plan of a published API."
    )


class APIKeySerializer(serializers.ModelSerializer[APIKey]):
    """An API key without its secret: ``prefix`` (first 11 characters) tells keys apart.
    ``replaced_by``: the id of the key that replaced it by rotation (this one then works until
    ``expires_at``, the end of the grace period)."""

    class Meta:
        model = APIKey
        fields = ["id", "name", "prefix", "created", "expires_at", "revoked_at", "replaced_by"]
        read_only_fields = fields


class APIKeyCreateSerializer(serializers.Serializer[Any]):
    """A new key's name and expiry: ``expires_in_days`` or ``expires_at``, or neither (never)."""

    name = serializers.CharField(max_length=100, required=False, default="default")
    expires_in_days = serializers.IntegerField(
        required=False, allow_null=True, min_value=1, max_value=5 * 365, help_text="e.g. 30, 90 or 365."
    )
    expires_at = serializers.DateTimeField(
        required=False, allow_null=True, help_text="ISO 8601; in the future, at most 5 years away."
    )

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        if attrs.get("expires_in_days") is not None and attrs.get("expires_at") is not None:
            raise serializers.ValidationError({"expires_at": "Give expires_in_days or expires_at, not both."})
        return attrs


class APIKeyCreatedSerializer(APIKeySerializer):
    """A new API key with its secret ``key``, shown this once and never stored."""

    key = serializers.CharField(read_only=True)

    class Meta(APIKeySerializer.Meta):
        fields = ["key", *APIKeySerializer.Meta.fields]
        read_only_fields = fields


class ApplicationSerializer(serializers.ModelSerializer[Application]):
    class Meta:
        model = Application
        fields = ["id", "name", "description", "created"]
        read_only_fields = ["id", "created"]
        # Uniqueness per owner is the service's rule (application_create), with its own message.
        validators: list[Any] = []


class ApplicationDetailSerializer(ApplicationSerializer):
    subscriptions = SubscriptionSerializer(many=True, read_only=True)
    api_keys = APIKeySerializer(many=True, read_only=True)

    class Meta(ApplicationSerializer.Meta):
        fields = [*ApplicationSerializer.Meta.fields, "subscriptions", "api_keys"]


class ApplicationUpdateSerializer(serializers.Serializer[Any]):
    """New name and/or description of an application (PATCH: give only what changes)."""

    name = serializers.CharField(max_length=100, required=False)
    description = serializers.CharField(required=False, allow_blank=True, max_length=5000)


# --- approvals -----------------------------------------------------------------------------------


class DecisionSerializer(serializers.Serializer[Any]):
    """An admin's approval, with an optional note for the requester."""

    reason = serializers.CharField(required=False, default="", allow_blank=True, max_length=2000)


class RejectionSerializer(serializers.Serializer[Any]):
    """An admin's rejection; the reason is required and shown to the requester."""

    reason = serializers.CharField(max_length=2000, help_text="Shown to the provider or consumer.")


class PendingSubscriptionSerializer(SubscriptionSerializer):
    """A subscription awaiting an admin, with who asked for it."""

    application_name = serializers.CharField(source="application.name", read_only=True)
    consumer = serializers.EmailField(source="application.owner.email", read_only=True)

    class Meta(SubscriptionSerializer.Meta):
        fields = [*SubscriptionSerializer.Meta.fields, "application_name", "consumer"]
        read_only_fields = fields


class PendingPlanSerializer(BusinessPlanOwnerSerializer):
    """A business plan awaiting an admin, with its provider."""

    provider = serializers.EmailField(source="api.provider.email", read_only=True)

    class Meta(BusinessPlanOwnerSerializer.Meta):
        fields = [*BusinessPlanOwnerSerializer.Meta.fields, "provider"]
        read_only_fields = fields


class ApprovalQueueSerializer(serializers.Serializer[Any]):
    """What awaits an admin: plans to offer or refuse, subscriptions to allow or refuse."""

    plans = PendingPlanSerializer(many=True)
    subscriptions = PendingSubscriptionSerializer(many=True)


# --- credentials (docs/credentials.md) -------------------------------------------------------------


class APIKeyRotateSerializer(serializers.Serializer[Any]):
    """How long the old key keeps working next to its replacement."""

    grace_seconds = serializers.IntegerField(
        required=False,
        default=86400,
        min_value=0,
        max_value=30 * 86400,
        help_text="Seconds both keys work (default 86400 = 24 h; 0 ends the old key now).",
    )


class APIKeyRotatedSerializer(serializers.Serializer[Any]):
    """The new key with its secret ``key`` (shown this once) and the old key, now ending."""

    key = serializers.CharField(read_only=True, help_text="The new key's secret, shown this once.")
    new_key = APIKeySerializer(read_only=True)
    old_key = APIKeySerializer(read_only=True)


class OAuthClientSerializer(serializers.Serializer[Any]):
    """An application's OAuth2 client: consumer key, token endpoint and the scopes it may ask for."""

    client_id = serializers.CharField(read_only=True, help_text="The consumer key.")
    created = serializers.DateTimeField(read_only=True)
    token_url = serializers.URLField(read_only=True, help_text="POST grant_type=client_credentials here.")
    scopes_available = serializers.ListField(child=serializers.CharField(), read_only=True)


class OAuthClientSecretSerializer(OAuthClientSerializer):
    """The OAuth2 client with its new ``client_secret``, shown this once and stored hashed."""

    client_secret = serializers.CharField(read_only=True)


class AccessTokenSerializer(serializers.Serializer[Any]):
    """An access token issued to the application's client, without the token itself."""

    id = serializers.IntegerField(read_only=True)
    scopes = serializers.SerializerMethodField()
    created = serializers.DateTimeField(read_only=True)
    expires = serializers.DateTimeField(read_only=True)

    def get_scopes(self, token: Any) -> list[str]:
        return str(token.scope).split()
