"""The command line in a fresh process, as a user runs it: no config file, the README's flags."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration
CLI = [sys.executable, "-m", "cotaforge.cli"]


def run_cli(*args, cwd):
    env = {**os.environ, "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_HOME": str(Path(cwd) / ".prefect")}
    return subprocess.run([*CLI, *map(str, args)], cwd=cwd, capture_output=True, text=True, env=env, timeout=500)


def test_run_with_manifests_and_no_config(tmp_path, digits_manifest, defects_manifest):
    manifest, expected = defects_manifest
    result = run_cli("run", "--manifest", digits_manifest, "--manifest", manifest, "--out", tmp_path / "out",
                     "--group-by", "speaker", "--set", "ingest.max_duration_s=5", "--set", "balance.per_cell=20",
                     cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    dataset = tmp_path / "out" / "datasets" / "digits0-defects" / "v1"
    assert f"Dataset: {dataset}" in result.stdout
    assert f"Rejected rows: {len(expected)} " in result.stdout
    assert str(tmp_path / "out" / "runs" / "digits0-defects" / "rejects") in result.stdout
    assert (tmp_path / "out" / "runs" / "digits0-defects" / "config.sha256").is_file()
    assert (dataset / "manifest.json").is_file()


def test_bad_config_exits_2_with_a_message(tmp_path, digits_manifest):
    result = run_cli("run", "--manifest", digits_manifest, "--out", tmp_path, "--set", "expand.n_options=1",
                     cwd=tmp_path)
    assert result.returncode == 2 and "expand.n_options" in result.stderr
    result = run_cli("run", "--manifest", tmp_path / "missing.csv", "--out", tmp_path, cwd=tmp_path)
    assert result.returncode == 2 and "does not exist" in result.stderr


def test_schemas_check_and_inspect(tmp_path):
    root = Path(__file__).resolve().parents[1]
    result = run_cli("schemas", "check", "--folder", root / "schemas", cwd=tmp_path)
    assert result.returncode == 0 and "up to date" in result.stdout
    result = run_cli("inspect", tmp_path, cwd=tmp_path)
    assert result.returncode == 2 and "manifest.json" in result.stderr
