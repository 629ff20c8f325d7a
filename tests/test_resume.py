"""Re-running redoes nothing; a changed prompt or config redoes only what it affects; a deleted part
redoes exactly its batch. What a killed run leaves (temporaries, a damaged part, a half-done publish swap, a
Prefect server) is cleaned up or redone by the next start, and the report keeps what this run sent apart from
what the parts hold."""

import json
import re
import shutil

import pytest

from cotaforge.prompts import prompts_dir
from tests.teacher.conftest import fake_server  # noqa: F401 - a fixture

from .conftest import make_config, run_stages

STAGES = ("ingest", "caption", "expand", "validate", "balance")


def done(reports):
    return {stage: reports[stage].parts_done for stage in (*STAGES, "publish")}


def test_rerun_redoes_nothing(tmp_path, digits_manifest):
    cfg = make_config(tmp_path / "out", [digits_manifest])
    run, first = run_stages(cfg)
    _, again = run_stages(cfg)
    assert all(v > 0 for v in done(first).values())
    assert done(again) == {stage: 0 for stage in (*STAGES, "publish")}
    assert again["publish"].parts_skipped == 1 and again["balance"].rows_out == first["balance"].rows_out


def test_deleting_one_part_redoes_exactly_that_batch(tmp_path, digits_manifest):
    cfg = make_config(tmp_path / "out", [digits_manifest])
    run, _ = run_stages(cfg)
    run.part_path("ingest", 1).unlink()
    run.part_path("expand", 2).unlink()
    _, again = run_stages(cfg)
    assert again["ingest"].parts_done == 1 and again["caption"].parts_done == 0
    assert again["expand"].parts_done == 1 and again["validate"].parts_done == 0
    assert again["publish"].parts_done == 0  # same inputs: the dataset is not rewritten


def test_changed_config_redoes_only_what_it_affects(tmp_path, digits_manifest):
    cfg = make_config(tmp_path / "out", [digits_manifest])
    run_stages(cfg)
    _, balanced = run_stages(make_config(tmp_path / "out", [digits_manifest], "balance.per_cell=10"))
    assert balanced["validate"].parts_done == 0 and balanced["balance"].parts_done > 0
    assert balanced["publish"].parts_done == 1
    _, validated = run_stages(make_config(tmp_path / "out", [digits_manifest], "balance.per_cell=10",
                                          "validate.min_stage_chars=9"))
    assert validated["expand"].parts_done == 0 and validated["validate"].parts_done > 0


def test_new_prompt_version_redoes_expand_and_after(tmp_path, digits_manifest, monkeypatch):
    cfg = make_config(tmp_path / "out", [digits_manifest])
    run_stages(cfg)
    prompts = tmp_path / "prompts"
    shutil.copytree(prompts_dir(), prompts)
    text = (prompts / "questions.v1.yaml").read_text().replace("version: questions.v1", "version: questions.v2")
    (prompts / "questions.v2.yaml").write_text(text.replace("Which is it?", "Which is this?"))
    monkeypatch.setattr("cotaforge.prompts.prompts_dir", lambda: prompts)
    run, again = run_stages(make_config(tmp_path / "out", [digits_manifest], "expand.question_bank=questions.v2"))
    assert again["ingest"].parts_done == 0 and again["caption"].parts_done == 0
    assert again["expand"].parts_done == run.batch_count() == again["validate"].parts_done
    assert again["publish"].parts_done == 1


# -- what a killed run leaves behind ---------------------------------------------------------------------------


def _dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    import subprocess
    import sys

    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def _shards(cfg):
    from cotaforge.stages.publish import dataset_dir

    manifest = json.loads((dataset_dir(cfg) / "manifest.json").read_text())
    return {s["path"]: s["sha256"] for s in manifest["shards"]}


def test_stale_temporaries_go_on_the_next_start_and_a_live_writers_stay(tmp_path, digits_manifest):
    from cotaforge.stages.publish import dataset_dir
    from cotaforge.store import owner_tag

    cfg = make_config(tmp_path / "out", [digits_manifest])
    run, _ = run_stages(cfg)
    shards = _shards(cfg)
    host, _, token = owner_tag().split("-")
    dead = f"{host}-{_dead_pid()}-{token}"
    live = owner_tag()  # this process: alive
    stale = [run.stage_dir("expand") / f".part-00001.parquet.{dead}.tmp",
             run.rejects_path("expand", 1).with_name(f".part-00001.parquet.{dead}.tmp"),
             run.root / f".report.json.{dead}.tmp"]
    kept = [run.stage_dir("validate") / f".part-00000.parquet.{live}.tmp",
            run.stage_dir("caption") / f".part-00000.parquet.otherhost-1-{token}.tmp"]  # can't tell: kept
    for path in stale + kept:
        path.write_bytes(b"PAR1 half a part")
    target = dataset_dir(cfg)
    stale_dir = target.parent / f".{target.name}.tmp-{dead}"
    live_dir = target.parent / f".{target.name}.tmp-{live}"
    for folder in (stale_dir, live_dir):
        (folder / "data").mkdir(parents=True)
        (folder / "data" / "train-00000-of-00001.parquet").write_bytes(b"PAR1")
    _, again = run_stages(cfg)
    assert not any(p.exists() for p in stale) and not stale_dir.exists()
    assert all(p.exists() for p in kept) and live_dir.is_dir()
    assert _shards(cfg) == shards and again["publish"].parts_done == 0
    assert any(stale_dir.name in note for note in again["publish"].notes)


def test_a_truncated_part_is_named_and_its_batch_redone(tmp_path, digits_manifest):
    cfg = make_config(tmp_path / "out", [digits_manifest])
    run, first = run_stages(cfg)
    shards = _shards(cfg)
    for stage, batch in (("expand", 1), ("ingest", 2)):
        path = run.part_path(stage, batch)
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])  # what a disk-full or a crashed copy leaves
    assert run.part_fingerprint("expand", 1) is None and "unreadable" in run.part_problem("expand", 1)
    _, again = run_stages(cfg)
    assert again["expand"].parts_done == 1 and again["ingest"].parts_done == 1
    assert any("part-00001.parquet is unreadable" in note for note in again["expand"].notes)
    assert any("part-00002.parquet is unreadable" in note for note in again["ingest"].notes)
    # The redone parts are the same as before: nothing downstream changes, the dataset stays.
    assert again["validate"].parts_done == 0 and again["caption"].parts_done == 0
    assert _shards(cfg) == shards


def test_a_truncated_rejects_file_redoes_its_batch(tmp_path, digits_manifest):
    cfg = make_config(tmp_path / "out", [digits_manifest])
    run, _ = run_stages(cfg)
    path = run.rejects_path("validate", 0)
    path.write_bytes(path.read_bytes()[:20])
    _, again = run_stages(cfg)
    assert again["validate"].parts_done == 1 and run.rejects("validate").num_rows >= 0
    assert any("rejects/validate/part-00000.parquet is unreadable" in note for note in again["validate"].notes)


def _publish_killed_between_renames(run, cfg) -> None:
    """Run publish in a child process that dies by SIGKILL right after the first of the swap's renames."""
    import multiprocessing
    import os
    import signal

    from cotaforge.stages import publish

    def child() -> None:
        def swap_then_die(work, target):
            tag = work.name.split(".tmp-", 1)[1]
            target.rename(target.parent / f".{target.name}.old-{tag}")
            os.kill(os.getpid(), signal.SIGKILL)

        publish._swap_into_place = swap_then_die
        publish.run_publish(run, cfg)

    process = multiprocessing.get_context("fork").Process(target=child)
    process.start()
    process.join(120)
    assert process.exitcode == -signal.SIGKILL


def test_publish_killed_between_its_renames_is_completed_on_the_next_start(tmp_path, digits_manifest):
    from cotaforge.stages.publish import dataset_dir, publish_fingerprint, run_publish

    cfg = make_config(tmp_path / "out", [digits_manifest])
    run, _ = run_stages(cfg)
    cfg2 = make_config(tmp_path / "out", [digits_manifest], "publish.shard_rows=7")
    _publish_killed_between_renames(run, cfg2)
    target = dataset_dir(cfg2)
    assert not target.exists()
    assert [p.name.split("-")[0] for p in sorted(target.parent.iterdir())] == [".v1.old", ".v1.tmp"]
    report = run_publish(run, cfg2)
    assert sorted(p.name for p in target.parent.iterdir()) == ["v1"]
    assert report.parts_done == 0 and any("completed the swap" in note for note in report.notes)
    assert json.loads((target / "manifest.json").read_text())["fingerprint"] == publish_fingerprint(run, cfg2)


def test_a_swap_without_its_new_version_restores_the_old_one(tmp_path, digits_manifest):
    from cotaforge.stages.publish import dataset_dir, recover_dataset
    from cotaforge.store import owner_tag

    cfg = make_config(tmp_path / "out", [digits_manifest])
    run_stages(cfg)
    target = dataset_dir(cfg)
    shards = _shards(cfg)
    host, _, token = owner_tag().split("-")
    old = target.parent / f".{target.name}.old-{host}-{_dead_pid()}-{token}"
    target.rename(old)
    done = recover_dataset(target)
    assert done == [f"restored {target.name} from {old.name}"] and not old.exists()
    assert _shards(cfg) == shards


def test_the_report_separates_what_this_run_sent_from_what_the_parts_hold(tmp_path, digits_manifest, fake_server,
                                                                       capsys):
    from tests.teacher.conftest import teacher_config

    server = fake_server()
    cfg = teacher_config(tmp_path / "out", [server.url], "run.batch_size=16", "run.name=test",
                         f"inputs.manifests=[{digits_manifest}]", "inputs.group_by=speaker",
                         "teacher.usd_per_million_completion_tokens=2.0")
    run, first = run_stages(cfg)
    sent = len(server.log)
    assert first["expand"].teacher.requests > 0
    assert first["expand"].parts_teacher == first["expand"].teacher
    run.part_path("expand", 2).unlink()  # one batch redone from the cache, the others skipped
    _, again = run_stages(cfg)
    assert len(server.log) == sent  # nothing was sent...
    expand = again["expand"]
    assert expand.teacher.requests == 0 and expand.teacher.cost_usd == 0  # ...and nothing is reported as sent
    assert expand.teacher.cache_hits > 0  # the redone batch replayed its answers
    # The parts hold what made them: the skipped parts' requests and the redone part's cache replays.
    held = expand.parts_teacher
    assert held.cache_hits == expand.teacher.cache_hits
    assert held.requests + held.cache_hits == first["expand"].teacher.requests
    assert 0 < held.cost_usd < first["expand"].teacher.cost_usd
    from cotaforge.report import run_report_markdown

    markdown = run_report_markdown(run, list(again.values()))
    assert "sent by this run" in markdown and "held by the parts" in markdown
    row = next(line for line in markdown.splitlines() if line.startswith("| expand |") and "0.0000" in line)
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[1] == "0" and cells[-3] == str(held.requests)  # sent now, held by the parts
    from cotaforge.cli import _teacher_summary

    _teacher_summary(list(again.values()))
    printed = capsys.readouterr().out
    assert "sent by this run" in printed and re.search(rf"│\s+{held.requests}\s+│", printed)


# -- a run killed with SIGKILL ---------------------------------------------------------------------------------


def _children(pid: int) -> dict[int, str]:
    """{pid: command line} of the live (not zombie) child processes of `pid`, from /proc."""
    from pathlib import Path

    found = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            state, ppid = (proc / "stat").read_text().rsplit(")", 1)[1].split()[:2]
            if int(ppid) == pid and state != "Z":
                found[int(proc.name)] = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (OSError, ValueError):
            continue
    return found


def _alive(pid: int) -> bool:
    from pathlib import Path

    try:
        return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.integration
@pytest.mark.slow
def test_a_killed_run_leaves_no_prefect_server_and_resumes_to_the_same_shards(tmp_path, digits_manifest):
    import os
    import signal
    import subprocess
    import sys
    import time

    env = {**os.environ, "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_HOME": str(tmp_path / "prefect")}
    env.pop("PREFECT_API_URL", None)

    def command(out):
        return [sys.executable, "-m", "cotaforge.cli", "run", "--manifest", str(digits_manifest), "--out", str(out),
                "--name", "killed", "--group-by", "speaker", "--batch-size", "8", "--workers", "1"]

    out = tmp_path / "out"
    run = subprocess.Popen(command(out), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    servers: dict[int, str] = {}
    try:
        deadline = time.monotonic() + 300
        while not list((out / "runs" / "killed" / "caption").glob("part-*.parquet")):
            servers.update({p: c for p, c in _children(run.pid).items() if "prefect.server" in c})
            assert run.poll() is None and time.monotonic() < deadline, "the run ended before it could be killed"
            time.sleep(0.02)
        servers.update({p: c for p, c in _children(run.pid).items() if "prefect.server" in c})
        os.kill(run.pid, signal.SIGKILL)  # the command alone, as `kill -9 PID` does; not its process group
        assert run.wait() == -signal.SIGKILL
        assert len(servers) == 1, servers  # the run's Prefect API server: a separate process
        gone_by = time.monotonic() + 10
        while any(_alive(p) for p in servers) and time.monotonic() < gone_by:
            time.sleep(0.1)
        survivors = [p for p in servers if _alive(p)]
        assert not survivors, f"Prefect server(s) {survivors} outlived the killed run"
    finally:
        for pid in servers:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)

    again = subprocess.run(command(out), env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    reference = subprocess.run(command(tmp_path / "reference"), env=env, capture_output=True, text=True, timeout=600)
    assert reference.returncode == 0, reference.stderr[-3000:]

    def shards(root):
        manifest = json.loads((root / "datasets" / "killed" / "v1" / "manifest.json").read_text())
        return [(s["path"], s["sha256"]) for s in manifest["shards"]]

    assert shards(out) == shards(tmp_path / "reference")
    leftovers = [p for p in out.rglob("*") if p.name.endswith(".tmp") or ".tmp-" in p.name or ".old-" in p.name]
    assert not leftovers
