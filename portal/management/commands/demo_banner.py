"""``manage.py demo_banner --url http://127.0.0.1:8000``: tell a `make run` user how to start.

Waits until ``<url>/readyz`` answers 200 (database, RabbitMQ and Redis up), then prints the demo
accounts and ready-to-paste client commands carrying the demo API key from
``var/demo-credentials.json`` (written by ``manage.py load_demo``), then sleeps forever: it runs
under honcho, which stops every process as soon as one exits.
"""

from __future__ import annotations

import json
import shlex
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from portal.links import gateway_ws_url
from portal.management.commands.load_demo import CREDENTIALS_PATH

POLL_SECONDS = 1.0
REPORT_EVERY_SECONDS = 30.0


class Command(BaseCommand):
    help = "Wait for /readyz, then print the demo accounts and a client command; then stay up."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--url", default="http://127.0.0.1:8000", help="Base URL of the portal and gateway."
        )
        parser.add_argument(
            "--credentials", type=Path, default=CREDENTIALS_PATH, help="Written by load_demo."
        )
        parser.add_argument(
            "--once", action="store_true", help="Exit after printing (for scripts and tests)."
        )

    def handle(self, *args: Any, **options: Any) -> None:
        base = options["url"].rstrip("/")
        try:
            self._wait_ready(base)
            self._say(banner(base=base, credentials=_credentials_read(options["credentials"])))
            while not options["once"]:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass

    def _wait_ready(self, base: str) -> None:
        started = reported = time.monotonic()
        while True:
            status, body = _probe(base + "/readyz")
            if status == 200:
                return
            if time.monotonic() - reported >= REPORT_EVERY_SECONDS:
                waited = time.monotonic() - started
                self._say(
                    f"Still waiting for {base}/readyz after {waited:.0f} s: {status or 'no answer'} {body}"
                )
                reported = time.monotonic()
            time.sleep(POLL_SECONDS)

    def _say(self, text: str) -> None:
        self.stdout.write(text)
        sys.stdout.flush()  # honcho reads a pipe: without this the banner waits in a buffer


def _probe(url: str) -> tuple[int, str]:
    """``(HTTP status, body)`` of a GET; ``(0, reason)`` when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=3) as response:
            return response.status, response.read(300).decode(errors="replace")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(300).decode(errors="replace")
    except (urllib.error.URLError, OSError) as exc:
        return 0, str(getattr(exc, "reason", exc))


def _credentials_read(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def banner(*, base: str, credentials: dict[str, Any] | None) -> str:
    """The banner text: URLs, demo accounts and one client command per demo channel."""
    rule = "=" * 100
    lines = [
        rule,
        f" Eventgate is up: {base}/",
        f"   API catalog   {base}/apis/",
        f"   REST API      {base}/api/docs/",
    ]
    if credentials is None:
        lines += ["", " No demo credentials found: run `.venv/bin/python manage.py load_demo`.", rule]
        return "\n".join(lines)
    accounts = credentials["accounts"]
    lines += ["", f" Demo accounts (demo only; password for all: {accounts[0]['password']}):"]
    lines += [f"   {account['email']:<28} {account['role']}" for account in accounts]
    lines += [
        "",
        f' Live events with the API key of "{credentials["application"]}" (new on every `make run`):',
    ]
    for channel in credentials["channels"]:
        url = gateway_ws_url(
            api_slug=channel["api"],
            version=channel["version"],
            address=channel["address"],
            secret=credentials["api_key"],
            base_url=base,
        )
        lines.append(f"   .venv/bin/python -m websockets {shlex.quote(url)}")
    lines += [" (Ctrl-D or Ctrl-C ends the client.)", rule]
    return "\n".join(lines)
