"""Template helpers for the portal: Markdown, money in minor units, byte counts, JSON schemas, form fields."""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from typing import Any

import nh3
from django import forms, template
from django.utils.safestring import SafeString, mark_safe
from markdown_it import MarkdownIt
from markdown_it.common.utils import escapeHtml
from markdown_it.renderer import RendererHTML
from markdown_it.token import Token
from markdown_it.utils import EnvType, OptionsDict

from portal.links import gateway_ws_url
from portal.money import format_money

register = template.Library()

BYTE_UNITS = ["B", "KB", "MB", "GB", "TB", "PB"]
COMBINATORS = {"oneOf": "one of", "anyOf": "any of", "allOf": "all of"}


@register.filter
def money(minor: int | None, currency: str = "usd") -> str:
    """Format an amount in minor units (cents): ``4900, "usd"`` → ``$49.00``."""
    return format_money(minor or 0, currency)


def _render_image(
    renderer: RendererHTML, tokens: Sequence[Token], idx: int, options: OptionsDict, env: EnvType
) -> str:
    """``![alt](url "title")`` as a link to the image with ``alt`` (else the URL) as its words.

    An ``<img>`` would make every visitor's browser fetch the provider's URL: a tracking pixel on
    Eventgate's pages. Inside a link (``[![alt](img)](url)``) the alt text alone, as links do
    not nest. markdown-it has already refused unsafe URLs (``javascript:``) and escaped the rest.
    """
    token = tokens[idx]
    alt = escapeHtml(renderer.renderInlineAsText(token.children or [], options, env))
    depth = sum({"link_open": 1, "link_close": -1}.get(before.type, 0) for before in tokens[:idx])
    if depth > 0:
        return alt
    src = escapeHtml(str(token.attrGet("src") or ""))
    title = token.attrGet("title")
    title_attribute = f' title="{escapeHtml(str(title))}"' if title else ""
    return f'<a href="{src}"{title_attribute}>{alt or src}</a>'


# Descriptions in AsyncAPI documents are CommonMark (AsyncAPI 3.0 §Info Object, §Channel Object,
# §Schema Object). Raw HTML is off, so markup in the text is shown as text; nh3 then sanitizes
# the output anyway, as a second line of defence should a renderer bug let something through.
# No <img>: images become links (``_render_image``).
_MARKDOWN = MarkdownIt("commonmark", {"html": False}).enable("table")
_MARKDOWN.add_render_rule("image", _render_image)
MARKDOWN_TAGS = {
    "p", "br", "hr", "strong", "em", "code", "pre", "blockquote", "ul", "ol", "li", "a",
    "h3", "h4", "h5", "h6", "table", "thead", "tbody", "tr", "th", "td",
}  # fmt: skip
MARKDOWN_ATTRIBUTES = {
    "a": {"href", "title"},
    "ol": {"start"},
    "th": {"style"},
    "td": {"style"},
}
MARKDOWN_URL_SCHEMES = {"http", "https", "mailto"}
# A description's "# Heading" sits below the page's <h1> and the section's <h2>: start at <h3>.
MARKDOWN_HEADING_OFFSET = 2


def sanitize_html(html: str, tags: set[str] = MARKDOWN_TAGS) -> SafeString:
    """``html`` with only ``tags``, no scripts or event handlers, http(s)/mailto URLs only, and
    ``rel="nofollow noopener"`` on every link (the providers' links are not ours to vouch for)."""
    clean = nh3.clean(
        html,
        tags=tags,
        attributes=MARKDOWN_ATTRIBUTES,
        url_schemes=MARKDOWN_URL_SCHEMES,
        link_rel="nofollow noopener",
        filter_style_properties={"text-align"},
    )
    return mark_safe(clean)  # noqa: S308 - sanitized by nh3 just above


@functools.lru_cache(maxsize=1024)
def render_markdown(text: str) -> SafeString:
    """CommonMark ``text`` (plus GFM tables) as sanitized HTML; headings start at ``<h3>``."""
    env: dict[str, Any] = {}
    tokens = _MARKDOWN.parse(text, env)
    for token in tokens:
        if token.type in ("heading_open", "heading_close"):
            token.tag = f"h{min(int(token.tag[1]) + MARKDOWN_HEADING_OFFSET, 6)}"
    return sanitize_html(_MARKDOWN.renderer.render(tokens, _MARKDOWN.options, env))


@functools.lru_cache(maxsize=1024)
def render_markdown_inline(text: str) -> SafeString:
    """CommonMark ``text`` as inline HTML (emphasis, code, links) for one-line places."""
    return sanitize_html(_MARKDOWN.renderInline(text))


@register.filter
def markdown(value: str | None) -> SafeString:
    """A Markdown description as sanitized HTML paragraphs, lists, code blocks and tables."""
    return render_markdown(value or "")


@register.filter
def markdown_inline(value: str | None) -> SafeString:
    """A one-line Markdown text (a summary, a field description) as sanitized inline HTML."""
    return render_markdown_inline(value or "")


@register.filter
def markdown_text(value: str | None) -> SafeString:
    """A one-line Markdown text without its markup, for places that are links themselves (cards)."""
    return sanitize_html(render_markdown_inline(value or ""), tags=set())


@register.filter
def human_bytes(value: int | None) -> str:
    """A byte count in decimal units, as a person reads it: ``1536000`` → ``1.5 MB``."""
    amount = float(value or 0)
    for unit in BYTE_UNITS:
        if amount < 1000 or unit == BYTE_UNITS[-1]:
            return f"{int(amount)} {unit}" if unit == "B" else f"{amount:.1f} {unit}"
        amount /= 1000
    raise AssertionError("unreachable")


@register.filter
def pretty_json(value: Any) -> str:
    """Indented JSON for a ``<pre>``; returned unsafe so the template escapes it."""
    return json.dumps(value, indent=2, ensure_ascii=False)


def _schema_type(schema: dict[str, Any]) -> str:
    """A short type label for a JSON Schema: ``string (date-time)``, ``array of number``, ``one of 2``."""
    if "enum" in schema:
        return "enum"
    kind = schema.get("type")
    if isinstance(kind, list):
        label = " | ".join(str(k) for k in kind)
    elif kind == "array" and isinstance(schema.get("items"), dict):
        label = f"array of {_schema_type(schema['items'])}"
    elif kind:
        label = str(kind)
    elif "$ref" in schema:
        label = str(schema["$ref"]).rsplit("/", 1)[-1]
    elif combinator := next((key for key in COMBINATORS if key in schema), None):
        label = f"{COMBINATORS[combinator]} {len(schema[combinator])}"
    else:
        label = "any"
    if schema.get("format"):
        label += f" ({schema['format']})"
    return label


@register.filter
def schema_properties(payload: Any) -> list[dict[str, Any]]:
    """Top-level fields of an object payload schema, for a readable table; [] for other shapes.

    Each row: ``name``, ``type`` (see ``_schema_type``), ``description``, ``required``, ``enum``.
    """
    if not isinstance(payload, dict) or not isinstance(payload.get("properties"), dict):
        return []
    required = set(payload.get("required") or [])
    rows = []
    for name, schema in payload["properties"].items():
        schema = schema if isinstance(schema, dict) else {}
        rows.append(
            {
                "name": name,
                "type": _schema_type(schema),
                "description": str(schema.get("description") or schema.get("title") or ""),
                "required": name in required,
                "enum": list(schema.get("enum") or []),
            }
        )
    # Required fields first, then in the order the schema gives (jsonb storage may have reordered them).
    return sorted(rows, key=lambda row: not row["required"])


@register.filter
def parameter_enum(spec: Any) -> list[Any]:
    """The allowed values of a channel parameter (AsyncAPI 3 ``enum``, or 2.x ``schema.enum``)."""
    if not isinstance(spec, dict):
        return []
    schema = spec.get("schema") if isinstance(spec.get("schema"), dict) else {}
    return list(spec.get("enum") or schema.get("enum") or [])


@register.filter
def parameter_description(spec: Any) -> str:
    if not isinstance(spec, dict):
        return ""
    schema = spec.get("schema") if isinstance(spec.get("schema"), dict) else {}
    return str(spec.get("description") or schema.get("description") or "")


@register.filter
def status_color(status: str) -> str:
    """Bootstrap colour for a subscription, API or version status."""
    return {
        "active": "success",
        "published": "success",
        "pending": "warning",
        "draft": "secondary",
        "deprecated": "warning",
        "rejected": "danger",
        "blocked": "danger",
        "retired": "dark",
        "cancelled": "secondary",
    }.get(status, "secondary")


@register.simple_tag(takes_context=True)
def nav_active(context: template.Context, prefix: str) -> str:
    """``active`` when the current path starts with ``prefix`` (``/`` matches only the home page)."""
    request = context.get("request")
    if request is None:
        return ""
    path = request.path
    matched = path == "/" if prefix == "/" else path.startswith(prefix)
    return "active" if matched else ""


@register.filter
def bootstrap(field: forms.BoundField) -> SafeString:
    """Render a form field's widget with Bootstrap classes (and ``is-invalid`` when it has errors)."""
    widget = field.field.widget
    if isinstance(widget, forms.CheckboxInput | forms.RadioSelect | forms.CheckboxSelectMultiple):
        css = "form-check-input"
    elif isinstance(widget, forms.Select):
        css = "form-select"
    else:
        css = "form-control"
    if field.errors:
        css += " is-invalid"
    existing = widget.attrs.get("class", "")
    return field.as_widget(attrs={"class": f"{existing} {css}".strip()})


@register.simple_tag
def channel_ws_url(api: Any, version: Any, address: str) -> str:
    """The gateway's public WebSocket URL for ``address`` of ``api`` ``version`` (no credential)."""

    return gateway_ws_url(api_slug=api.slug, version=version.version, address=address)
