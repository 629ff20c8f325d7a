"""The shards teach listening: a tiny model trained on an audio-decided dataset made by the pipeline hears.

The dataset is examples/tones (classes only the sound decides, sessions as split groups), built by the
pipeline's own stages with configs/tones.yaml; the tiny model trains on it for a couple of minutes and is
evaluated on held-out sessions with and without each clip's own audio. If anything between the published
shards and the model's inputs stops carrying the audio (a broken collator, features from the wrong clip,
a projector that no longer reaches the decoder), the listening gap falls to zero and this test fails.

`COTAFORGE_ZERO_AUDIO=1` trains with the audio features zeroed in the collator: this test must then fail.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from cotaforge.config import load_config  # noqa: E402
from cotaforge.train.evaluate import evaluate_model  # noqa: E402
from cotaforge.train.recipe import run_finetune  # noqa: E402

from .factories import tiny_config  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


def _make_tones():
    spec = importlib.util.spec_from_file_location("make_tones", ROOT / "examples" / "tones" / "make_tones.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def build_tones_dataset(out_dir: Path, classes: tuple[str, ...] = ("low_tone", "noise"), per_class: int = 6,
                        groups: int = 10) -> Path:
    """examples/tones (`classes` x `per_class` takes x `groups` sessions) through the pipeline's stages."""
    from cotaforge.stages.balance import run_balance
    from cotaforge.stages.caption import run_caption
    from cotaforge.stages.compose import run_compose
    from cotaforge.stages.expand import run_expand
    from cotaforge.stages.ingest import run_ingest
    from cotaforge.stages.publish import dataset_dir, run_publish
    from cotaforge.stages.validate import run_validate

    manifest = _make_tones().write_dataset(out_dir / "tones", groups=groups, per_class=per_class, seed=0,
                                           classes=list(classes))
    cfg = load_config(ROOT / "configs" / "tones.yaml",
                      [f"run.out_dir={out_dir}", f"inputs.manifests=[{manifest}]", "run.batch_size=64",
                       "expand.question_types=[open_ended, yes_no]", "expand.prompt_styles=[concise]",
                       "publish.splits={train: 0.7, validation: 0.1, test: 0.2}"])
    run, _ = run_ingest(cfg)
    for stage in (run_compose, run_caption, run_expand, run_validate, run_balance, run_publish):
        stage(run, cfg)
    return dataset_dir(cfg)


@pytest.mark.slow
def test_a_tiny_model_trained_on_the_shards_listens(tmp_path: Path) -> None:
    dataset = build_tones_dataset(tmp_path)
    zero_audio = os.environ.get("COTAFORGE_ZERO_AUDIO") == "1"
    # Answer-only training keeps the samples short: the check is whether the audio decides the answer.
    cfg = tiny_config(dataset, tmp_path / "runs", "listens",
                      model={"tiny": {"vocab_size": 400, "audio_layers": 2, "text_layers": 2, "audio_dim": 64,
                                      "text_dim": 64, "audio_ffn_dim": 256, "text_ffn_dim": 256,
                                      "audio_dropout": 0.0}},
                      data={"dataset_dir": str(dataset), "pool_rows": 4096, "zero_audio": zero_audio,
                            "augment": {"gain_db_range": [-6, 6]}},
                      train={"max_steps": 300, "answer_only_steps": 300, "batch_size": 8, "grad_accum_steps": 1,
                             "learning_rate": 3e-3, "warmup_steps": 20, "checkpoint_every_steps": 300,
                             "num_threads": 1})
    result = run_finetune(cfg)
    report = evaluate_model(str(result.final_dir), str(dataset), splits=["test"], max_new_tokens=32,
                            batch_size=32, out_dir=tmp_path / "eval")
    rows = {row.value: row for row in report.rows if row.group == "split/type"}
    summary = {value: (round(row.accuracy, 3), row.accuracy_swapped_audio, row.listening_gap, row.n_swapped)
               for value, row in rows.items()}
    print(f"zero_audio={zero_audio}: (accuracy, swapped-audio accuracy, gap, n) {summary}")
    open_ended = rows["test/open_ended"]
    assert open_ended.n_swapped >= 12
    # Two classes: a model that names the class from the audio is right with its own clip and wrong with the
    # other class's clip (gap up to 1); one that cannot hear names one class for every clip (gap about 0).
    assert open_ended.accuracy >= 0.75, summary
    assert open_ended.listening_gap is not None and open_ended.listening_gap >= 0.5, summary
