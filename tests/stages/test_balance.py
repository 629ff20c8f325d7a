import json
from collections import Counter


from cotaforge.stages.balance import water_fill

from ..conftest import make_config, read_stage, run_stages


def test_water_fill_shares_evenly_within_capacity():
    assert water_fill({"a": 10, "b": 10, "c": 10}, 12) == {"a": 4, "b": 4, "c": 4}
    assert water_fill({"a": 1, "b": 10, "c": 10}, 12) == {"a": 1, "b": 6, "c": 5} or \
        water_fill({"a": 1, "b": 10, "c": 10}, 12) == {"a": 1, "b": 5, "c": 6}
    assert water_fill({"a": 3, "b": 2}, 100) == {"a": 3, "b": 2}
    assert water_fill({"a": 0, "b": 4}, 2) == {"a": 0, "b": 2}


def test_cells_reach_the_target_and_answers_balance(tmp_path, digits_manifest, drums_manifest):
    cfg = make_config(tmp_path / "out", [digits_manifest, drums_manifest], "balance.per_cell=30")
    run, reports = run_stages(cfg, until="balance")
    kept = read_stage(run, "balance")
    cells = Counter((s["class_label"], s["prompt_style"]) for s in kept)
    before = Counter((s["class_label"], s["prompt_style"]) for s in read_stage(run, "validate"))
    for cell, count in cells.items():
        assert count == min(30, before[cell])
    plan = json.loads((run.root / "balance" / "plan.json").read_text())
    assert plan["target_per_cell"] == 30
    yes_no = Counter(s["answer"] for s in kept if s["question_type"] == "yes_no")
    assert abs(yes_no["yes"] - yes_no["no"]) <= len(cells)
    validated = read_stage(run, "validate")
    for cls, style in cells:
        def letters(rows):
            return Counter(s["answer"] for s in rows if s["question_type"] == "multiple_choice"
                           and s["class_label"] == cls and s["prompt_style"] == style)
        kept_letters, available = letters(kept), letters(validated)
        # As even as the supply allows: a letter more than one below the top has nothing left to give.
        for letter, count in available.items():
            if kept_letters[letter] < max(kept_letters.values()) - 1:
                assert kept_letters[letter] == count, (cls, style, kept_letters, available)
    dropped = run.rejects("balance").to_pylist()
    assert len(dropped) == len(read_stage(run, "validate")) - len(kept)
    assert {r["reason"] for r in dropped} == {"balanced_out"}
    assert reports["balance"].rejected["balanced_out"] == len(dropped)


def test_seeded_and_deterministic(tmp_path, digits_manifest):
    chosen = []
    for seed in (0, 0, 1):
        cfg = make_config(tmp_path / f"out{len(chosen)}", [digits_manifest], "balance.per_cell=20", f"run.seed={seed}")
        run, _ = run_stages(cfg, until="balance")
        chosen.append(sorted(s["sample_id"] for s in read_stage(run, "balance")))
    assert chosen[0] == chosen[1] and chosen[0] != chosen[2]


def test_short_cells_are_reported_and_default_target_is_the_median(built):
    cfg, run, reports = built
    plan = json.loads((run.root / "balance" / "plan.json").read_text())
    sizes = sorted(plan["before"].values())
    assert plan["target_per_cell"] == int((sizes[(len(sizes) - 1) // 2] + sizes[len(sizes) // 2]) / 2)
    assert plan["short_cells"] == sorted(c for c, n in plan["before"].items() if n < plan["target_per_cell"])
    assert any("short of target" in note for note in reports["balance"].notes) == bool(plan["short_cells"])


def test_disabled_keeps_everything(tmp_path, digits_manifest):
    cfg = make_config(tmp_path / "out", [digits_manifest], "balance.enabled=false")
    run, reports = run_stages(cfg, until="balance")
    assert reports["balance"].rows_out == reports["validate"].rows_out


def _sample_row(sample_id: str, answer: str, twin_of: str = "", target: str = "scene.count") -> dict:
    from cotaforge.store import SAMPLE_SCHEMA

    row = {name: "" for name in SAMPLE_SCHEMA.names}
    row.update(sample_id=sample_id, clip_id=f"clip-{sample_id}", group_id="scene:g", source_dataset="drums",
               duration_s=3.0, sample_rate_hz=16000, labels=["kick"], class_label="kick", metadata="{}",
               question_type="count", prompt_style="concise", target=target, target_value=answer, asked_value='["kick"]',
               options=[], answer=answer, validation="{}", schema_version="1.0", scene_kind="repeat", events="[]",
               twin_of=twin_of, teacher={"backend": "template", "model": "template", "prompt_versions": [],
                                         "parameters": "{}"})
    return row


def test_twin_pairs_stay_whole_and_orphans_are_unlinked(tmp_path):
    import pyarrow as pa

    from cotaforge.config import load_config
    from cotaforge.models import StageReport
    from cotaforge.stages.balance import balance_batch, plan_balance
    from cotaforge.store import SAMPLE_SCHEMA, RunDir, write_table_atomic

    run = RunDir(tmp_path / "run")
    write_table_atomic(pa.table({"row": pa.array([], pa.int64())}), run.manifest_path, {b"cotaforge.batches": b"1"})
    rows = [_sample_row("a", "2", twin_of="b"), _sample_row("b", "3", twin_of="a"),
            _sample_row("c", "4", twin_of="gone")]  # c's twin failed validation
    run.write_part("validate", 0, pa.Table.from_pylist(rows, schema=SAMPLE_SCHEMA), "fp", [],
                   StageReport(stage="validate"))
    cfg = load_config(None, [f"run.out_dir={tmp_path}", "balance.per_cell=1"])
    plan = plan_balance(run, cfg)
    # the cell's target is 1, but a kept twin keeps its pair: a and b stay together, c's link is cleared
    # (the quota of 1 goes to the first answer, "2": sample a; its twin b is kept with it, c is dropped)
    assert plan["twin_unlinked"] == ["c"] and plan["twin_keep"] == ["b"]
    balance_batch(run, cfg, 0, plan)
    kept = {r["sample_id"]: r["twin_of"] for r in run.read_part("balance", 0).to_pylist()}
    assert kept == {"a": "b", "b": "a"}
    assert sum(plan["after"].values()) == len(kept)
    # an orphan that is kept loses its link
    cfg = load_config(None, [f"run.out_dir={tmp_path}", "balance.per_cell=3"])
    balance_batch(run, cfg, 0, plan_balance(run, cfg))
    kept = {r["sample_id"]: r["twin_of"] for r in run.read_part("balance", 0).to_pylist()}
    assert kept == {"a": "b", "b": "a", "c": ""}


def test_scene_answers_are_spread_by_value_letter_and_side():
    from cotaforge.stages.balance import _answer_key

    assert _answer_key("count", "3", "scene.count", '["kick"]') == "3"
    assert _answer_key("count", "B", "scene.count", '["kick"]') == "B"
    assert _answer_key("presence", "no", "scene.present", '["tom"]') == "no"
    assert _answer_key("loudness", "tom", "scene.louder", '["kick", "tom"]') == "second"
    assert _answer_key("loudness", "kick", "scene.louder", '["kick", "tom"]') == "first"
    assert _answer_key("timing", "1.2", "scene.onset", '["kick"]') == "-"
    assert _answer_key("open_ended", "kick", "class", "") == "-"
