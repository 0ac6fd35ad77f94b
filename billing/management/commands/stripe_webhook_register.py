"""``manage.py stripe_webhook_register``: point localstripe's webhooks at Eventgate.

    python manage.py stripe_webhook_register [--url URL] [--wait SECONDS] [--stay]

Only with ``STRIPE_API_BASE`` set (a local fake Stripe such as localstripe): POSTs
``<STRIPE_API_BASE>/_config/webhooks/eventgate`` with ``url`` (default
``<EVENTGATE_PUBLIC_URL>/billing/stripe/webhook/``) and ``secret`` (``STRIPE_WEBHOOK_SECRET``),
retrying until localstripe answers (under ``make run`` it starts at the same time). localstripe
then signs its events like Stripe and posts them there. With real Stripe, register the endpoint in
the Stripe dashboard instead (Stripe docs: Webhooks › Register your endpoint).

``--stay`` keeps the process up after registering: it runs under honcho, which stops every
process as soon as one exits.
"""

from __future__ import annotations

import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.urls import reverse

WEBHOOK_ID = "eventgate"
RETRY_SECONDS = 0.5


class Command(BaseCommand):
    help = "Register Eventgate's Stripe webhook endpoint with localstripe (when STRIPE_API_BASE is set)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--url", default="", help="Endpoint URL (default: under EVENTGATE_PUBLIC_URL).")
        parser.add_argument(
            "--wait", type=float, default=60.0, help="Seconds to keep trying while localstripe starts."
        )
        parser.add_argument("--stay", action="store_true", help="Stay up afterwards (for honcho).")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            self._say(self._register(url=options["url"], wait=options["wait"]))
            while options["stay"]:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass

    def _register(self, *, url: str, wait: float) -> str:
        base = settings.STRIPE_API_BASE.rstrip("/")
        if not base:
            return (
                "STRIPE_API_BASE is not set: with real Stripe, add the endpoint "
                f"{_endpoint(url)} in the Stripe dashboard; nothing to register."
            )
        if not settings.STRIPE_WEBHOOK_SECRET:
            raise CommandError("STRIPE_WEBHOOK_SECRET is not set: localstripe needs a secret to sign events.")
        target = f"{base}/_config/webhooks/{WEBHOOK_ID}"
        body = urllib.parse.urlencode({"url": _endpoint(url), "secret": settings.STRIPE_WEBHOOK_SECRET})
        deadline = time.monotonic() + wait
        while True:
            try:
                request = urllib.request.Request(target, data=body.encode(), method="POST")
                with urllib.request.urlopen(request, timeout=5):
                    return f"Stripe webhooks from {base} go to {_endpoint(url)}."
            except urllib.error.HTTPError as exc:
                raise CommandError(f"{target} refused the registration: {exc.code} {exc.reason}") from exc
            except (urllib.error.URLError, OSError) as exc:
                if time.monotonic() >= deadline:
                    raise CommandError(f"{base} did not answer within {wait:g} s: {exc}") from exc
            time.sleep(RETRY_SECONDS)

    def _say(self, text: str) -> None:
        self.stdout.write(text)
        sys.stdout.flush()  # honcho reads a pipe


def _endpoint(url: str) -> str:
    return url or settings.EVENTGATE_PUBLIC_URL.rstrip("/") + reverse("billing:stripe_webhook")
