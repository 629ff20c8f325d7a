"""The fine-tuning configuration: one YAML file per (model, recipe), loaded into strict pydantic models.

Every section forbids unknown keys so a typo fails fast. `--set section.key=value` overrides any key;
values are parsed as YAML (`--set train.max_steps=50`). Relative paths in the file are relative to the
current directory, like the launch commands in each config's header.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from cotaforge.config import apply_overrides, read_yaml_mapping, validation_problems
from cotaforge.errors import ConfigError


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TinyModelSection(_Section):
    """A small Qwen2-Audio built from a config with random weights, and a tokenizer trained on the dataset."""

    vocab_size: int = Field(default=1024, ge=300, le=65_536, description="BPE vocabulary trained on the train split")
    audio_layers: int = Field(default=2, ge=1, le=32)
    audio_dim: int = Field(default=128, ge=16, le=4096)
    audio_heads: int = Field(default=4, ge=1, le=64)
    audio_ffn_dim: int = Field(default=512, ge=16, le=16_384)
    audio_dropout: float = Field(default=0.1, ge=0, lt=1)
    text_layers: int = Field(default=2, ge=1, le=64)
    text_dim: int = Field(default=128, ge=16, le=8192)
    text_heads: int = Field(default=4, ge=1, le=64)
    text_kv_heads: int = Field(default=2, ge=1, le=64)
    text_ffn_dim: int = Field(default=512, ge=16, le=32_768)
    num_mel_bins: int = Field(default=80, ge=16, le=256)
    chunk_length_s: int = Field(default=2, ge=1, le=30, description="audio window; longer clips are cut")

    @model_validator(mode="after")
    def _heads_divide(self) -> "TinyModelSection":
        if self.audio_dim % self.audio_heads or self.text_dim % self.text_heads:
            raise ValueError("audio_dim and text_dim must be multiples of audio_heads and text_heads")
        if self.text_heads % self.text_kv_heads:
            raise ValueError("text_heads must be a multiple of text_kv_heads")
        return self


class ModelSection(_Section):
    name_or_path: str | None = Field(
        default=None, description="a Hub id (Qwen/Qwen2-Audio-7B-Instruct) or a local checkpoint folder"
    )
    tiny: TinyModelSection | None = Field(default=None, description="build a tiny random model instead")
    load_dtype: Literal["float32", "bfloat16"] = Field(
        default="float32", description="weights as loaded; bfloat16 halves memory for LoRA on a GPU"
    )
    freeze_audio_encoder: bool = False
    gradient_checkpointing: bool = False
    attn_implementation: Literal["sdpa", "eager", "flash_attention_2"] = "sdpa"
    random_weights: bool = Field(
        default=False,
        description="build name_or_path's architecture from its config.json with random weights, on the GPU when "
                    "there is one: to size hardware and measure throughput without downloading the weights",
    )

    @model_validator(mode="after")
    def _one_source(self) -> "ModelSection":
        if (self.name_or_path is None) == (self.tiny is None):
            raise ValueError("set exactly one of model.name_or_path and model.tiny")
        if self.random_weights and self.tiny is not None:
            raise ValueError("model.random_weights applies to model.name_or_path; a tiny model is always random")
        return self


class LoraSection(_Section):
    rank: int = Field(default=16, ge=1, le=1024)
    alpha: int = Field(default=32, ge=1, le=4096)
    dropout: float = Field(default=0.05, ge=0, lt=1)
    target_modules: list[str] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        description="language-model linear layers that get adapters (the audio encoder never does)",
    )
    train_projector: bool = Field(default=True, description="also fully train the audio-to-text projector")


class AugmentSection(_Section):
    """Waveform augmentation of training clips; each draw is seeded by (seed, epoch, row) so resume is exact."""

    speed_range: tuple[float, float] = Field(default=(1.0, 1.0), description="resampling factor bounds, 1 = off")
    gain_db_range: tuple[float, float] = Field(default=(0.0, 0.0))
    noise_snr_db_min: float | None = Field(default=None, description="white noise down to this SNR; None = off")
    shift_max_s: float = Field(default=0.0, ge=0, le=5, description="random leading silence up to this")

    @field_validator("speed_range", "gain_db_range")
    @classmethod
    def _ordered(cls, value: tuple[float, float]) -> tuple[float, float]:
        if value[0] > value[1]:
            raise ValueError("give ranges as [low, high]")
        return value

    @property
    def enabled(self) -> bool:
        return (self.speed_range != (1.0, 1.0) or self.gain_db_range != (0.0, 0.0)
                or self.noise_snr_db_min is not None or self.shift_max_s > 0)


class DataSection(_Section):
    dataset_dir: Path = Field(description="a published dataset: output/datasets/<name>/<version>")
    train_split: str = "train"
    eval_split: str = "validation"
    question_types: list[str] | None = Field(default=None, description="train on these types only; None = all")
    max_tokens: int = Field(default=2048, ge=32, le=131_072, description="longer samples are skipped and counted")
    pool_rows: int = Field(default=256, ge=1, le=1_000_000, description="rows sorted together into length buckets")
    augment: AugmentSection = Field(default_factory=AugmentSection)
    zero_audio: bool = Field(default=False, description="a control run: every clip's audio features are zeroed "
                                                        "in training, so the model cannot learn to listen")


class TrainSection(_Section):
    seed: int = Field(default=0, ge=0)
    max_steps: int = Field(default=100, ge=1, description="optimizer steps")
    batch_size: int = Field(default=8, ge=1, le=4096, description="samples per micro-batch per process")
    grad_accum_steps: int = Field(default=1, ge=1, le=1024)
    learning_rate: float = Field(default=1e-4, gt=0, le=1)
    weight_decay: float = Field(default=0.0, ge=0, le=1)
    warmup_steps: int = Field(default=0, ge=0)
    lr_schedule: Literal["cosine", "linear", "constant"] = "cosine"
    max_grad_norm: float | None = Field(default=1.0, gt=0)
    copy_steps: int = Field(
        default=0, ge=0, description="curriculum for a decoder trained from scratch: the first N steps train on "
                                     "text only, the user turn of a train row that lists options and then the "
                                     "same text again (the loss on the repeat), so it learns to copy from its context before the "
                                     "chains ask it to (a multiple-choice check line copies its option)")
    chain_steps: int = Field(
        default=0, ge=0, description="curriculum: after the copy phase, N steps on the train split's own samples "
                                     "as text only (the prompt without its audio, the loss on the whole "
                                     "assistant text), so the chains' copies and verdicts, which follow from the "
                                     "text once the heard sound is named, are practised before the audio steps")
    answer_only_steps: int = Field(
        default=0, ge=0, description="curriculum: up to step N (after any text phases) each sample's THINK block "
                                     "is dropped, so the model first learns to answer from the audio in a few "
                                     "tokens")
    loss_average: Literal["token", "sample"] = Field(
        default="token", description="'sample': each sample's mean token loss counts once, whatever its length"
    )
    precision: Literal["auto", "bf16", "fp32"] = Field(default="auto", description="auto: bf16 on GPU, fp32 on CPU")
    checkpoint_every_steps: int = Field(default=100, ge=1)
    keep_checkpoints: int = Field(default=2, ge=1, description="older step checkpoints are deleted")
    eval_every_steps: int | None = Field(default=None, ge=1, description="validation loss every N steps")
    eval_max_rows: int | None = Field(default=256, ge=1, description="validation rows per evaluation")
    log_every_steps: int = Field(default=10, ge=1)
    num_threads: int | None = Field(default=None, ge=1, description="CPU threads for torch; None = torch default")

    @model_validator(mode="after")
    def _audio_steps_left(self) -> "TrainSection":
        if self.copy_steps + self.chain_steps >= self.max_steps:
            raise ValueError(f"copy_steps + chain_steps ({self.copy_steps + self.chain_steps}) leave no step with "
                             f"audio out of max_steps ({self.max_steps}): raise max_steps or shorten the text phases")
        return self


class EvaluateSection(_Section):
    """The evaluation run after training (`cotaforge finetune`); `cotaforge evaluate` takes the same options."""

    splits: list[str] = Field(default_factory=lambda: ["test"])
    scoring: Literal["generate", "options"] = "generate"
    max_new_tokens: int = Field(default=512, ge=1, le=32_768)
    batch_size: int = Field(default=8, ge=1, le=1024)
    max_rows: int | None = Field(default=None, ge=1, description="rows per split; None = all")
    question_types: list[str] | None = Field(default=None, description="evaluate these types only; None = all")
    swap_audio: bool = Field(default=True, description="also ask each question with a partner clip's audio "
                                                        "(the listening measure); False halves the time")
    seed: int = Field(default=0, ge=0, description="draws the swapped-audio partners")


class FinetuneConfig(_Section):
    run_name: str = Field(description="the run folder is <output_dir>/<run_name>")
    output_dir: Path = Path("output/finetune")
    model: ModelSection
    lora: LoraSection | None = Field(default=None, description="None: full fine-tuning")
    data: DataSection
    train: TrainSection = Field(default_factory=TrainSection)
    evaluate: EvaluateSection = Field(default_factory=EvaluateSection)

    @field_validator("run_name")
    @classmethod
    def _safe_name(cls, value: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,79}", value):
            raise ValueError("use letters, digits, '.', '_' or '-' (at most 80 characters), e.g. 'digits-tiny'")
        return value

    @property
    def run_dir(self) -> Path:
        return self.output_dir / self.run_name

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


def load_finetune_config(path: Path, overrides: list[str] | None = None) -> FinetuneConfig:
    """Read a fine-tuning YAML file and apply `key=value` overrides; raise ConfigError saying what is wrong."""
    if not path.is_file():
        raise ConfigError(f"config file {path} not found; see configs/finetune/ for examples")
    data = read_yaml_mapping(path)
    apply_overrides(data, overrides)
    try:
        return FinetuneConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"invalid fine-tuning config {path}: {validation_problems(exc)}") from exc
