"""The CLI's Prefect API server: left to the user's PREFECT_API_URL when set (a killed run's server is tested in
tests/test_resume.py)."""

from cotaforge import prefect_server


def test_a_server_of_the_users_is_used_as_is(monkeypatch):
    monkeypatch.setenv("PREFECT_API_URL", "http://prefect.example:4200/api")
    monkeypatch.setattr(prefect_server.subprocess, "Popen", lambda *a, **k: (_ for _ in ()).throw(AssertionError))
    assert prefect_server.start_prefect_server() is None
    assert prefect_server.os.environ["PREFECT_API_URL"] == "http://prefect.example:4200/api"


def test_the_death_signal_hook_exits_when_the_parent_is_already_gone(monkeypatch):
    calls = []
    monkeypatch.setattr(prefect_server, "_libc_prctl", lambda: lambda *args: calls.append(args) or 0)
    monkeypatch.setattr(prefect_server.os, "getppid", lambda: 1)  # reparented: the parent died before prctl
    monkeypatch.setattr(prefect_server.os, "_exit", lambda code: calls.append(("exit", code)))
    prefect_server._die_with(4242)()
    assert calls == [(prefect_server.PR_SET_PDEATHSIG, prefect_server.signal.SIGKILL, 0, 0, 0), ("exit", 1)]


def test_flows_of_a_command_with_its_own_server_send_no_heartbeats(monkeypatch, prefect_harness):
    """Each flow run's heartbeat thread cost up to a second at its end; the command's own server needs none."""
    from prefect import flow
    from prefect.settings import get_current_settings

    from flows.common import flow_settings

    @flow
    def heartbeat_frequency() -> int | None:
        return get_current_settings().flows.heartbeat_frequency

    monkeypatch.delenv("PREFECT_FLOWS_HEARTBEAT_FREQUENCY", raising=False)
    monkeypatch.setattr(prefect_server, "_started", [])
    with flow_settings():  # the user's server: Prefect's settings stand
        assert heartbeat_frequency() is not None
    monkeypatch.setattr(prefect_server, "_started", [object()])
    with flow_settings():
        assert heartbeat_frequency() is None
    monkeypatch.setenv("PREFECT_FLOWS_HEARTBEAT_FREQUENCY", "60")  # set by the user: left alone
    with flow_settings():
        assert heartbeat_frequency() is not None
