"""The catalog's search: which listed APIs match a text and filters, and the filters' choices.

Shared by the catalog page (portal/views/catalog.py) and the REST API (portal/api/), so both
find the same APIs. Only ``API.objects.listed()`` is searched — published, deprecated and blocked
APIs with a live version; drafts and retired APIs never match, nor do channels of draft or retired
versions.

``API.tags`` and ``API.protocols`` are JSON lists; SQLite (``make run``) has no JSON containment
lookup, so those matches are computed in Python over one ``values_list`` query: the catalog holds
at most thousands of APIs, and only ids leave the database.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from django.db.models import Q, QuerySet

from portal.models import API, APIVersion, Channel, User

# Longer text is cut: nobody types more, and LIKE over long patterns only costs time.
MAX_TEXT = 200
# PostgreSQL's bigint; a longer number as a provider id would overflow the query (a 500).
MAX_ID_DIGITS = 18


def clean_text(value: str | None, *, limit: int = MAX_TEXT) -> str:
    """``value`` stripped of NUL characters (PostgreSQL text cannot hold them: a DataError) and
    surrounding whitespace, cut to ``limit`` characters; ``""`` for None."""
    return (value or "").replace("\x00", "").strip()[:limit]


def api_search(
    *, text: str = "", tag: str = "", protocol: str = "", provider: str = "", status: str = ""
) -> QuerySet[API]:
    """Listed APIs matching all the given criteria, by name; an empty criterion matches all.

    - ``text``: case-insensitive substring of the name, summary, description, a tag or a channel
      address of a live (published or deprecated) version;
    - ``tag``: one of the API's tags (``info.tags`` names), case-insensitive, whole name;
    - ``protocol``: one of the protocols of the API's document servers (``mqtt``, ``ws``, …),
      case-insensitive;
    - ``provider``: the provider's public name (``User.public_name``: organization, else the
      email's domain; case-insensitive) or user id;
    - ``status``: ``published``, ``deprecated`` or ``blocked`` (any other value matches nothing:
      drafts and retired APIs are never listed).

    NUL characters are dropped and values cut to 200 characters (``clean_text``); no input raises.
    """
    text, tag, protocol, provider, status = map(clean_text, (text, tag, protocol, provider, status))
    apis = API.objects.listed()
    if status:
        if status not in API.LISTED_STATUSES:
            return apis.none()
        apis = apis.filter(status=status)
    if provider:
        if provider.isdigit() and len(provider) <= MAX_ID_DIGITS:
            apis = apis.filter(provider_id=int(provider))
        else:
            apis = apis.filter(
                Q(provider__organization__iexact=provider)
                | Q(provider__organization="", provider__email__iendswith=f"@{provider}")
            )
    if tag:
        apis = apis.filter(pk__in=_ids_where("tags", lambda tags: tag.casefold() in _folded(tags)))
    if protocol:
        apis = apis.filter(
            pk__in=_ids_where("protocols", lambda protocols: protocol.casefold() in _folded(protocols))
        )
    if text:
        needle = text.casefold()
        live_channels = Channel.objects.filter(
            api_version__status__in=APIVersion.LIVE_STATUSES, address__icontains=text
        )
        apis = apis.filter(
            Q(name__icontains=text)
            | Q(summary__icontains=text)
            | Q(description__icontains=text)
            | Q(pk__in=live_channels.values("api_version__api"))
            | Q(pk__in=_ids_where("tags", lambda tags: any(needle in name for name in _folded(tags))))
        )
    return apis.order_by("name", "pk")


@dataclass(frozen=True)
class CatalogFacets:
    """What the catalog's filters offer, with how many listed APIs each choice has.

    ``tags`` and ``protocols``: ``[(name, count)]`` by count then name (protocols lower-case);
    ``providers``: ``[(user id, public name, count)]`` by name; ``statuses``: ``[(status, label,
    count)]`` for the listed states, in lifecycle order, zero counts included.
    """

    tags: list[tuple[str, int]]
    protocols: list[tuple[str, int]]
    providers: list[tuple[int, str, int]]
    statuses: list[tuple[str, str, int]]


def catalog_facets() -> CatalogFacets:
    """The filter choices over the whole listed catalog (one query)."""
    rows = API.objects.listed().values_list(
        "tags", "protocols", "provider_id", "provider__organization", "provider__email", "status"
    )
    tags: Counter[str] = Counter()
    protocols: Counter[str] = Counter()
    providers: Counter[tuple[int, str]] = Counter()
    statuses: Counter[str] = Counter()
    for row_tags, row_protocols, provider_id, organization, email, status in rows:
        tags.update(set(_strings(row_tags)))
        protocols.update({value.lower() for value in _strings(row_protocols)})
        providers[(provider_id, User(organization=organization, email=email).public_name)] += 1
        statuses[status] += 1

    def ranked(counter: Counter[str]) -> list[tuple[str, int]]:
        return sorted(counter.items(), key=lambda item: (-item[1], item[0].casefold()))

    return CatalogFacets(
        tags=ranked(tags),
        protocols=ranked(protocols),
        providers=sorted(
            ((pk, name, n) for (pk, name), n in providers.items()), key=lambda p: (p[1].casefold(), p[0])
        ),
        statuses=[(status, API.Status(status).label, statuses[status]) for status in API.LISTED_STATUSES],
    )


def _ids_where(field: str, keep: Callable[[object], bool]) -> list[int]:
    """Ids of listed APIs whose JSON list ``field`` satisfies ``keep``."""
    return [pk for pk, values in API.objects.listed().values_list("pk", field) if keep(values)]


def _strings(values: object) -> list[str]:
    """The strings of a stored JSON list (anything else in it, or a non-list, is ignored)."""
    return [value for value in values if isinstance(value, str)] if isinstance(values, list) else []


def _folded(values: Iterable[object] | object) -> set[str]:
    """The case-folded strings of a stored JSON list."""
    return {value.casefold() for value in _strings(values)}
