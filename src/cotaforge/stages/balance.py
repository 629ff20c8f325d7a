"""balance: even out samples per (class, prompt style), and the answers inside each cell.

A model can learn to key on a prompt's style instead of the audio when style and class correlate, so every
(class, prompt style) cell is brought to one target size. Inside a cell the target is shared evenly across
question types, and inside a type evenly across answers (each correct letter of multiple choice, yes and
no), so neither letter position nor yes/no carries a signal. Selection is seeded: each sample's rank is a
hash of (seed, sample_id), and a cell keeps its lowest-ranked samples.

Two steps. `plan_balance` reads only the key columns of every `validate/part-N` (a few bytes per sample)
and writes `balance/plan.json`: the target, the kept rank threshold per sub-cell and before/after counts.
`balance_batch` then filters one part by the plan (mapped over batches). Cells smaller than the target are
kept whole and listed as short in the plan and the report. Rows beyond their cell's target go to the rejects
with reason `balanced_out`, so nothing disappears silently.

Scene questions fall in the cell of the first class they ask about (for questions that name none, the scene's
first sound: the sample's `class_label`), and their answers spread like the rest: the option letter of
multiple choice, yes and no, the number of an open count, and for "which is louder, X or Y" whether the
answer is the first or the second sound named.

Twin pairs stay whole: both samples of a pair share one rank, and when the quotas keep one of them the plan
keeps the other too (`twin_keep`; a cell may go over its target by those few). A sample whose twin did not
pass validation has its `twin_of` link cleared (`twin_unlinked`), so no published row points at a missing row.
"""

from __future__ import annotations

import hashlib
import json
import time

import numpy as np
import pyarrow as pa

from cotaforge import progress
from cotaforge.config import RunConfig, stable_hash
from cotaforge.models import Rejection, StageReport, merge_reports
from cotaforge.store import RunDir, fingerprint, write_text_atomic

STAGE = "balance"
STAGE_VERSION = 2
KEY_COLUMNS = ["sample_id", "class_label", "prompt_style", "question_type", "answer", "target", "asked_value",
               "twin_of"]
_SEP = "|"  # joins key parts; ingest rejects labels containing it


def sample_rank(seed: int, sample_id: str) -> int:
    return int.from_bytes(hashlib.blake2b(f"{seed}:{sample_id}".encode(), digest_size=8).digest(), "big")


def _answer_key(question_type: str, answer: str, target: str = "", asked_value: str = "") -> str:
    """What answers are spread over inside a cell: letters, yes/no, counts, first/second sound named."""
    if question_type in ("multiple_choice", "yes_no"):
        return answer
    if not target.startswith("scene."):
        return "-"
    if len(answer) == 1 and answer.isupper() or answer in ("yes", "no") or target == "scene.count":
        return answer  # an option letter, yes/no, or a count
    if target == "scene.louder":
        asked = json.loads(asked_value or "[]")
        return "first" if asked and answer == asked[0] else "second"
    return "-"


def _rank_id(sample_id: str, twin_of: str) -> str:
    """The id a sample is ranked by: a twin pair shares one, so its samples tend to be kept or dropped together."""
    return min(sample_id, twin_of) if twin_of else sample_id


def _sub_key(c: str, s: str, q: str, a: str, t: str, v: str) -> str:
    return _SEP.join((c, s, q, _answer_key(q, a, t, v)))


def water_fill(capacities: dict[str, int], total: int) -> dict[str, int]:
    """Share `total` as evenly as the capacities allow (a small sub-cell gives its spare to the others)."""
    quota = {key: 0 for key in capacities}
    remaining = min(total, sum(capacities.values()))
    open_keys = sorted(k for k, c in capacities.items() if c > 0)
    while remaining > 0 and open_keys:
        share = max(remaining // len(open_keys), 1)
        for key in list(open_keys):
            give = min(share, capacities[key] - quota[key], remaining)
            quota[key] += give
            remaining -= give
            if quota[key] >= capacities[key]:
                open_keys.remove(key)
            if remaining == 0:
                break
    return quota


def _plan_fingerprint(run: RunDir, cfg: RunConfig) -> str:
    upstream = [run.part_fingerprint("validate", b) for b in range(run.batch_count())]
    return fingerprint(STAGE, STAGE_VERSION, cfg.section_hash("balance"), cfg.run.seed, stable_hash(upstream))


def plan_path(run: RunDir):
    return run.stage_dir(STAGE) / "plan.json"


def plan_balance(run: RunDir, cfg: RunConfig) -> dict:
    """Decide how many samples each sub-cell keeps; write and return `balance/plan.json`."""
    fp = _plan_fingerprint(run, cfg)
    if plan_path(run).exists():
        plan = json.loads(plan_path(run).read_text(encoding="utf-8"))
        if plan.get("fingerprint") == fp:
            return plan
    sub_keys: list[np.ndarray] = []
    ranks: list[np.ndarray] = []
    key_index: dict[str, int] = {}
    twins: dict[str, tuple[str, int]] = {}  # sample_id -> (twin's sample_id, its position in the run)
    position = 0
    for batch in range(run.batch_count()):
        table = run.read_part("validate", batch, KEY_COLUMNS)
        columns = {c: table[c].to_pylist() for c in KEY_COLUMNS}
        keys = [key_index.setdefault(_sub_key(c, s, q, a, t, v), len(key_index))
                for c, s, q, a, t, v in zip(columns["class_label"], columns["prompt_style"], columns["question_type"],
                                            columns["answer"], columns["target"], columns["asked_value"])]
        sub_keys.append(np.asarray(keys, dtype=np.int32))
        ranks.append(np.asarray([sample_rank(cfg.run.seed, _rank_id(s, t)) for s, t in
                                 zip(columns["sample_id"], columns["twin_of"])], dtype=np.uint64))
        for i, (sid, twin) in enumerate(zip(columns["sample_id"], columns["twin_of"])):
            if twin:
                twins[sid] = (twin, position + i)
        position += table.num_rows
    sub = np.concatenate(sub_keys) if sub_keys else np.zeros(0, np.int32)
    rank = np.concatenate(ranks) if ranks else np.zeros(0, np.uint64)
    names = list(key_index)
    counts = np.bincount(sub, minlength=len(names)) if len(names) else np.zeros(0, int)

    cells: dict[str, dict[str, dict[str, int]]] = {}  # cell -> question type -> answer key -> count
    for name, count in zip(names, counts.tolist()):
        cls, style, qtype, answer = name.split(_SEP)
        cells.setdefault(cls + _SEP + style, {}).setdefault(qtype, {})[answer] = count
    sizes = {cell: sum(sum(a.values()) for a in types.values()) for cell, types in cells.items()}
    target = _target(cfg, list(sizes.values()))

    quotas: dict[str, int] = {}
    for cell, types in cells.items():
        by_type = water_fill({q: sum(a.values()) for q, a in types.items()}, target if cfg.balance.enabled else sizes[cell])
        for qtype, answers in types.items():
            for answer, kept in water_fill(answers, by_type[qtype]).items():
                quotas[_SEP.join((cell, qtype, answer))] = kept

    # The kept threshold per sub-cell: the rank of its quota-th smallest sample.
    order = np.lexsort((rank, sub))
    starts = np.searchsorted(sub[order], np.arange(len(names)))
    thresholds = {}
    for i, name in enumerate(names):
        kept = quotas[name]
        thresholds[name] = int(rank[order[starts[i] + kept - 1]]) if kept > 0 else -1

    # Twin pairs: keep a pair whole, and unlink a sample whose twin is not here (it failed validation).
    limits = np.asarray([max(thresholds[n], 0) for n in names], dtype=np.uint64)
    open_keys = np.asarray([thresholds[n] >= 0 for n in names], dtype=bool)
    kept_mask = (rank <= limits[sub]) & open_keys[sub] if len(sub) else np.zeros(0, bool)
    twin_keep, twin_unlinked = [], []
    for sid, (twin, index) in twins.items():
        partner = twins.get(twin)
        if partner is None or partner[0] != sid:
            twin_unlinked.append(sid)
        elif not kept_mask[index] and kept_mask[partner[1]]:
            twin_keep.append(sid)
            kept_mask[index] = True
    after = np.bincount(sub[kept_mask], minlength=len(names)) if len(names) else np.zeros(0, int)
    kept_per_key = dict(zip(names, after.tolist()))

    plan = {
        "fingerprint": fp,
        "seed": cfg.run.seed,
        "enabled": cfg.balance.enabled,
        "target_per_cell": target,
        "thresholds": thresholds,
        "before": {cell: sizes[cell] for cell in sorted(sizes)},
        "after": {cell: sum(v for k, v in kept_per_key.items() if k.startswith(cell + _SEP)) for cell in sorted(sizes)},
        "short_cells": sorted(cell for cell, size in sizes.items() if size < target),
        "answers_after": _answers_after(kept_per_key),
        "twin_keep": sorted(twin_keep),
        "twin_unlinked": sorted(twin_unlinked),
    }
    write_text_atomic(plan_path(run), json.dumps(plan, indent=1, sort_keys=True))
    return plan


def _target(cfg: RunConfig, sizes: list[int]) -> int:
    if not sizes:
        return 0
    per_cell = cfg.balance.per_cell
    if per_cell == "min":
        return min(sizes)
    if per_cell == "median":
        return int(np.median(sizes))
    return int(per_cell)


def _answers_after(quotas: dict[str, int]) -> dict[str, dict[str, int]]:
    answers: dict[str, dict[str, int]] = {}
    for key, kept in quotas.items():
        _, _, qtype, answer = key.split(_SEP)
        answers.setdefault(qtype, {})
        answers[qtype][answer] = answers[qtype].get(answer, 0) + kept
    return answers


def cell_name(cell_key: str) -> tuple[str, str]:
    cls, style = cell_key.split(_SEP)
    return cls, style


def batch_fingerprint(run: RunDir, cfg: RunConfig, batch: int, plan: dict) -> str:
    """What `balance/part-<batch>` must be made from; a part that stores another fingerprint is redone."""
    return fingerprint(STAGE, plan["fingerprint"], run.part_fingerprint("validate", batch))


def balance_batch(run: RunDir, cfg: RunConfig, batch: int, plan: dict) -> StageReport:
    """Keep the rows of `validate/part-<batch>` the plan selects, in `balance/part-<batch>.parquet`."""
    started = time.perf_counter()
    fp = batch_fingerprint(run, cfg, batch, plan)
    if run.part_fingerprint(STAGE, batch) == fp:
        report = run.stored_report(STAGE, batch)
        progress.advance(STAGE, report.rows_in)
        return report
    table = run.read_part("validate", batch)
    keys = list(zip(*(table[col].to_pylist() for col in KEY_COLUMNS)))
    promoted = set(plan.get("twin_keep", []))
    keep = [sample_rank(plan["seed"], _rank_id(sid, tw)) <= plan["thresholds"][_sub_key(c, s, q, a, t, v)]
            or sid in promoted for sid, c, s, q, a, t, v, tw in keys]
    kept = table.filter(pa.array(keep, pa.bool_())) if table.num_rows else table
    unlinked = set(plan.get("twin_unlinked", []))
    if unlinked and kept.num_rows:
        twin_of = [("" if sid in unlinked else tw) for sid, tw in
                   zip(kept["sample_id"].to_pylist(), kept["twin_of"].to_pylist())]
        kept = kept.set_column(kept.schema.get_field_index("twin_of"), "twin_of", pa.array(twin_of, pa.string()))
    clip_ids = table["clip_id"].to_pylist()
    rejects = [Rejection(stage=STAGE, reason="balanced_out", reasons=["balanced_out"], sample_id=sid, clip_id=clip_id,
                         message=f"sample {sid}: its cell ({c}, {s}, {q}, answer {a}) is over the balance target")
               for (sid, c, s, q, a, *_), clip_id, kept_row in zip(keys, clip_ids, keep) if not kept_row]
    progress.advance(STAGE, table.num_rows)
    report = StageReport(stage=STAGE, rows_in=table.num_rows, rows_out=kept.num_rows, parts_done=1,
                         rejected={"balanced_out": len(rejects)} if rejects else {},
                         seconds=time.perf_counter() - started)
    run.write_part(STAGE, batch, kept, fp, rejects, report)
    return report


def balance_summary(plan: dict) -> list[str]:
    """Before/after lines for the run report."""
    lines = [f"target per (class, prompt style) cell: {plan['target_per_cell']} (seed {plan['seed']})"]
    if plan["short_cells"]:
        short = ", ".join(f"{c}/{s} ({plan['before'][k]})" for k in plan["short_cells"] for c, s in [cell_name(k)])
        lines.append(f"cells short of target, kept whole: {short}")
    return lines


def run_balance(run: RunDir, cfg: RunConfig) -> StageReport:
    plan = plan_balance(run, cfg)
    report = merge_reports(STAGE, [balance_batch(run, cfg, b, plan) for b in range(run.batch_count())])
    report.notes = balance_summary(plan)
    return report

