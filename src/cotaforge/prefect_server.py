"""The Prefect API server of one `cotaforge` command: a separate process that dies with the command.

With no `PREFECT_API_URL`, Prefect starts a temporary ("ephemeral") API server of its own: a separate
`python -m uvicorn prefect.server...` process (`SubprocessASGIServer`), stopped by an `atexit` hook. A command
killed with SIGKILL runs no exit hook, so that server outlived it. The CLI therefore starts the same server
itself, from its main thread, with the kernel told to kill it when its parent dies (Linux `PR_SET_PDEATHSIG`),
and points `PREFECT_API_URL` at it. Elsewhere (no `prctl`), Prefect's own server is left to start as before.

This module starts a process; it imports nothing of Prefect, so it runs before Prefect reads its settings.
"""

from __future__ import annotations

import atexit
import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

from cotaforge.errors import CotaforgeError

PR_SET_PDEATHSIG = 1  # linux/prctl.h
PORT_IN_USE_EXIT = 3  # uvicorn's exit status when it cannot bind
_started: list[subprocess.Popen] = []  # the server this process started, if any


def _libc_prctl():
    """libc's prctl, or None where there is none (not Linux)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


def _die_with(parent_pid: int):
    """A preexec hook: the child gets SIGKILL when its parent dies, and exits at once if it already has.

    SIGKILL, not SIGTERM: the server's only client is gone, and uvicorn's graceful shutdown could wait on
    connections; Prefect's SQLite database is safe against a kill. (The signal follows the thread that started
    the child: this is called from the CLI's main thread, which lives as long as the command.)
    """
    prctl = _libc_prctl()

    def hook() -> None:
        prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent_pid:  # the parent died before the prctl took effect
            os._exit(1)

    return hook


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
        return False


def start_prefect_server(timeout_s: float = 120.0) -> subprocess.Popen | None:
    """Start Prefect's API server as a child that dies with this process; set `PREFECT_API_URL` to it.

    Returns None (and starts nothing) when `PREFECT_API_URL` is already set (the user's server) or the
    platform has no `prctl`. Raises CotaforgeError when the server does not answer within `timeout_s`.
    """
    if os.environ.get("PREFECT_API_URL") or _libc_prctl() is None:
        return None
    # What Prefect's own ephemeral server runs with: no UI, ephemeral mode, the final app instance.
    env = {**os.environ, "PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1", "PREFECT__SERVER_FINAL": "1"}
    deadline = time.monotonic() + timeout_s
    while True:
        port = _free_port()
        command = [sys.executable, "-m", "uvicorn", "--factory", "prefect.server.api.server:create_app",
                   "--host", "127.0.0.1", "--port", str(port), "--log-level", "error", "--lifespan", "on"]
        process = subprocess.Popen(command, env=env, stdin=subprocess.DEVNULL, preexec_fn=_die_with(os.getpid()))
        url = f"http://127.0.0.1:{port}/api"
        while time.monotonic() < deadline and process.poll() is None and not _healthy(url):
            time.sleep(0.1)
        if process.poll() == PORT_IN_USE_EXIT and time.monotonic() < deadline:
            continue  # another process took the port in between: try another
        if process.poll() is None and _healthy(url):
            break
        _stop(process)
        raise CotaforgeError(f"the Prefect API server did not start within {timeout_s:.0f} s (exit status "
                             f"{process.returncode}); set PREFECT_API_URL to a running server "
                             "(`prefect server start`) or raise PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS")
    atexit.register(_stop, process)
    os.environ["PREFECT_API_URL"] = url
    _started.append(process)
    return process


def started_here() -> bool:
    """Whether this process started the Prefect API server it uses (and so the server dies with it)."""
    return bool(_started)


def _stop(process: subprocess.Popen) -> None:
    """Stop the server at a normal exit: politely, then for sure."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=5)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
