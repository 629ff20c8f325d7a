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
