"""Input and output serializers of the REST API v1 (portal/api.py), one per shape."""

from __future__ import annotations

from typing import Any

from rest_framework import serializers

from portal.asyncapi import MAX_DOCUMENT_BYTES
from portal.models import API, APIKey, APIVersion, Application, BusinessPlan, Channel, Operation, Subscription

# --- catalog ---------------------------------------------------------------------------------


class BusinessPlanSerializer(serializers.ModelSerializer[BusinessPlan]):
    """A business plan; prices in minor units (cents) of ``currency``, usage in events."""

    is_free = serializers.BooleanField(read_only=True)

    class Meta:
        model = BusinessPlan
        fields = [
            "id",
            "name",
            "description",
            "requires_approval",
            "currency",
            "flat_fee_minor",
            "included_events",
            "price_per_1000_events_minor",
            "is_free",
        ]
        read_only_fields = fields


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


class APIVersionSerializer(serializers.ModelSerializer[APIVersion]):
    api = serializers.SlugRelatedField(slug_field="slug", read_only=True)
    channels = ChannelSerializer(many=True, read_only=True)

    class Meta:
        model = APIVersion
        fields = ["api", "version", "asyncapi_version", "status", "created", "channels"]
        read_only_fields = fields


class APIListSerializer(serializers.ModelSerializer[API]):
    latest_version = serializers.SerializerMethodField()

    class Meta:
        model = API
        # Only published APIs are listed, so there is no status to show.
        fields = ["slug", "name", "summary", "latest_version"]
        read_only_fields = fields

    def get_latest_version(self, api: API) -> str | None:
        version = api.latest_version()
        return version.version if version else None


class APIDetailSerializer(serializers.ModelSerializer[API]):
    """A published API with its latest published version (set by the view as ``api.latest``) and
    its approved plans (``api.approved_plans``); plan prices in minor units."""

    version = APIVersionSerializer(source="latest", read_only=True)
    plans = BusinessPlanSerializer(source="approved_plans", many=True, read_only=True)

    class Meta:
        model = API
        fields = ["slug", "name", "summary", "description", "version", "plans"]
        read_only_fields = fields


# --- import ----------------------------------------------------------------------------------


class APIImportUploadSerializer(serializers.Serializer[Any]):
    """Multipart upload of an AsyncAPI document; ``api`` (a slug of yours) adds a new version."""

    file = serializers.FileField(
        help_text=f"YAML or JSON, at most {MAX_DOCUMENT_BYTES // (1024 * 1024)} MB (larger answers 413)."
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


class APIImportErrorSerializer(serializers.Serializer[Any]):
    """Why a document was refused (400, or 413 when too large): ``pointer`` is a JSON pointer
    (RFC 6901, ``""`` for the whole document), ``line`` 1-based in the file or null."""

    error = serializers.CharField()
    pointer = serializers.CharField(allow_blank=True)
    line = serializers.IntegerField(allow_null=True)
    file = serializers.CharField(allow_blank=True)


# --- applications, subscriptions, keys ---------------------------------------------------------


class SubscriptionSerializer(serializers.ModelSerializer[Subscription]):
    api = serializers.SlugRelatedField(slug_field="slug", read_only=True)
    plan = BusinessPlanSerializer(read_only=True)

    class Meta:
        model = Subscription
        fields = ["id", "application", "api", "plan", "status", "created", "decided_at"]
        read_only_fields = fields


class SubscriptionCreateSerializer(serializers.Serializer[Any]):
    plan = serializers.PrimaryKeyRelatedField(queryset=BusinessPlan.objects.all())


class APIKeySerializer(serializers.ModelSerializer[APIKey]):
    """An API key without its secret: ``prefix`` (first 11 characters) tells keys apart."""

    class Meta:
        model = APIKey
        fields = ["id", "name", "prefix", "created", "expires_at", "revoked_at"]
        read_only_fields = fields


class APIKeyCreateSerializer(serializers.Serializer[Any]):
    name = serializers.CharField(max_length=100, required=False, default="default")


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
