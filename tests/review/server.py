"""`cotaforge review serve` started in a child process for tests that need a real server."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from cotaforge.store import RunDir

from .factories import form_value


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(run: RunDir, log_path: Path, db_url: str | None = None) -> tuple[subprocess.Popen, str]:
    """`cotaforge review serve` in a child process on 127.0.0.1; returns it and its base URL once it answers."""
    port = free_port()
    log = log_path.open("wb")
    command = [sys.executable, "-m", "cotaforge.cli", "review", "serve", str(run.root), "--port", str(port)]
    process = subprocess.Popen(command + (["--db", db_url] if db_url else []), stdout=log, stderr=subprocess.STDOUT,
                               env={**os.environ, "PYTHONUNBUFFERED": "1"})
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the review server exited: {log_path.read_text()}")
        try:
            if httpx.get(f"{url}/login", timeout=2).status_code == 200:
                return process, url
        except httpx.HTTPError:
            time.sleep(0.2)
    process.terminate()
    raise RuntimeError("the review server did not answer within 60 s")


def stop_server(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()


def browser_session(url: str, token: str) -> tuple[httpx.Client, str]:
    client = httpx.Client(base_url=url, timeout=60, follow_redirects=True)
    page = client.get("/login")
    response = client.post("/login", data={"token": token, "csrf_token": form_value(page.text, "csrf_token")})
    response.raise_for_status()
    return client, form_value(response.text, "csrf_token")
