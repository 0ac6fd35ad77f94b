"""APIs and their versions: importing AsyncAPI documents and publishing."""

from __future__ import annotations

import unicodedata
from typing import Any

from django.core.exceptions import PermissionDenied, ValidationError
from django.db import IntegrityError, transaction
from django.utils.text import slugify

from portal.asyncapi import AsyncAPIError, ParsedDocument, first_sentence, parse_document
from portal.models import API, APIVersion, Channel, Operation, User
from portal.services.lifecycle import api_publish_version

_SLUG_MAX = API._meta.get_field("slug").max_length or 100
_SUMMARY_MAX = API._meta.get_field("summary").max_length or 300


def api_import(*, provider: User, content: bytes | str, filename: str, api: API | None = None) -> APIVersion:
    """Import an AsyncAPI document as a new draft API, or a new version of ``api``.

    ``content`` is one YAML or JSON document, or the bytes of a .zip holding the document and
    the files it refers to (see ``portal.asyncapi.parse_document``). Without ``api``: creates an
    API named after ``info.title`` with a unique slug derived from it, ``summary`` = the first
    sentence of ``info.description``, status draft. With ``api``: adds a version to it. Either
    way the version (``info.version``, draft) stores the self-contained document (other files
    and remote refs bundled in), the root file's text in ``source`` and the others in
    ``source_files``, its servers, security schemes, tags and protocols, and gets one Channel per
    channel and one Operation per consumer action (see ``portal.asyncapi.parser``). The API's
    ``tags`` and ``protocols`` stay those of its newest live version (a draft must not change
    what the catalog shows; ``API.refresh_tags_and_protocols``), and are this version's only
    while the API has no live one. Everything happens in one transaction: on any error nothing
    is stored.

    A new API is refused when ``provider`` already has one (not retired) of the same name in any
    letter case: two catalog entries with one title are a mistake far more often than a wish,
    and WSO2 API Manager refuses a duplicate name too. A retired ``api`` takes no new versions.

    Every entry point comes through here, so this is where the size limit holds: ``content`` may
    be at most ``MAX_DOCUMENT_BYTES`` (bytes, or UTF-8 bytes of text; for a zip, of the archive
    and of its files uncompressed).

    Raises:
        AsyncAPIError: the document is unreadable, unsupported or invalid (see
            ``parse_document``), or ``api`` already has a version ``info.version``, or ``api``
            is retired (no pointer); ``DocumentTooLargeError`` (a subclass) when it or its
            expansion is too large; ``DuplicateAPIError`` (a subclass, at ``/info/title``) when
            the provider already has an API of that name.
        PermissionDenied: ``provider`` may not publish APIs, or ``api`` is another provider's.
    """
    if not provider.is_provider:
        raise PermissionDenied("Only providers can import APIs.")
    if api is not None and api.provider_id != provider.pk:
        raise PermissionDenied("This API belongs to another provider.")
    filename = _storable_filename(filename)
    if api is not None and api.status == API.Status.RETIRED:
        # Checked before parsing too, so the provider is not asked to fix a document for nothing.
        raise _api_retired(api, filename)
    parsed = parse_document(content=content, filename=filename)
    for attempt in range(3):
        try:
            with transaction.atomic():
                return _version_create(provider=provider, api=api, parsed=parsed, filename=filename)
        except IntegrityError:
            # A concurrent import took the slug (new API) or the version (existing API) between
            # our check and our insert; a retry picks another slug or reports the version.
            if attempt == 2:
                raise
    raise AssertionError("unreachable")


def provider_organization_set(*, provider: User, organization: str) -> User:
    """Set the name consumers see as the provider of ``provider``'s APIs (``User.public_name``);
    ``""`` falls back to the email's domain. At most 100 characters (the form checks).

    Raises ``ValidationError`` (field ``organization``) for a name with ``@`` (an email address
    would be shown to everyone) or one another user already has in any letter case (consumers
    could not tell the two providers apart, and one could pass for the other).
    """
    organization = organization.strip()[:100]
    if "@" in organization:
        raise ValidationError({"organization": "Use a company or team name, not an email address."})
    taken = ValidationError({"organization": f"Another provider is already called “{organization}”."})
    if (
        organization
        and User.objects.filter(organization__iexact=organization).exclude(pk=provider.pk).exists()
    ):
        raise taken
    provider.organization = organization
    try:
        with transaction.atomic():  # unique_organization_ci: a concurrent request took it first
            provider.save(update_fields=["organization"])
    except IntegrityError:
        provider.refresh_from_db(fields=["organization"])
        raise taken from None
    return provider


def _storable_filename(filename: str) -> str:
    """The upload's name without control characters or lone surrogates, which PostgreSQL
    cannot store (a multipart name or a JSON ``filename`` may hold anything)."""
    cleaned = "".join(char for char in filename if unicodedata.category(char) not in ("Cc", "Cs"))
    return cleaned[:255]


class DuplicateAPIError(AsyncAPIError):
    """The provider already has an API named as the document's ``info.title``; ``existing`` is
    that API, so a page can offer to import the document as a new version of it."""

    def __init__(self, message: str, *, existing: API, **where: Any) -> None:
        super().__init__(message, **where)
        self.existing = existing


def _version_create(*, provider: User, api: API | None, parsed: ParsedDocument, filename: str) -> APIVersion:
    if api is None:
        _check_title_free(provider=provider, parsed=parsed, filename=filename)
        api = _api_create(provider=provider, parsed=parsed)
    else:
        # Locked, so the API cannot be retired between this check and the new version's insert.
        api = API.objects.select_for_update().get(pk=api.pk)
        if api.status == API.Status.RETIRED:
            raise _api_retired(api, filename)
        if api.versions.filter(version=parsed.version).exists():
            raise _version_exists(api, parsed, filename)
    version = APIVersion.objects.create(
        api=api,
        version=parsed.version,
        asyncapi_version=parsed.asyncapi_version,
        document=parsed.document,
        source=parsed.source,
        source_filename=filename[:255],
        source_files=parsed.source_files,
        servers=parsed.servers,
        security_schemes=parsed.security_schemes,
        tags=parsed.tags,
        protocols=parsed.protocols,
    )
    # Catalog cards and filters read these; a draft version changes them only while nothing is live.
    api.refresh_tags_and_protocols()
    _channels_create(version=version, parsed=parsed)
    return version


def _check_title_free(*, provider: User, parsed: ParsedDocument, filename: str) -> None:
    existing = (
        API.objects.filter(provider=provider, name__iexact=parsed.title.strip())
        .exclude(status=API.Status.RETIRED)
        .order_by("created")
        .first()
    )
    if existing is not None:
        raise DuplicateAPIError(
            f"you already have an API called “{existing.name}” (slug {existing.slug}); import this "
            "document as a new version of it instead, or change info.title to create a separate API",
            existing=existing,
            pointer="/info/title",
            line=parsed.line_of("/info/title"),
            filename=filename,
        )


def _api_retired(api: API, filename: str) -> AsyncAPIError:
    return AsyncAPIError(
        f"{api.name} is retired and takes no new versions; import the document without choosing "
        "an API to create a new one",
        filename=filename,
    )


def _version_exists(api: API, parsed: ParsedDocument, filename: str) -> AsyncAPIError:
    return AsyncAPIError(
        f'{api.name} already has a version "{parsed.version}"; change info.version to import a new one',
        pointer="/info/version",
        line=parsed.line_of("/info/version"),
        filename=filename,
    )


# Slugs that would collide with portal URLs such as /provider/apis/import/.
RESERVED_SLUGS = frozenset({"import", "new", "api", "apis"})


def _api_create(*, provider: User, parsed: ParsedDocument) -> API:
    base = slugify(parsed.title)[: _SLUG_MAX - 4].strip("-") or "api"
    slug, number = base, 1
    while slug in RESERVED_SLUGS or API.objects.filter(slug=slug).exists():
        number += 1
        slug = f"{base[: _SLUG_MAX - len(str(number)) - 1]}-{number}"
    return API.objects.create(
        provider=provider,
        name=parsed.title,
        slug=slug,
        summary=first_sentence(parsed.description, _SUMMARY_MAX),
        description=parsed.description,
        status=API.Status.DRAFT,
    )


def _channels_create(*, version: APIVersion, parsed: ParsedDocument) -> None:
    channels = Channel.objects.bulk_create(
        Channel(
            api_version=version,
            key=channel.key,
            address=channel.address,
            title=channel.title,
            description=channel.description,
            parameters=channel.parameters,
            bindings=channel.bindings,
        )
        for channel in parsed.channels
    )
    Operation.objects.bulk_create(
        Operation(
            channel=row,
            key=operation.key,
            action=operation.action,
            summary=operation.summary,
            messages=operation.messages,
            bindings=operation.bindings,
        )
        for row, channel in zip(channels, parsed.channels, strict=True)
        for operation in channel.operations
    )


def api_publish(*, api_version: APIVersion, actor: User | None = None) -> APIVersion:
    """Publish ``api_version`` and, on its first publication, its API, so the catalog lists them
    and consumers can subscribe; each move is recorded as an ``APILifecycleEvent``.

    Publishing an already published version changes nothing. A deprecated or blocked API keeps
    its state. ``actor`` is who publishes (None for management commands). Raises
    ``ValidationError`` if the API is retired or the version cannot be published, and
    ``PermissionDenied`` if ``actor`` is neither the API's provider nor staff. See
    ``portal.services.lifecycle`` for the rules.
    """
    return api_publish_version(api_version=api_version, actor=actor)


def api_version_payload_validation_set(*, api_version: APIVersion, enabled: bool, actor: User) -> APIVersion:
    """Turn on or off the checking of client→server events against their send operation's
    message payload schemas (``APIVersion.validate_payloads``).

    With it on, the gateway answers an event whose payload fails the schema with an error frame
    (code 4400, the JSON Pointer of the failure) and publishes nothing (docs/gateway.md). It
    applies to connections opened after the change. Raises ``PermissionDenied`` unless
    ``actor`` is the API's provider or an admin.
    """
    if not (actor.is_staff or api_version.api.provider_id == actor.pk):
        raise PermissionDenied("Only the API's provider or an admin can change payload validation.")
    if api_version.validate_payloads != enabled:
        api_version.validate_payloads = enabled
        api_version.save(update_fields=["validate_payloads"])
    return api_version
