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
