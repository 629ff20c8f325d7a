from pathlib import Path

import pytest

from cotaforge.config import RunConfig, load_config
from cotaforge.errors import ConfigError


def test_yaml_with_overrides_and_relative_manifests(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("run:\n  name: x\ninputs:\n  manifests: [data/m.csv]\nbalance:\n  per_cell: 10\n")
    cfg = load_config(path, ["balance.per_cell=20", "expand.n_options=3", "publish.splits={train: 0.5, test: 0.5}"])
    assert cfg.balance.per_cell == 20 and cfg.expand.n_options == 3
    assert cfg.inputs.manifests == [(tmp_path / "data/m.csv").resolve()]
    assert cfg.publish.splits == {"train": 0.5, "test": 0.5}


@pytest.mark.parametrize("override,message", [
    (["run.batchsize=3"], "Extra inputs are not permitted"),
    (["run.batch_size=0"], "greater than or equal to 1"),
    (["expand.n_options=12"], "less than or equal to 8"),
    (["publish.splits={train: 0.5, test: 0.4}"], "sum to 1"),
    (["ingest.min_duration_s=9", "ingest.max_duration_s=5"], "must be below"),
    (["run.name=../escape"], "letters, digits"),
    (["balance.per_cell=0"], "at least 1"),
    (["novalue"], "KEY=VALUE"),
])
def test_bad_values_fail_with_the_key_named(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, override)


def test_cli_flags_set_dotted_keys():
    cfg = load_config(None, [], inputs__manifests=[Path("/m.csv")], run__out_dir=Path("/o"), run__seed=None)
    assert cfg.inputs.manifests == [Path("/m.csv")] and cfg.run.out_dir == Path("/o") and cfg.run.seed == 0


def test_run_name_defaults_to_manifest_folders():
    cfg = RunConfig.model_validate({"inputs": {"manifests": ["/d/digits/manifest.csv", "/d/drums/manifest.csv"]}})
    assert cfg.run_name == "digits-drums"


def test_section_hash_changes_only_with_its_section():
    a = load_config(None, [])
    b = load_config(None, ["balance.per_cell=5"])
    assert a.section_hash("expand") == b.section_hash("expand")
    assert a.section_hash("balance") != b.section_hash("balance")


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "no.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("run: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
