"""The recipe on a tiny random Qwen2-Audio: exact resume, loss masking, loss averaging, config checks."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from safetensors.torch import load_file  # noqa: E402

from cotaforge.train.data import IGNORE_INDEX, collate, iter_rows, render_user_text, split_shards  # noqa: E402
from cotaforge.train.loss import answer_loss_terms  # noqa: E402
from cotaforge.train.recipe import FinetuneRecipe, run_finetune  # noqa: E402

from .factories import tiny_config  # noqa: E402


def _final_weights(run_dir: Path) -> dict[str, "torch.Tensor"]:
    return load_file(str(run_dir / "final" / "model.safetensors"))


@pytest.mark.parametrize(("killed_before_checkpoint", "train"), [
    (False, {}), (True, {}), (True, {"copy_steps": 4}), (True, {"copy_steps": 1, "chain_steps": 3})])
def test_stopped_and_resumed_run_equals_uninterrupted_run(digit_dataset: Path, tmp_path: Path,
                                                         killed_before_checkpoint: bool, train: dict) -> None:
    # Dropout, augmentation and several pools per epoch make the RNG and the data position matter; with a
    # text phase (copy, chains) the run stops inside it and resumes across its end.
    straight = run_finetune(tiny_config(digit_dataset, tmp_path, "straight", train=train))
    stopped = run_finetune(tiny_config(digit_dataset, tmp_path, "resumed", train=train), stop_at_step=3)
    assert stopped.steps == 3 and stopped.final_dir is None
    if killed_before_checkpoint:  # as if killed after step 3 but before its checkpoint: resume from step 2
        shutil.rmtree(stopped.run_dir / "checkpoints" / "step-0000003")
    resumed = run_finetune(tiny_config(digit_dataset, tmp_path, "resumed", train=train))
    assert resumed.steps == 6

    expected, actual = _final_weights(straight.run_dir), _final_weights(resumed.run_dir)
    assert expected.keys() == actual.keys()
    for name in expected:
        assert torch.equal(expected[name], actual[name]), name
    losses = [[json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()]
              for run in (straight.run_dir, resumed.run_dir)]
    assert losses[0] == losses[1]


def test_the_copy_phase_trains_on_text_and_leaves_the_data_position(digit_dataset: Path, tmp_path: Path) -> None:
    recipe = FinetuneRecipe(tiny_config(digit_dataset, tmp_path, train={"copy_steps": 2, "max_steps": 3}))
    recipe.setup()
    inputs: list[set[str]] = []
    model_forward = recipe.model.forward
    recipe.model.forward = lambda **batch: inputs.append(set(batch)) or model_forward(**batch)
    recipe.train(stop_at_step=2)
    assert recipe.batches.position.to_dict() == {"epoch": 0, "pool": 0, "batch": 0}
    assert all("input_features" not in keys for keys in inputs) and len(inputs) == 4  # 2 steps x 2 micro-batches
    recipe.train()
    assert recipe.batches.position.batch == 2 and "input_features" in inputs[-1]
    recipe.cleanup()


def test_the_chain_phase_trains_on_the_samples_as_text_and_leaves_the_data_position(digit_dataset: Path,
                                                                                    tmp_path: Path) -> None:
    recipe = FinetuneRecipe(tiny_config(digit_dataset, tmp_path, train={"chain_steps": 2, "max_steps": 3}))
    recipe.setup()
    inputs: list[dict[str, "torch.Tensor"]] = []
    model_forward = recipe.model.forward
    recipe.model.forward = lambda **batch: inputs.append(batch) or model_forward(**batch)
    recipe.train(stop_at_step=2)
    assert recipe.batches.position.to_dict() == {"epoch": 0, "pool": 0, "batch": 0}
    assert len(inputs) == 4  # 2 steps x 2 micro-batches
    audio_token = recipe.processor.tokenizer.convert_tokens_to_ids(recipe.processor.audio_token)
    assistant_texts = {row["assistant_text"] for row in iter_rows(split_shards(digit_dataset, "train"))}
    for batch in inputs:
        assert "input_features" not in batch and not (batch["input_ids"] == audio_token).any()
        text = recipe.processor.tokenizer.decode(batch["input_ids"][0][batch["attention_mask"][0] == 1])
        assert any(text.endswith(answer + "<|im_end|>") for answer in assistant_texts)
    recipe.train()
    assert recipe.batches.position.batch == 2 and "input_features" in inputs[-1]
    recipe.cleanup()


@pytest.mark.parametrize("train", [{"copy_steps": 1}, {"chain_steps": 1}])
def test_the_text_phases_refuse_a_multi_process_run(digit_dataset: Path, tmp_path: Path, train: dict,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    # A text-only step gives the audio encoder no gradient, which DDP and FSDP reject mid-run: refuse up front.
    from accelerate import Accelerator

    monkeypatch.setattr(Accelerator, "num_processes", property(lambda self: 2))
    with pytest.raises(ValueError, match="one process only"):
        FinetuneRecipe(tiny_config(digit_dataset, tmp_path, train=train)).setup()


def test_a_changed_config_refuses_to_resume(digit_dataset: Path, tmp_path: Path) -> None:
    run_finetune(tiny_config(digit_dataset, tmp_path, "run"), stop_at_step=2)
    changed = tiny_config(digit_dataset, tmp_path, "run", train={"learning_rate": 1e-3})
    with pytest.raises(ValueError, match="different config"):
        FinetuneRecipe(changed).setup()


def test_loss_covers_only_the_answer_tokens(digit_dataset: Path, tmp_path: Path) -> None:
    recipe = FinetuneRecipe(tiny_config(digit_dataset, tmp_path))
    recipe.setup()
    sample = recipe.encoder.encode(torch.zeros(8000).numpy(), render_user_text("Which digit?", ["one", "two"]),
                                   "<THINK><PLANNING>p</PLANNING></THINK><RESPONSE>A</RESPONSE>")
    batch = collate([sample, sample], recipe.pad_id)
    answer = recipe.processor.tokenizer.decode(batch["labels"][0][batch["labels"][0] != IGNORE_INDEX])
    assert answer == "<THINK><PLANNING>p</PLANNING></THINK><RESPONSE>A</RESPONSE><|im_end|>"
    recipe.cleanup()


def test_per_sample_average_weighs_each_sample_once() -> None:
    # Sample 0 has 1 answer token with loss ln(4); sample 1 has 3 tokens with loss ln(1) = 0.
    logits = torch.zeros(2, 5, 4)
    logits[1, :, 0] = 100.0
    labels = torch.full((2, 5), IGNORE_INDEX)
    labels[0, 4] = 2
    labels[1, 2:5] = 0
    sums, counts = answer_loss_terms(logits, labels)
    assert counts.tolist() == [1, 3]
    per_token = float(sums.sum() / counts.sum())
    per_sample = float((sums / counts).mean())
    assert per_token == pytest.approx(torch.log(torch.tensor(4.0)).item() / 4)
    assert per_sample == pytest.approx(torch.log(torch.tensor(4.0)).item() / 2)


def test_lora_trains_adapters_and_projector_and_exports_a_merged_model(digit_dataset: Path, tmp_path: Path) -> None:
    cfg = tiny_config(digit_dataset, tmp_path, "lora", train={"max_steps": 2, "learning_rate": 1e-2},
                      lora={"rank": 4, "alpha": 8, "dropout": 0.0},
                      model={"tiny": tiny_config(digit_dataset, tmp_path).model.tiny.model_dump(),
                             "freeze_audio_encoder": True})
    recipe = FinetuneRecipe(cfg)
    recipe.setup()
    trainable = {name for name, p in recipe.model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in name or "multi_modal_projector" in name for name in trainable)
    assert not any("audio_tower" in name for name in trainable)
    before = {name: p.detach().clone() for name, p in recipe.model.named_parameters() if "audio_tower" in name}
    result = recipe.train()
    recipe.cleanup()
    from transformers import Qwen2AudioForConditionalGeneration

    merged = Qwen2AudioForConditionalGeneration.from_pretrained(result.final_dir).state_dict()
    assert not any("lora_" in name for name in merged)
    for name, weight in before.items():
        key = name.replace("base_model.model.", "")
        assert torch.equal(merged[key], weight), key


def test_a_lora_checkpoint_holds_only_trainable_weights_and_resumes_exactly(digit_dataset: Path,
                                                                           tmp_path: Path) -> None:
    def lora_config(name: str):
        return tiny_config(digit_dataset, tmp_path, name, lora={"rank": 4, "alpha": 8, "dropout": 0.1},
                           train={"learning_rate": 1e-2})

    straight = run_finetune(lora_config("straight"))
    stopped = run_finetune(lora_config("resumed"), stop_at_step=3)
    saved = load_file(str(stopped.run_dir / "checkpoints" / "step-0000003" / "model.safetensors"))
    assert saved and all("lora_" in name or "multi_modal_projector" in name for name in saved)
    recipe = FinetuneRecipe(lora_config("probe"))
    recipe.setup()
    trainable = {name for name, p in recipe.model.named_parameters() if p.requires_grad}
    total = sum(p.numel() for p in recipe.model.parameters())
    recipe.cleanup()
    assert set(saved) == trainable
    assert sum(tensor.numel() for tensor in saved.values()) < total / 4
    resumed = run_finetune(lora_config("resumed"))
    expected, actual = _final_weights(straight.run_dir), _final_weights(resumed.run_dir)
    assert expected.keys() == actual.keys()
    for name in expected:
        assert torch.equal(expected[name], actual[name]), name


def test_config_errors_say_what_to_change(digit_dataset: Path, tmp_path: Path) -> None:
    from cotaforge.errors import ConfigError
    from cotaforge.train.config import load_finetune_config

    path = tmp_path / "bad.yaml"
    path.write_text(tiny_config(digit_dataset, tmp_path).to_yaml(), encoding="utf-8")
    with pytest.raises(ConfigError, match="train.learning_rat"):
        load_finetune_config(path, ["train.learning_rat=0.1"])
    with pytest.raises(ConfigError, match="exactly one of model.name_or_path and model.tiny"):
        load_finetune_config(path, ["model.name_or_path=Qwen/Qwen2-Audio-7B-Instruct"])
    with pytest.raises(ConfigError, match="leave no step with audio"):
        load_finetune_config(path, ["train.max_steps=10", "train.copy_steps=4", "train.chain_steps=6"])
    assert load_finetune_config(path, ["train.max_steps=11", "train.copy_steps=4", "train.chain_steps=6"])
    with pytest.raises(ConfigError, match="not found"):
        load_finetune_config(tmp_path / "missing.yaml")


@pytest.mark.parametrize("name", ["tiny-cpu", "tiny-tones", "qwen2-audio-7b-lora", "qwen2-audio-7b-full"])
def test_the_shipped_configs_load(name: str) -> None:
    from cotaforge.train.config import load_finetune_config

    cfg = load_finetune_config(Path(__file__).resolve().parents[2] / "configs" / "finetune" / f"{name}.yaml")
    assert cfg.run_name == name


def test_the_tiny_model_starts_at_matched_input_scales(digit_dataset: Path, tmp_path: Path) -> None:
    from transformers.models.whisper.modeling_whisper import sinusoids

    recipe = FinetuneRecipe(tiny_config(digit_dataset, tmp_path))
    recipe.setup()
    model = recipe.accelerator.unwrap_model(recipe.model)
    positions = model.model.audio_tower.embed_positions.weight
    assert torch.allclose(positions, sinusoids(*positions.shape)) and not positions.requires_grad
    features = torch.from_numpy(np.random.default_rng(0).uniform(-1, 1, (4, 80, 200)).astype(np.float32))
    with torch.no_grad():
        tower = model.model.audio_tower
        stem = torch.nn.functional.gelu(tower.conv2(torch.nn.functional.gelu(tower.conv1(features))))
        audio = model.model.multi_modal_projector(tower(features).last_hidden_state)
    text_norm = float(model.get_input_embeddings().weight.norm(dim=1).mean())
    # The sound's features are as large as the positions, and audio enters the decoder like text does.
    assert 0.2 < float(stem.norm(dim=1).mean()) / float(positions.norm(dim=1).mean()) < 5
    assert 0.5 < float(audio.norm(dim=-1).mean()) / text_norm < 2
    recipe.cleanup()


def test_random_weights_build_a_model_folder_without_weights_and_train(digit_dataset: Path, tmp_path: Path) -> None:
    tiny = FinetuneRecipe(tiny_config(digit_dataset, tmp_path, "shape"))
    tiny.setup()
    model_dir = tmp_path / "architecture-only"
    tiny.processor.save_pretrained(model_dir)
    tiny.accelerator.unwrap_model(tiny.model).config.save_pretrained(model_dir)
    expected_parameters = sum(p.numel() for p in tiny.model.parameters())
    tiny.cleanup()
    assert not list(model_dir.glob("*.safetensors")) and not list(model_dir.glob("*.bin"))

    cfg = tiny_config(digit_dataset, tmp_path, "random", model={"name_or_path": str(model_dir), "tiny": None,
                                                                 "random_weights": True},
                      train={"max_steps": 2, "grad_accum_steps": 1})
    recipe = FinetuneRecipe(cfg)
    recipe.setup()
    assert sum(p.numel() for p in recipe.model.parameters()) == expected_parameters
    metrics = recipe._train_step()
    recipe.cleanup()
    assert metrics["input_tokens"] == sum(recipe.window_lengths) > metrics["answer_tokens"] > 0
    assert len(recipe.window_lengths) == metrics["samples"] == 4
    with pytest.raises(ValueError, match="random_weights applies to model.name_or_path"):
        tiny_config(digit_dataset, tmp_path, model={**cfg.model.model_dump(), "name_or_path": None,
                                                    "tiny": tiny.cfg.model.tiny.model_dump()})


def test_mel_features_are_computed_on_the_training_device(digit_dataset: Path, tmp_path: Path) -> None:
    from cotaforge.train.data import SampleEncoder

    recipe = FinetuneRecipe(tiny_config(digit_dataset, tmp_path))
    recipe.setup()
    recipe.cleanup()
    assert recipe.encoder.feature_device == str(recipe.accelerator.device)
    samples = np.zeros(8000, dtype=np.float32)
    on_cpu = SampleEncoder(recipe.processor, 512).encode_prompt(samples, "What is heard?")
    assert on_cpu["input_features"].shape[-1] == recipe.processor.feature_extractor.nb_max_frames
    if not torch.cuda.is_available():  # the device reaches the feature extractor: one that doesn't exist fails
        with pytest.raises((RuntimeError, AssertionError)):
            SampleEncoder(recipe.processor, 512, feature_device="cuda").encode_prompt(samples, "What is heard?")
