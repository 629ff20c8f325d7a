"""The fine-tuning recipe: setup, train, save_checkpoint, cleanup.

It streams the train split's shards in length-bucketed micro-batches and trains a Qwen2-Audio model on
(system prompt; user: audio + question with options; assistant: the tagged CoT text), with the loss on the
assistant's tokens only. One process runs as is; several run under `accelerate launch` (DDP or FSDP, from
the accelerate config file), each process taking every N-th micro-batch.

Resume is exact: a checkpoint holds the model, optimizer, scheduler and RNG states (accelerate's
`save_state`) plus the data position, so a stopped run that is started again reaches the same weights as
one that never stopped. A LoRA checkpoint holds only the trainable weights (adapters, projector): the frozen
base is rebuilt identically on resume. A checkpoint folder is complete once its `trainer_state.json` exists.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cotaforge.train.config import FinetuneConfig
from cotaforge.train.data import (
    BucketedBatches,
    ChainBatches,
    CopyBatches,
    DataPosition,
    EncodedSample,
    SampleEncoder,
    StreamCounts,
    augment_waveform,
    collate,
    decode_wav,
    response_only,
    iter_rows,
    render_user_text,
    split_shards,
)
from cotaforge.train.loss import answer_loss_terms, answer_tokens
from cotaforge.train.model import export_model, load_model_for_training, load_processor_for_training
from cotaforge.train.report import plot_loss_curve

if TYPE_CHECKING:
    from cotaforge.train.evaluate import EvalReport

logger = logging.getLogger(__name__)

CHECKPOINTS_DIR = "checkpoints"
FINAL_DIR = "final"
METRICS_FILE = "metrics.jsonl"
STATE_FILE = "trainer_state.json"
LOSS_PLOT = "loss.png"
# Changing these between a stop and a resume does not change the trained weights.
RESUME_FREE_TRAIN_KEYS = {"checkpoint_every_steps", "keep_checkpoints", "eval_every_steps", "log_every_steps",
                          "num_threads"}


@dataclass
class TrainResult:
    run_dir: Path
    steps: int
    seconds: float
    final_dir: Path | None
    last_loss: float | None
    counts: dict[str, int] = field(default_factory=dict)


def _keep_trainable_weights(models: list[Any], weights: list[dict[str, Any]], output_dir: str) -> None:
    """accelerate's save-state hook: drop every frozen tensor from the state dicts about to be saved."""
    for model, state_dict in zip(models, weights):
        trainable = {name for name, parameter in model.named_parameters() if parameter.requires_grad}
        for key in [key for key in state_dict if key not in trainable]:
            del state_dict[key]


def _resume_fingerprint(cfg: FinetuneConfig) -> dict[str, Any]:
    data = cfg.model_dump(mode="json", include={"model", "lora", "data", "train"})
    data["train"] = {k: v for k, v in data["train"].items() if k not in RESUME_FREE_TRAIN_KEYS}
    return data


class FinetuneRecipe:
    """Fine-tune on a published dataset. Use: `setup()`, `train()`, `cleanup()`, or `run_finetune(cfg)`."""

    def __init__(self, cfg: FinetuneConfig) -> None:
        self.cfg = cfg
        self.run_dir = cfg.run_dir
        self.step = 0
        self.seconds = 0.0
        self.last_loss: float | None = None
        self.window_lengths: list[int] = []

    # -- setup -------------------------------------------------------------------------------------------
    def setup(self, resume: bool = True) -> None:
        """Build everything; load the latest complete checkpoint when `resume` and one exists."""
        import torch
        from accelerate import Accelerator
        from accelerate.utils import set_seed
        from transformers import get_scheduler

        cfg = self.cfg
        if cfg.train.num_threads is not None:
            torch.set_num_threads(cfg.train.num_threads)
        on_gpu = torch.cuda.is_available()
        if cfg.train.precision == "bf16" and not on_gpu:
            raise ValueError("train.precision is bf16 but no GPU is visible; use 'auto' or 'fp32' on CPU")
        mixed = "bf16" if on_gpu and cfg.train.precision in ("auto", "bf16") else "no"
        self.accelerator = Accelerator(mixed_precision=mixed, cpu=not on_gpu)
        if (cfg.train.copy_steps or cfg.train.chain_steps) and self.accelerator.num_processes > 1:
            # A text-only step leaves the audio encoder without gradients, which DDP and FSDP take as an error.
            raise ValueError("train.copy_steps and train.chain_steps run on one process only (they are for a tiny "
                             "model trained from scratch); set them to 0 for a multi-process run")
        self.run_dir.mkdir(parents=True, exist_ok=True)
        latest = self.latest_checkpoint() if resume else None
        if not resume and (self.run_dir / CHECKPOINTS_DIR).exists():
            raise ValueError(f"{self.run_dir} already has checkpoints: resume, or pick a new run_name")
        if latest is not None:
            self._check_resumable(latest)
        if self.accelerator.is_main_process:
            (self.run_dir / "config.yaml").write_text(cfg.to_yaml(), encoding="utf-8")
            if latest is None:
                (self.run_dir / METRICS_FILE).unlink(missing_ok=True)
        set_seed(cfg.train.seed)
        self.processor = load_processor_for_training(cfg)
        self.encoder = SampleEncoder(self.processor, cfg.data.max_tokens, feature_device=str(self.accelerator.device))
        self.pad_id = self.processor.tokenizer.pad_token_id
        self.response_ids = self.processor.tokenizer("<RESPONSE>", add_special_tokens=False)["input_ids"]
        model = load_model_for_training(cfg, self.processor)

        self.batches = BucketedBatches(
            split_shards(cfg.data.dataset_dir, cfg.data.train_split), self._encode_train_row,
            batch_size=cfg.train.batch_size, pool_rows=cfg.data.pool_rows, seed=cfg.train.seed,
            augment=cfg.data.augment.enabled, rank=self.accelerator.process_index,
            world_size=self.accelerator.num_processes,
        )
        if cfg.train.copy_steps:
            self.copy_batches = CopyBatches(split_shards(cfg.data.dataset_dir, cfg.data.train_split),
                                            self.processor.tokenizer, self.encoder.end_of_turn_id,
                                            cfg.train.batch_size, cfg.train.seed)
        if cfg.train.chain_steps:
            self.chain_batches = ChainBatches(split_shards(cfg.data.dataset_dir, cfg.data.train_split),
                                              self.encoder.encode_text, cfg.train.batch_size, cfg.train.seed,
                                              cfg.data.question_types)
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=cfg.train.learning_rate, weight_decay=cfg.train.weight_decay)
        scheduler = get_scheduler(cfg.train.lr_schedule if cfg.train.lr_schedule != "constant"
                                  else "constant_with_warmup", optimizer,
                                  num_warmup_steps=cfg.train.warmup_steps, num_training_steps=cfg.train.max_steps)
        self.model, self.optimizer, self.scheduler = self.accelerator.prepare(model, optimizer, scheduler)
        if cfg.lora is not None:
            # The frozen base weights are rebuilt on resume (same Hub weights, or the same seeded tiny model),
            # so a LoRA checkpoint stores only what trains: adapters and the projector.
            self.accelerator.register_save_state_pre_hook(_keep_trainable_weights)
        if latest is not None:
            self._load_checkpoint(latest)

    def _encode_train_row(self, row: dict[str, Any], rng: np.random.Generator | None) -> EncodedSample | None:
        wanted = self.cfg.data.question_types
        if wanted is not None and row["question_type"] not in wanted:
            self.batches.counts.rows_skipped_type += 1
            return None
        samples = decode_wav(row["audio"]["bytes"])
        if rng is not None:
            samples = augment_waveform(samples, self.cfg.data.augment, rng)
        encoded = self.encoder.encode(samples, render_user_text(row["question"], row["options"] or []),
                                      row["assistant_text"])
        if encoded is None:
            self.batches.counts.rows_skipped_too_long += 1
        return encoded

    def latest_checkpoint(self) -> Path | None:
        """The newest checkpoint whose trainer_state.json was written (an unfinished save has none)."""
        done = sorted((self.run_dir / CHECKPOINTS_DIR).glob(f"step-*/{STATE_FILE}"))
        return done[-1].parent if done else None

    def _check_resumable(self, checkpoint: Path) -> None:
        saved = json.loads((checkpoint / STATE_FILE).read_text(encoding="utf-8"))["fingerprint"]
        current = _resume_fingerprint(self.cfg)
        if saved != current:
            changed = sorted(key for key in current if saved.get(key) != current[key])
            raise ValueError(
                f"{self.run_dir} was trained with a different config (sections {changed} differ); "
                "resuming would not reproduce the run: use a new run_name or delete the run folder"
            )

    def _load_checkpoint(self, checkpoint: Path) -> None:
        # A LoRA checkpoint holds the trainable weights only; the rest are already in place.
        self.accelerator.load_state(str(checkpoint), strict=self.cfg.lora is None)
        state = json.loads((checkpoint / STATE_FILE).read_text(encoding="utf-8"))
        self.step = state["step"]
        self.seconds = state["seconds"]
        self.batches.position = DataPosition.from_dict(state["data_position"])
        self.batches.counts = StreamCounts(**state["counts"])
        self._truncate_metrics(self.step)
        logger.info("resumed from %s at step %d", checkpoint, self.step)

    # -- train -------------------------------------------------------------------------------------------
    def train(self, stop_at_step: int | None = None) -> TrainResult:
        """Train up to `train.max_steps` (or stop, with a checkpoint, after `stop_at_step`) and export."""
        cfg = self.cfg.train
        last_step = cfg.max_steps if stop_at_step is None else min(stop_at_step, cfg.max_steps)
        self.model.train()
        while self.step < last_step:
            started = time.perf_counter()
            metrics = self._train_step()
            self.step += 1
            self.seconds += time.perf_counter() - started
            self.last_loss = metrics["loss"]
            metrics.update(step=self.step, lr=self.scheduler.get_last_lr()[0], seconds=round(self.seconds, 3))
            self._log(metrics)
            if self.step % cfg.log_every_steps == 0 or self.step == last_step:
                logger.info("step %d/%d loss %.4f (%.1f s)", self.step, cfg.max_steps, metrics["loss"],
                            self.seconds)
            if cfg.eval_every_steps and self.step % cfg.eval_every_steps == 0:
                self._log({"step": self.step, **self.validation_loss()})
                self.model.train()
            if self.step % cfg.checkpoint_every_steps == 0 or self.step == last_step:
                self.save_checkpoint()
        final_dir = self.save_final() if self.step >= cfg.max_steps else None
        if self.accelerator.is_main_process:
            plot_loss_curve(self.run_dir / METRICS_FILE, self.run_dir / LOSS_PLOT)
        return TrainResult(self.run_dir, self.step, self.seconds, final_dir, self.last_loss,
                           vars(self.batches.counts).copy())

    def _train_step(self) -> dict[str, float]:
        """One optimizer step over `grad_accum_steps` micro-batches, normalised over the whole window."""
        cfg = self.cfg.train
        zero_audio = self.cfg.data.zero_audio
        text_steps = cfg.copy_steps + cfg.chain_steps
        # The curriculum's text-only phases (copy, then chains) leave the data position where it is.
        if self.step < cfg.copy_steps:
            micro_batches = [self.copy_batches.batch(self.step, index) for index in range(cfg.grad_accum_steps)]
        elif self.step < text_steps:
            micro_batches = [self.chain_batches.batch(self.step, index) for index in range(cfg.grad_accum_steps)]
        else:
            micro_batches = [self.batches.next_batch() for _ in range(cfg.grad_accum_steps)]
        if text_steps <= self.step < cfg.answer_only_steps:  # answers without their THINK, after the text phases
            micro_batches = [[response_only(sample, self.response_ids) for sample in batch] for batch in micro_batches]
        window = [collate(batch, self.pad_id, zero_audio=zero_audio) for batch in micro_batches]
        # Normalising by the whole window's tokens (or samples) makes accumulation equal one large batch.
        window_tokens = sum(int(answer_tokens(batch["labels"]).sum()) for batch in window)
        window_samples = sum(int((answer_tokens(batch["labels"]) > 0).sum()) for batch in window)
        # Input tokens (audio positions too) per sample of this step, for throughput accounting.
        self.window_lengths = [int(n) for batch in window for n in batch["attention_mask"].sum(dim=1)]
        window_input_tokens = sum(self.window_lengths)
        token_loss = sample_loss = 0.0
        for index, batch in enumerate(window):
            batch = {key: value.to(self.accelerator.device) for key, value in batch.items()}
            labels = batch.pop("labels")
            sync = index == len(window) - 1
            context = self.accelerator.no_sync(self.model) if not sync else contextlib.nullcontext()
            with context, self.accelerator.autocast():
                logits = self.model(**batch, use_cache=False).logits
                sums, counts = answer_loss_terms(logits, labels)
                per_sample = sums / counts.clamp(min=1)
                token_term = sums.sum() / max(window_tokens, 1)
                sample_term = per_sample.sum() / max(window_samples, 1)
                loss = token_term if cfg.loss_average == "token" else sample_term
                self.accelerator.backward(loss)
            token_loss += float(token_term.detach())
            sample_loss += float(sample_term.detach())
        if cfg.max_grad_norm is not None:
            self.accelerator.clip_grad_norm_(self.model.parameters(), cfg.max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        loss_value = token_loss if cfg.loss_average == "token" else sample_loss
        if not math.isfinite(loss_value):
            raise ValueError(f"the loss is {loss_value} at step {self.step + 1}: lower train.learning_rate")
        return {"loss": loss_value, "loss_per_token": token_loss, "loss_per_sample": sample_loss,
                "answer_tokens": window_tokens, "input_tokens": window_input_tokens, "samples": window_samples}

    def validation_loss(self) -> dict[str, float]:
        """Mean answer loss on the validation split, averaged per token and per sample (no RNG is used)."""
        import torch

        cfg = self.cfg
        rows = iter_rows(split_shards(cfg.data.dataset_dir, cfg.data.eval_split),
                         columns=["audio", "question", "options", "assistant_text"], max_rows=cfg.train.eval_max_rows)
        total = tokens = per_sample_total = 0.0
        samples = 0
        self.model.eval()
        pending: list[EncodedSample] = []

        def flush() -> None:
            nonlocal total, tokens, per_sample_total, samples
            batch = {key: value.to(self.accelerator.device)
                     for key, value in collate(pending, self.pad_id, zero_audio=cfg.data.zero_audio).items()}
            labels = batch.pop("labels")
            with torch.no_grad(), self.accelerator.autocast():
                sums, counts = answer_loss_terms(self.model(**batch, use_cache=False).logits, labels)
            total += float(sums.sum())
            tokens += float(counts.sum())
            per_sample_total += float((sums / counts.clamp(min=1)).sum())
            samples += len(pending)
            pending.clear()

        for row in rows:
            encoded = self.encoder.encode(decode_wav(row["audio"]["bytes"]),
                                          render_user_text(row["question"], row["options"] or []),
                                          row["assistant_text"])
            if encoded is not None:
                pending.append(encoded)
            if len(pending) == cfg.train.batch_size:
                flush()
        if pending:
            flush()
        return {"val_loss_per_token": total / max(tokens, 1), "val_loss_per_sample": per_sample_total / max(samples, 1)}

    # -- save_checkpoint ---------------------------------------------------------------------------------
    def save_checkpoint(self) -> Path:
        """Save the full training state at the current step; keep the newest `keep_checkpoints`."""
        checkpoints = self.run_dir / CHECKPOINTS_DIR
        target = checkpoints / f"step-{self.step:07d}"
        if target.exists():
            shutil.rmtree(target)
        self.accelerator.save_state(str(target))
        if self.accelerator.is_main_process:
            state = {"step": self.step, "seconds": self.seconds, "data_position": self.batches.position.to_dict(),
                     "counts": vars(self.batches.counts), "fingerprint": _resume_fingerprint(self.cfg)}
            # Written last: a checkpoint without it is an interrupted save and is never resumed from.
            (target / STATE_FILE).write_text(json.dumps(state, indent=2), encoding="utf-8")
            done = sorted(path.parent for path in checkpoints.glob(f"step-*/{STATE_FILE}"))
            for old in done[: -self.cfg.train.keep_checkpoints]:
                shutil.rmtree(old)
        self.accelerator.wait_for_everyone()
        return target

    def save_final(self) -> Path:
        """Export the trained model (LoRA merged) with its processor to `<run_dir>/final`."""
        final_dir = self.run_dir / FINAL_DIR
        self.accelerator.wait_for_everyone()
        model = self.accelerator.unwrap_model(self.model)
        state_dict = self.accelerator.get_state_dict(self.model)  # gathers FSDP shards on the main process
        if self.accelerator.is_main_process:
            if final_dir.exists():
                shutil.rmtree(final_dir)
            if hasattr(model, "merge_and_unload"):
                export_model(model, self.processor, final_dir)
            else:
                model.save_pretrained(final_dir, state_dict=state_dict)
                self.processor.save_pretrained(final_dir)
        self.accelerator.wait_for_everyone()
        return final_dir

    def _truncate_metrics(self, step: int) -> None:
        """Drop records logged after `step` by a run that was killed before its next checkpoint."""
        path = self.run_dir / METRICS_FILE
        if self.accelerator.is_main_process and path.is_file():
            kept = [line for line in path.read_text(encoding="utf-8").splitlines()
                    if line and json.loads(line)["step"] <= step]
            path.write_text("".join(line + "\n" for line in kept), encoding="utf-8")

    def _log(self, record: dict[str, Any]) -> None:
        if self.accelerator.is_main_process:
            with (self.run_dir / METRICS_FILE).open("a", encoding="utf-8") as handle:
                handle.write(json.dumps(record) + "\n")

    # -- cleanup -----------------------------------------------------------------------------------------
    def cleanup(self) -> None:
        """Release the model and the process group."""
        self.accelerator.end_training()
        del self.model, self.optimizer, self.scheduler


def run_finetune(cfg: FinetuneConfig, resume: bool = True, stop_at_step: int | None = None) -> TrainResult:
    """Set up, train (resuming from the run folder's latest checkpoint), export and clean up."""
    recipe = FinetuneRecipe(cfg)
    recipe.setup(resume=resume)
    try:
        return recipe.train(stop_at_step=stop_at_step)
    finally:
        recipe.cleanup()


def evaluate_run(cfg: FinetuneConfig) -> "EvalReport":
    """Evaluate a trained run's final model on the config's evaluation splits; the table goes to the run folder."""
    from cotaforge.train.evaluate import evaluate_model

    final_dir = cfg.run_dir / FINAL_DIR
    if not (final_dir / "config.json").is_file():
        raise ValueError(f"{final_dir} holds no trained model: run `cotaforge finetune` to the last step first")
    ev = cfg.evaluate
    return evaluate_model(str(final_dir), str(cfg.data.dataset_dir), ev.splits, ev.scoring, ev.max_new_tokens,
                          ev.batch_size, ev.max_rows, ev.question_types, out_dir=cfg.run_dir, seed=ev.seed,
                          swap_audio=ev.swap_audio)
