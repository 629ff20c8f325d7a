"""Qwen2-Audio-7B fine-tuning on one GPU: tokens/s, peak memory and MFU of the shipped recipes, random weights.

Nothing is downloaded: a model folder gets Qwen2-Audio-7B's architecture (its config.json, written here: Whisper-
large-v3 encoder, Qwen-7B decoder, 156,032-token vocabulary) and a processor (a BPE tokenizer trained on the
dataset's texts, Whisper's 128-mel, 30 s feature extractor). Each run loads a shipped config with
`model.random_weights=true` in its own process, trains `--steps` optimizer steps of the real recipe on a published
dataset and reports, over the steps after `--warmup`:
  tokens/s   input tokens (text and audio positions) per second, the data pipeline's time included;
  MFU        model FLOPs per second over the GPU's dense bf16 peak (989 TFLOP/s for an H200/H100 SXM):
             decoder 6·N·T (trained) or 4·N·T (frozen under LoRA: forward and input gradients) plus attention
             12·L·d·T² per sample; the frozen encoder 2·N·1500 + 4·L·d·1500² per clip (forward only, 30 s).
             Recomputation under gradient checkpointing is not counted (model FLOPs, not hardware FLOPs).
  peak memory torch.cuda.max_memory_allocated / _reserved.

  python benchmarks/bench_gpu_finetune.py --dataset output/datasets/demo/v1 --work /tmp/bench-gpu --steps 30
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PEAK_BF16_FLOPS = 989e12  # H100/H200 SXM dense bf16

# (label, config file, overrides): the shipped configs on one GPU. Full fine-tuning keeps bf16 weights and
# optimizer state (fp32 master weights and Adam state for 8.4B parameters are 134 GB: FSDP's job, not one GPU's).
RUNS = [
    ("lora", "configs/finetune/qwen2-audio-7b-lora.yaml", []),
    ("full-bf16", "configs/finetune/qwen2-audio-7b-full.yaml", ["model.load_dtype=bfloat16"]),
    ("full-bf16-no-recompute", "configs/finetune/qwen2-audio-7b-full.yaml",
     ["model.load_dtype=bfloat16", "model.gradient_checkpointing=false", "train.batch_size=16",
      "train.grad_accum_steps=2"]),
]


# Qwen2-Audio-7B-Instruct's shape; `--shape small` keeps its structure at a size a CPU runs (a dry run of this script).
SHAPES = {
    "7b": {"audio_layers": 32, "audio_heads": 20, "audio_ffn": 5120, "audio_dim": 1280, "vocab": 156_032,
           "text_dim": 4096, "text_ffn": 11008, "text_layers": 32, "text_heads": 32},
    "small": {"audio_layers": 2, "audio_heads": 2, "audio_ffn": 128, "audio_dim": 64, "vocab": 40_000,
              "text_dim": 64, "text_ffn": 128, "text_layers": 2, "text_heads": 2},
}


def qwen2_audio_config(tokenizer, shape: dict) -> dict:
    """A Qwen2-Audio architecture of `shape`, with the special-token ids of `tokenizer`."""
    from transformers import Qwen2AudioConfig

    ids = tokenizer.convert_tokens_to_ids
    config = Qwen2AudioConfig(
        audio_config={"model_type": "qwen2_audio_encoder", "num_mel_bins": 128, "encoder_layers": shape["audio_layers"],
                      "encoder_attention_heads": shape["audio_heads"], "encoder_ffn_dim": shape["audio_ffn"],
                      "d_model": shape["audio_dim"], "max_source_positions": 1500},
        text_config={"model_type": "qwen2", "vocab_size": shape["vocab"], "hidden_size": shape["text_dim"],
                     "intermediate_size": shape["text_ffn"], "num_hidden_layers": shape["text_layers"],
                     "num_attention_heads": shape["text_heads"], "num_key_value_heads": shape["text_heads"],
                     "max_position_embeddings": 8192, "rms_norm_eps": 1e-5, "tie_word_embeddings": False,
                     "bos_token_id": ids("<|im_start|>"), "eos_token_id": tokenizer.eos_token_id,
                     "pad_token_id": tokenizer.pad_token_id},
        audio_token_index=ids("<|AUDIO|>"),
    )
    return config.to_dict()


def build_model_dir(dataset: Path, model_dir: Path, shape: dict) -> None:
    from cotaforge.train.config import TinyModelSection
    from cotaforge.train.tiny import build_tiny_processor, train_texts

    if (model_dir / "config.json").is_file():
        return
    processor = build_tiny_processor(train_texts(dataset, "train"),
                                     TinyModelSection(vocab_size=32_000, num_mel_bins=128, chunk_length_s=30))
    processor.save_pretrained(model_dir)
    (model_dir / "config.json").write_text(json.dumps(qwen2_audio_config(processor.tokenizer, shape), indent=1))


def model_flops(model, sample_tokens: list[int], lora: bool) -> float:
    """Model FLOPs of one optimizer step whose samples (one clip each) hold `sample_tokens` input tokens."""
    base = model.get_base_model() if lora else model
    text, audio = base.model.language_model, base.model.audio_tower
    text_cfg, audio_cfg = base.config.text_config, base.config.audio_config
    # The embedding is a lookup, not a matrix product; the output projection is one.
    decoder_params = sum(p.numel() for p in text.parameters()) - text.embed_tokens.weight.numel() \
        + base.lm_head.weight.numel()
    adapter_params = sum(p.numel() for n, p in model.named_parameters() if "lora_" in n) if lora else 0
    audio_params = sum(p.numel() for p in audio.parameters())
    frames = audio_cfg.max_source_positions
    flops = 0.0
    for tokens in sample_tokens:
        flops += (4 if lora else 6) * decoder_params * tokens + 6 * adapter_params * tokens
        flops += 12 * text_cfg.num_hidden_layers * text_cfg.hidden_size * tokens ** 2
        flops += (2 * audio_params * frames + 4 * audio_cfg.encoder_layers * audio_cfg.d_model * frames ** 2)
    return flops


def run_one(label: str, config_file: str, overrides: list[str], model_dir: Path, dataset: Path, work: Path,
            steps: int, warmup: int) -> dict:
    import torch

    from cotaforge.train.config import load_finetune_config
    from cotaforge.train.recipe import FinetuneRecipe

    on_gpu = torch.cuda.is_available()
    if not on_gpu:  # a dry run of this script on a CPU
        overrides = [*overrides, "train.precision=auto", "model.load_dtype=float32", "train.batch_size=2", "data.pool_rows=64",
                     "train.grad_accum_steps=1"]
    sync = torch.cuda.synchronize if on_gpu else (lambda: None)

    cfg = load_finetune_config(ROOT / config_file, [
        f"model.name_or_path={model_dir}", "model.random_weights=true", f"data.dataset_dir={dataset}",
        f"output_dir={work / 'runs'}", f"run_name={label}", f"train.max_steps={steps}", "train.eval_every_steps=null",
        *overrides])
    recipe = FinetuneRecipe(cfg)
    started = time.perf_counter()
    recipe.setup(resume=False)
    setup_s = time.perf_counter() - started
    lora = cfg.lora is not None
    model = recipe.accelerator.unwrap_model(recipe.model)
    records = []
    for step in range(steps):
        sync()
        started = time.perf_counter()
        metrics = recipe._train_step()  # the recipe's own step: data, forward, backward, optimizer
        sync()
        seconds = time.perf_counter() - started
        recipe.step += 1
        records.append({"step": step + 1, "seconds": seconds, "loss": metrics["loss"],
                        "input_tokens": metrics["input_tokens"], "samples": metrics["samples"],
                        "flops": model_flops(model, recipe.window_lengths, lora)})
        print(f"{label} step {step + 1}: {seconds:.2f} s, {metrics['input_tokens']} tokens, loss {metrics['loss']:.3f}",
              flush=True)
    timed = records[warmup:]
    seconds = sum(r["seconds"] for r in timed)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {
        "run": label, "config": config_file, "overrides": overrides, "steps": steps, "timed_steps": len(timed),
        "setup_s": round(setup_s, 1), "seconds_per_step": round(seconds / len(timed), 3),
        "samples_per_step": timed[0]["samples"],
        "tokens_per_s": round(sum(r["input_tokens"] for r in timed) / seconds),
        "tflops_per_s": round(sum(r["flops"] for r in timed) / seconds / 1e12, 1),
        "mfu": round(sum(r["flops"] for r in timed) / seconds / PEAK_BF16_FLOPS, 4),
        "peak_allocated_gib": round(torch.cuda.max_memory_allocated() / 2**30, 1) if on_gpu else None,
        "peak_reserved_gib": round(torch.cuda.max_memory_reserved() / 2**30, 1) if on_gpu else None,
        "parameters": sum(p.numel() for p in model.parameters()), "trainable": trainable,
        "first_loss": records[0]["loss"], "last_loss": records[-1]["loss"],
        "gpu": torch.cuda.get_device_name() if on_gpu else "cpu", "torch": torch.__version__,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", type=Path, required=True, help="a published dataset version folder")
    parser.add_argument("--work", type=Path, required=True, help="folder for the model folder and the runs")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5, help="first steps left out of the figures")
    parser.add_argument("--runs", nargs="*", default=[label for label, _, _ in RUNS])
    parser.add_argument("--shape", choices=sorted(SHAPES), default="7b")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # a single run, in its own process
    args = parser.parse_args()
    model_dir = args.work / f"qwen2-audio-{args.shape}-random"
    if args.one:
        label, config_file, overrides = next(run for run in RUNS if run[0] == args.one)
        result = run_one(label, config_file, overrides, model_dir, args.dataset.resolve(), args.work, args.steps,
                         args.warmup)
        (args.work / f"{label}.json").write_text(json.dumps(result, indent=1))
        return
    args.work.mkdir(parents=True, exist_ok=True)
    build_model_dir(args.dataset, model_dir, SHAPES[args.shape])
    results = []
    for label in args.runs:
        # One process per run: each starts with an empty GPU and its own peak-memory figure.
        done = subprocess.run([sys.executable, __file__, "--dataset", str(args.dataset), "--work", str(args.work),
                               "--steps", str(args.steps), "--warmup", str(args.warmup), "--shape", args.shape,
                               "--one", label])
        path = args.work / f"{label}.json"
        if done.returncode != 0 or not path.is_file():
            print(f"{label}: failed with exit status {done.returncode}", flush=True)
            continue
        results.append(json.loads(path.read_text()))
    print("| run | samples/step | s/step | tokens/s | TFLOP/s | MFU | peak allocated | peak reserved |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in results:
        print(f"| {r['run']} | {r['samples_per_step']} | {r['seconds_per_step']} | {r['tokens_per_s']:,} | "
              f"{r['tflops_per_s']} | {100 * r['mfu']:.1f}% | {r['peak_allocated_gib']} GiB | "
              f"{r['peak_reserved_gib']} GiB |")


if __name__ == "__main__":
    main()
