"""Builders for the model and processor: for training (tiny, Hub or local; LoRA or full) and for inference."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cotaforge.train.config import FinetuneConfig
from cotaforge.train.tiny import build_tiny_model, build_tiny_processor, train_texts

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

PROCESSOR_DIR = "processor"


def _dtype(name: str) -> "torch.dtype":
    import torch

    return {"float32": torch.float32, "bfloat16": torch.bfloat16}[name]


def load_processor_for_training(cfg: FinetuneConfig) -> Any:
    """The run's processor; a tiny run trains its tokenizer once and reuses it from the run folder after that."""
    from transformers import AutoProcessor

    if cfg.model.tiny is None:
        return AutoProcessor.from_pretrained(cfg.model.name_or_path)
    saved = cfg.run_dir / PROCESSOR_DIR
    if (saved / "processor_config.json").is_file() or (saved / "preprocessor_config.json").is_file():
        return AutoProcessor.from_pretrained(saved)
    processor = build_tiny_processor(train_texts(cfg.data.dataset_dir, cfg.data.train_split), cfg.model.tiny)
    processor.save_pretrained(saved)
    return processor


def load_model_for_training(cfg: FinetuneConfig, processor: Any) -> Any:
    """The model with the config's freezing, gradient checkpointing and LoRA applied; seed torch first."""
    from transformers import Qwen2AudioForConditionalGeneration

    if cfg.model.tiny is not None:
        model = build_tiny_model(processor, cfg.model.tiny, cfg.model.attn_implementation)
    elif cfg.model.random_weights:
        model = _random_model(cfg)
    else:
        model = Qwen2AudioForConditionalGeneration.from_pretrained(
            cfg.model.name_or_path, dtype=_dtype(cfg.model.load_dtype),
            attn_implementation=cfg.model.attn_implementation,
        )
    if cfg.model.freeze_audio_encoder:
        model.model.audio_tower.requires_grad_(False)
    if cfg.model.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    if cfg.lora is not None:
        model = _add_lora(model, cfg)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    logger.info("parameters: %d trainable of %d (%.2f%%)", trainable, total, 100 * trainable / max(total, 1))
    return model


def _random_model(cfg: FinetuneConfig) -> Any:
    """name_or_path's architecture with random weights, built straight on this process's GPU when there is one."""
    import torch
    from transformers import AutoConfig, Qwen2AudioForConditionalGeneration

    config = AutoConfig.from_pretrained(cfg.model.name_or_path)
    # Initialising billions of weights on the CPU takes minutes; on the GPU, seconds.
    device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    with device:
        return Qwen2AudioForConditionalGeneration._from_config(
            config, dtype=_dtype(cfg.model.load_dtype), attn_implementation=cfg.model.attn_implementation)


def _add_lora(model: Any, cfg: FinetuneConfig) -> Any:
    from peft import LoraConfig, get_peft_model

    lora = cfg.lora
    if lora is None:
        raise ValueError("no lora section in the config")
    # Adapters go on the language model only: a regex on the module path keeps the audio encoder's
    # identically named projections out.
    targets = "|".join(lora.target_modules)
    peft_config = LoraConfig(r=lora.rank, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                             target_modules=rf".*language_model\..*\.({targets})", task_type="CAUSAL_LM")
    model = get_peft_model(model, peft_config)
    if lora.train_projector:
        model.base_model.model.model.multi_modal_projector.requires_grad_(True)
    return model


def export_model(model: Any, processor: Any, out_dir: Path) -> Path:
    """Save a plain Qwen2-Audio checkpoint (LoRA merged) and its processor, loadable by from_pretrained."""
    if hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    return out_dir


def load_for_inference(model_ref: str, device: str) -> tuple[Any, Any]:
    """A saved run's `final/` folder, a checkpoint folder or a Hub id, in eval mode on `device`."""
    import torch
    from transformers import AutoProcessor, Qwen2AudioForConditionalGeneration

    path = Path(model_ref)
    if path.exists() and not (path / "config.json").is_file():
        if (path / "final" / "config.json").is_file():
            path = path / "final"  # a run folder: use its exported model
        else:
            raise ValueError(f"{model_ref} has no config.json: give a run's final/ folder or a Hub model id")
    ref = str(path) if path.exists() else model_ref
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    model = Qwen2AudioForConditionalGeneration.from_pretrained(ref, dtype=dtype).to(device).eval()
    processor = AutoProcessor.from_pretrained(ref)
    return model, processor
