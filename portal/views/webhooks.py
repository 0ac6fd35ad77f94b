"""Webhooks of a consumer's application: register (callback URL, secret, channel), see
verification and the delivery log, verify again, redeliver, delete (``docs/webhooks.md``).

The work is done by ``gateway.webhooks.services``; these views parse input and render.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from django import forms
from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import ValidationError
from django.core.paginator import Paginator
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.views.decorators.debug import sensitive_post_parameters
from django.views.decorators.http import require_POST

from gateway.models import WebhookDelivery, WebhookSubscription
from gateway.webhooks.addresses import MAX_CALLBACK_URL_LENGTH
from gateway.webhooks.services import (
    SECRET_MIN_CHARACTERS,
    delivery_redeliver,
    delivery_refusal,
    quota_refusal,
    webhook_delete,
    webhook_register,
    webhook_topic_url,
    webhook_verify_again,
)
from portal.forms import add_service_errors, service_error_text
from portal.models import API, APIVersion, Application, Channel, Subscription

DELIVERIES_PER_PAGE = 25


def _get_application_for_user(request: HttpRequest, pk: int) -> Application:
    """The user's own application ``pk``, or 404."""
    return get_object_or_404(Application, pk=pk, owner=request.user)


def _get_webhook_for_user(
    request: HttpRequest, application: Application, webhook_id: int
) -> WebhookSubscription:
    """Webhook ``webhook_id`` of the user's ``application``, or 404 (never another user's)."""
    return get_object_or_404(
        WebhookSubscription.objects.select_related(*_WEBHOOK_RELATED, "channel"),
        pk=webhook_id,
        subscription__application=application,
        subscription__application__owner=request.user,
    )


# What delivery_refusal reads, loaded with the webhook.
_WEBHOOK_RELATED = (
    "subscription__api",
    "subscription__plan",
    "subscription__application__owner",
    "api_version",
)


def _paused_reason(webhook: WebhookSubscription, quotas: dict[int, str | None]) -> str | None:
    """Why events are not delivered to the verified (active) ``webhook`` now (its subscription
    suspended or cancelled, the API blocked, the plan's quota used up: ``delivery_refusal``), or
    None; None for a webhook that is not active (its own status says why). ``quotas`` caches the
    quota check per subscription id."""
    if webhook.status != WebhookSubscription.Status.ACTIVE:
        return None
    refusal = delivery_refusal(webhook, quota=False)
    if refusal is None:
        subscription = webhook.subscription
        if subscription.pk not in quotas:
            quotas[subscription.pk] = quota_refusal(subscription)
        refusal = quotas[subscription.pk]
    return refusal


@dataclass(frozen=True)
class WebhookTarget:
    """An active subscription, the version webhooks would use, and its receivable channels."""

    subscription: Subscription
    version: APIVersion
    channels: list[Channel]

    @property
    def value(self) -> str:
        return f"{self.subscription.pk}:{self.version.version}"

    @property
    def label(self) -> str:
        return f"{self.subscription.api.name} {self.version.version}"

    @property
    def limit(self) -> int | None:
        """The plan's ``max_webhook_subscriptions`` (None: no plan limit)."""
        return self.subscription.plan.max_webhook_subscriptions


def _webhook_targets(application: Application) -> list[WebhookTarget]:
    """The application's active subscriptions to served APIs, with the newest live version's
    receivable channels (what a webhook can be registered for)."""
    targets = []
    subscriptions = application.subscriptions.filter(
        status=Subscription.Status.ACTIVE, api__status__in=API.CONNECTABLE_STATUSES
    ).select_related("api", "plan")
    for subscription in subscriptions:
        version = subscription.api.latest_version()
        if version is None:
            continue
        channels = [c for c in version.channels.prefetch_related("operations") if c.can_receive]
        if channels:
            targets.append(WebhookTarget(subscription, version, channels))
    return targets


class WebhookForm(forms.Form):
    """A webhook to register; the service checks the channel, the callback URL and the secret."""

    target = forms.ChoiceField(label="API")
    channel = forms.CharField(
        label="Channel address",
        max_length=1000,
        widget=forms.TextInput(attrs={"placeholder": "e.g. prices/ACME", "spellcheck": "false"}),
        help_text="A concrete address: every parameter filled in.",
    )
    callback_url = forms.CharField(
        label="Callback URL",
        max_length=MAX_CALLBACK_URL_LENGTH,
        widget=forms.URLInput(
            attrs={"placeholder": "https://example.com/hooks/eventgate", "spellcheck": "false"}
        ),
        help_text="Receives a verification GET, then one POST per event. Public http(s) addresses only.",
    )
    secret = forms.CharField(
        label="Secret",
        strip=False,
        max_length=400,
        widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "new-password"}),
        help_text=f"Signs every delivery (X-Hub-Signature). At least {SECRET_MIN_CHARACTERS} characters; "
        "shown never again.",
    )

    def __init__(self, *args: Any, targets: list[WebhookTarget], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.targets = {target.value: target for target in targets}
        self.fields["target"].choices = [(target.value, target.label) for target in targets]

    def selected_target(self) -> WebhookTarget:
        return self.targets[self.cleaned_data["target"]]


@login_required
@sensitive_post_parameters("secret")
def webhook_list(request: HttpRequest, pk: int) -> HttpResponse:
    """The application's webhooks; POST registers one and opens it."""
    application = _get_application_for_user(request, pk)
    targets = _webhook_targets(application)
    form = WebhookForm(request.POST if request.method == "POST" else None, targets=targets)
    if request.method == "POST" and form.is_valid():
        target = form.selected_target()
        try:
            webhook = webhook_register(
                subscription=target.subscription,
                version=target.version.version,
                address=form.cleaned_data["channel"],
                callback_url=form.cleaned_data["callback_url"],
                secret=form.cleaned_data["secret"],
            )
        except ValidationError as error:
            add_service_errors(form, error, {"subscription": "target", "version": "target"})
        else:
            messages.success(
                request,
                f"Registered the webhook for {webhook.address}. Eventgate is verifying your callback now.",
            )
            return redirect(webhook.get_absolute_url())
    webhooks = list(
        WebhookSubscription.objects.visible()
        .filter(subscription__application=application)
        .select_related(*_WEBHOOK_RELATED)
    )
    quotas: dict[int, str | None] = {}
    for webhook in webhooks:
        webhook.paused_reason = _paused_reason(webhook, quotas)  # type: ignore[attr-defined]
    # "2 of 3 webhooks" for subscriptions whose plan limits them (webhook_limit_refusal's count).
    counts = Counter(webhook.subscription_id for webhook in webhooks)
    limits = [
        (target, counts[target.subscription.pk], target.limit)
        for target in targets
        if target.limit is not None
    ]
    context = {
        "application": application,
        "webhooks": webhooks,
        "form": form,
        "targets": targets,
        "webhook_limits": limits,
        "timeout": settings.WEBHOOK_TIMEOUT,
    }
    return render(request, "portal/webhook_list.html", context)


@login_required
def webhook_detail(request: HttpRequest, pk: int, webhook_id: int) -> HttpResponse:
    """One webhook: its state (and why verification failed), and its delivery log, newest first;
    ``?status=dead`` shows the dead letters."""
    application = _get_application_for_user(request, pk)
    webhook = _get_webhook_for_user(request, application, webhook_id)
    deliveries = webhook.deliveries.all()
    shown = request.GET.get("status", "")
    if shown not in WebhookDelivery.Status.values:
        shown = ""
    if shown:
        deliveries = deliveries.filter(status=shown)
    page = Paginator(deliveries, DELIVERIES_PER_PAGE).get_page(request.GET.get("page"))
    context = {
        "application": application,
        "webhook": webhook,
        "topic_url": webhook_topic_url(webhook),
        "page": page,
        "shown": shown,
        "dead_count": webhook.deliveries.dead_letters().count(),
        "total_count": webhook.deliveries.count(),
        "subscription_active": webhook.subscription.status == Subscription.Status.ACTIVE,
        "paused_reason": _paused_reason(webhook, {}),
    }
    return render(request, "portal/webhook_detail.html", context)


@login_required
@require_POST
def webhook_verify(request: HttpRequest, pk: int, webhook_id: int) -> HttpResponse:
    """POST: verify the callback again."""
    application = _get_application_for_user(request, pk)
    webhook = _get_webhook_for_user(request, application, webhook_id)
    try:
        webhook_verify_again(webhook=webhook)
    except ValidationError as error:
        messages.error(request, service_error_text(error))
    else:
        messages.success(
            request, "Verification requested: Eventgate is sending your callback a new challenge."
        )
    return redirect(webhook.get_absolute_url())


@login_required
@require_POST
def webhook_delete_view(request: HttpRequest, pk: int, webhook_id: int) -> HttpResponse:
    """POST: delete the webhook (no more deliveries; the log stays)."""
    application = _get_application_for_user(request, pk)
    webhook = _get_webhook_for_user(request, application, webhook_id)
    webhook_delete(webhook=webhook)
    messages.success(request, f"Deleted the webhook for {webhook.address} → {webhook.callback_url}.")
    return redirect("portal:webhook_list", pk=application.pk)


@login_required
@require_POST
def webhook_redeliver(request: HttpRequest, pk: int, webhook_id: int, delivery_id: UUID) -> HttpResponse:
    """POST: send a finished delivery's body again, as a new delivery."""
    application = _get_application_for_user(request, pk)
    webhook = _get_webhook_for_user(request, application, webhook_id)
    delivery = get_object_or_404(WebhookDelivery, pk=delivery_id, webhook=webhook)
    try:
        delivery_redeliver(delivery=delivery)
    except ValidationError as error:
        messages.error(request, service_error_text(error))
    else:
        messages.success(
            request, f"Redelivery of event {delivery.event_id} queued; it shows at the top of the log."
        )
    return redirect(reverse("portal:webhook_detail", args=[application.pk, webhook.pk]))
