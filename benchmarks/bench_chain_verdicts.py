"""When does the tiny model learn its chains' copies and verdicts? Text-only steps, probed as they go.

    .venv/bin/python benchmarks/bench_chain_verdicts.py output/datasets/tones/v1
    .venv/bin/python benchmarks/bench_chain_verdicts.py DATASET --steps 1200 --every 100 --learning-rate 1e-3

Trains the model of a fine-tuning config (default `configs/finetune/tiny-tones.yaml`) on text alone: its copy
phase, then chain steps (the train split's samples without their audio), and every `--every` steps scores the
test split's chains the same way, teacher-forced: is the next token predicted right? With the heard sound
written in the chain, every copy and verdict follows from the text, so this shows how many steps the decoder
needs before it compares two sounds, apart from learning to hear. It prints one JSON line per probe:
- `copy`: the first token of each option copied into a check line (after its `\\nB.` marker);
- `letter`: the letter of `So the answer is (C).` right after the check lines;
- `mc:<line>:<verdict>`: the verdicts of multiple-choice check lines by line letter and right verdict (the
  list stops at the answer, so "yes" is a quarter of A lines, a third of B lines, half of C lines: a model
  that follows the position instead of the comparison gets the answer's line wrong);
- `yes_no:<verdict>`: the yes/no decision.
Verdicts are the token after `they` (`cot_template.v6`: `they differ` / `they are the same`) or after `"):`
in a check line (v4: `: no` / `: yes`).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from cotaforge.train.config import FinetuneConfig  # noqa: E402
from cotaforge.train.data import EncodedSample, collate, iter_rows, render_user_text, split_shards  # noqa: E402
from cotaforge.train.recipe import FinetuneRecipe  # noqa: E402

COLUMNS = ["question", "options", "assistant_text", "question_type"]
LINE_MARKERS = {f"\n{letter}.": letter for letter in "ABCDEFGH"}


def decision_positions(tokens: list[str], start: int, question_type: str) -> list[tuple[int, str]]:
    """(position, what) of each copy, letter and verdict token of a chain, its tokens as strings."""
    found: list[tuple[int, str]] = []
    line = None
    for i in range(start, len(tokens) - 1):
        if tokens[i] in LINE_MARKERS and question_type == "multiple_choice":
            line = LINE_MARKERS[tokens[i]]
            found.append((i + 1, "copy"))
        elif tokens[i] in ("Ġthey", '"):'):
            verdict = tokens[i + 1].lstrip("Ġ")
            where = f"mc:{line}" if question_type == "multiple_choice" and line else question_type
            found.append((i + 1, f"{where}:{verdict}"))
        elif tokens[i] == "Ġ(" and tokens[i - 1] == "Ġis" and line is not None:
            found.append((i + 1, "letter"))
            line = None  # the check list is over: later `they`s are not check lines
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dataset", type=Path, help="a published dataset folder (cotaforge run)")
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "finetune" / "tiny-tones.yaml")
    parser.add_argument("--steps", type=int, default=1000, help="chain steps after the config's copy phase")
    parser.add_argument("--every", type=int, default=100)
    parser.add_argument("--copy-steps", type=int, default=None, help="default: the config's")
    parser.add_argument("--learning-rate", type=float, default=None, help="default: the config's")
    parser.add_argument("--probe-rows", type=int, default=240)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()

    raw = yaml.safe_load(args.config.read_text(encoding="utf-8"))
    train = raw["train"]
    copy_steps = train.get("copy_steps", 0) if args.copy_steps is None else args.copy_steps
    train.update(copy_steps=copy_steps, chain_steps=args.steps, max_steps=copy_steps + args.steps + 1,
                 num_threads=args.threads, checkpoint_every_steps=10**9)
    if args.learning_rate is not None:
        train["learning_rate"] = args.learning_rate
    raw["data"]["dataset_dir"] = str(args.dataset)
    with tempfile.TemporaryDirectory() as scratch:
        raw.update(output_dir=scratch, run_name="chain-verdicts")
        recipe = FinetuneRecipe(FinetuneConfig.model_validate(raw))
        recipe.setup(resume=False)
        tokenizer = recipe.processor.tokenizer
        probe: list[tuple[EncodedSample, list[tuple[int, str]]]] = []
        for row in iter_rows(split_shards(args.dataset, "test"), columns=COLUMNS):
            if row["question_type"] not in ("multiple_choice", "yes_no"):
                continue
            sample = recipe.encoder.encode_text(render_user_text(row["question"], row["options"] or []),
                                                row["assistant_text"])
            if sample is not None:
                tokens = tokenizer.convert_ids_to_tokens(sample.input_ids)
                probe.append((sample, decision_positions(tokens, sample.prompt_tokens, row["question_type"])))
            if len(probe) == args.probe_rows:
                break
        print(json.dumps({"dataset": str(args.dataset), "probe_chains": len(probe), "copy_steps": copy_steps,
                          "learning_rate": train["learning_rate"]}), flush=True)
        started = time.perf_counter()
        while recipe.step < copy_steps + args.steps:
            loss = recipe._train_step()["loss"]
            recipe.step += 1
            if recipe.step % args.every == 0:
                scores = score(recipe, probe)
                print(json.dumps({"step": recipe.step, "seconds": round(time.perf_counter() - started, 1),
                                  "loss": round(loss, 3), **scores}), flush=True)
        recipe.cleanup()


def score(recipe: FinetuneRecipe, probe: list[tuple[EncodedSample, list[tuple[int, str]]]]) -> dict[str, str]:
    """Teacher-forced hits per kind of decision token, as 'right/total'."""
    import torch

    totals, right = Counter(), Counter()
    recipe.model.eval()
    with torch.no_grad():
        for first in range(0, len(probe), 32):
            chunk = probe[first:first + 32]
            batch = collate([sample for sample, _ in chunk], recipe.pad_id)
            predicted = recipe.model(input_ids=batch["input_ids"],
                                     attention_mask=batch["attention_mask"]).logits.argmax(-1)
            for row, (sample, positions) in enumerate(chunk):
                for position, kind in positions:
                    totals[kind] += 1
                    right[kind] += int(predicted[row, position - 1]) == sample.input_ids[position]
    recipe.model.train()
    return {kind: f"{right[kind]}/{totals[kind]}" for kind in sorted(totals)}


if __name__ == "__main__":
    main()
