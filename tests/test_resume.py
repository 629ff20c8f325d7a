"""Re-running redoes nothing; a changed prompt or config redoes only what it affects; a deleted part
redoes exactly its batch."""

import shutil

from cotaforge.prompts import prompts_dir

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
