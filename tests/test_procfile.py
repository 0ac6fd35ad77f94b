"""`make run`'s process model: the Procfile's web and banner processes under honcho, as the
Makefile starts them, print a client command that really reaches the gateway."""

from __future__ import annotations

import asyncio
import io
import os
import queue
import re
import signal
import subprocess
import threading
import time

import pytest
from django.conf import settings
from django.core.management import call_command
from websockets.asyncio.client import connect

from tests.fixtures.servers import BIN, free_port, server_env

pytestmark = pytest.mark.e2e


def lines_of(process: subprocess.Popen[str]) -> queue.Queue[str]:
    lines: queue.Queue[str] = queue.Queue()

    def read() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            lines.put(line)

    threading.Thread(target=read, daemon=True).start()
    return lines


def test_procfile_banner_prints_a_client_command_for_the_portal_port(transactional_db, tmp_path):
    credentials = tmp_path / "demo-credentials.json"
    call_command("load_demo", credentials=credentials, stdout=io.StringIO())
    port = free_port()
    process = subprocess.Popen(
        [str(BIN / "honcho"), "start", "-f", "Procfile", "web", "banner"],
        cwd=settings.BASE_DIR,
        # honcho gives each process its own PORT; the Makefile passes the portal's as EVENTGATE_PORT.
        env=server_env(EVENTGATE_PORT=str(port), PORT="5000", DEMO_CREDENTIALS_PATH=str(credentials)),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    output: list[str] = []
    try:
        lines, deadline, command = lines_of(process), time.monotonic() + 60, None
        while command is None and time.monotonic() < deadline:
            try:
                line = lines.get(timeout=1)
            except queue.Empty:
                continue
            output.append(line)
            command = re.search(r"-m websockets '(ws://[^']+)'", line)
        assert command, "no client command in the banner:\n" + "".join(output)
        url = command.group(1)
        assert url.startswith(f"ws://127.0.0.1:{port}/ws/stock-prices/1.0.0/prices/ACME?access_token=eg_")

        async def handshake() -> bool:
            async with connect(url, open_timeout=10) as client:
                return client.protocol.state.name == "OPEN"

        assert asyncio.run(handshake())
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(20)
