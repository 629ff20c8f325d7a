"""The `cotaforge review` commands."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from cotaforge.cli import app
from cotaforge.review.db import ReviewStore, default_db_url
from cotaforge.store import RunDir


def test_add_annotator_prints_the_token_once_and_stores_its_hash(run: RunDir) -> None:
    result = CliRunner().invoke(app, ["review", "add-annotator", "ana", "--run", str(run.root)])
    assert result.exit_code == 0, result.output
    token = result.stdout.strip().splitlines()[-1]
    store = ReviewStore(default_db_url(run))
    assert store.annotator_for_token(token).name == "ana"
    again = CliRunner().invoke(app, ["review", "add-annotator", "ana", "--run", str(run.root)])
    assert again.exit_code == 2 and "--rotate" in again.output
    store.close()


def test_add_annotator_needs_a_run_directory(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["review", "add-annotator", "ana", "--run", str(tmp_path)])
    assert result.exit_code == 2 and "no config.yaml" in result.output.replace("\n", " ")


def test_label_studio_commands(run: RunDir, tmp_path: Path) -> None:
    out = tmp_path / "tasks.json"
    exported = CliRunner().invoke(app, ["review", "export-labelstudio", str(run.root), str(out)])
    assert exported.exit_code == 0, exported.output
    tasks = json.loads(out.read_text())
    tasks[0]["annotations"] = [{"id": 1, "completed_by": 3, "result": [
        {"from_name": "decision", "to_name": "audio", "type": "choices", "value": {"choices": ["accept"]}}]}]
    out.write_text(json.dumps(tasks))
    imported = CliRunner().invoke(app, ["review", "import-labelstudio", str(run.root), str(out)])
    assert imported.exit_code == 0 and "imported 1 decisions" in imported.stdout


def test_annotators_are_listed_updated_and_removed(run: RunDir, tmp_path: Path) -> None:
    runner = CliRunner()
    added = runner.invoke(app, ["review", "add-annotator", "ana", "--run", str(run.root), "--admin",
                                "--email", "ana@example.org"])
    assert added.exit_code == 0, added.output
    token = added.stdout.strip().splitlines()[-1]
    runner.invoke(app, ["review", "add-annotator", "bo", "--run", str(run.root)])
    store = ReviewStore(default_db_url(run))
    ana = store.annotator_for_token(token)
    assert ana.admin
    store.record_decision(nonce="c" * 24, sample_id="s" * 10, annotator_id=ana.id, action="accept")
    updated = runner.invoke(app, ["review", "add-annotator", "bo", "--run", str(run.root), "--email", "bo@example.org"])
    assert updated.exit_code == 0 and updated.stdout.strip() == "updated bo"  # no new token
    bad = runner.invoke(app, ["review", "add-annotator", "cy", "--run", str(run.root), "--email", "cy at home"])
    assert bad.exit_code == 2 and "e-mail" in bad.output

    listing = runner.invoke(app, ["review", "annotators", str(run.root)]).stdout.splitlines()
    rows = {line.split()[0]: line.split() for line in listing[1:]}
    assert rows["ana"][1:3] == ["admin", "1"] and rows["ana"][-1] == "ana@example.org"
    assert rows["bo"][1:4] == ["annotator", "0", "never"] and rows["bo"][-1] == "bo@example.org"

    removed = runner.invoke(app, ["review", "remove-annotator", "ana", "--run", str(run.root)])
    assert removed.exit_code == 0 and "decisions stay" in removed.stdout
    assert store.annotator_for_token(token) is None and len(store.decisions()) == 1
    assert "removed" in runner.invoke(app, ["review", "annotators", str(run.root)]).stdout
    unknown = runner.invoke(app, ["review", "remove-annotator", "zed", "--run", str(run.root)])
    assert unknown.exit_code == 2 and "no annotator named" in unknown.output
    store.close()


def test_label_studio_export_needs_an_email_per_annotator(run: RunDir, tmp_path: Path) -> None:
    runner = CliRunner()
    store = ReviewStore(default_db_url(run))
    bo = store.annotator_for_token(store.add_annotator("bo")).id
    from cotaforge.review.samples import RunSamples

    sample_id = RunSamples(run).entries[0].sample_id
    store.record_decision(nonce="d" * 24, sample_id=sample_id, annotator_id=bo, action="accept")
    out = tmp_path / "tasks.json"
    refused = runner.invoke(app, ["review", "export-labelstudio", str(run.root), str(out)])
    assert refused.exit_code == 2 and "--email-domain" in refused.output and not out.exists()
    done = runner.invoke(app, ["review", "export-labelstudio", str(run.root), str(out), "--email-domain", "lab.org"])
    assert done.exit_code == 0, done.output
    (task,) = [t for t in json.loads(out.read_text()) if t["annotations"]]
    assert task["annotations"][0]["completed_by"] == {"email": "bo@lab.org"}
    store.close()
