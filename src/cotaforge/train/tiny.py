"""A tiny Qwen2-Audio with random weights, built offline: for tests, CPU runs and debugging a recipe.

The tokenizer is a byte-level BPE trained on the train split's text (system prompt, user turns and
answers), with Qwen's chat and audio special tokens and the CoT tags as single tokens; the feature
extractor is Whisper's with a short window, so the encoder's positions match a 1-2 s clip.

Three things differ from a plain random initialisation, all to put the input scales where a trained
Qwen2-Audio has them:
- the encoder's (frozen) position embedding holds Whisper's sinusoids rather than random vectors;
- the encoder's conv stem is He-initialised, so the sound's features are about as large as the sinusoids
  (with the default std of 0.02 they are 80 times smaller, and the encoder's output says where a frame is
  but hardly what it holds: classes of sound sit 0.13 apart in its output, against 3.3 after this);
- the audio-to-text projector starts at a scale where audio positions enter the decoder with the norm of
  text embeddings (a default initialisation makes them about 12 times larger).
"""

from __future__ import annotations

from collections.abc import Iterable
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cotaforge.models import COT_STAGES, SAMPLE_RATE_HZ, SYSTEM_PROMPT
from cotaforge.train.data import LETTERS, iter_rows, render_user_text, split_shards

if TYPE_CHECKING:
    from cotaforge.train.config import TinyModelSection

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|AUDIO|>", "<|audio_bos|>", "<|audio_eos|>"]
HOP_LENGTH_SAMPLES = 160
# The encoder's conv stem halves the mel frames: max_source_positions = frames / 2.
CONV_STRIDE = 2


def cot_tags() -> list[str]:
    """`<THINK>`, `</THINK>` and the open and close tag of every stage."""
    tags = ["<THINK>", "</THINK>"]
    for stage in COT_STAGES:
        tags += [f"<{stage.upper()}>", f"</{stage.upper()}>"]
    return tags


def option_markers() -> list[str]:
    """The start of each option line of a user turn, as `render_user_text` writes it: '\\nA.', '\\nB.', ..."""
    return [f"\n{letter}." for letter in LETTERS]


def train_texts(dataset_dir: Path, split: str) -> Iterable[str]:
    """Every text the model reads or writes in training, for the tokenizer's vocabulary."""
    yield SYSTEM_PROMPT
    for row in iter_rows(split_shards(dataset_dir, split), columns=["question", "options", "assistant_text"]):
        yield render_user_text(row["question"], row["options"] or [])
        yield row["assistant_text"]


def build_tiny_processor(texts: Iterable[str], cfg: "TinyModelSection") -> Any:
    """A Qwen2AudioProcessor whose tokenizer is trained on `texts` (deterministic for the same texts)."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast, Qwen2AudioProcessor, WhisperFeatureExtractor

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=cfg.vocab_size, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tokenizer.train_from_iterator(texts, trainer)
    # The tags are plain (not special) tokens so decoding keeps them, as it does with Qwen's own tokenizer.
    tokenizer.add_tokens([AddedToken(tag, special=False, normalized=False) for tag in cot_tags()])
    # An option line's letter and full stop are one token, so the option after a marker is found by that
    # marker alone; split ('B', '.'), a copy of option B must match two tokens back, which a four-layer
    # decoder learns in some runs only.
    tokenizer.add_tokens([AddedToken(marker, special=False, normalized=False) for marker in option_markers()])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        extra_special_tokens={"audio_token": "<|AUDIO|>", "audio_bos_token": "<|audio_bos|>",
                              "audio_eos_token": "<|audio_eos|>"},
    )
    feature_extractor = WhisperFeatureExtractor(feature_size=cfg.num_mel_bins, sampling_rate=SAMPLE_RATE_HZ,
                                                hop_length=HOP_LENGTH_SAMPLES, chunk_length=cfg.chunk_length_s)
    return Qwen2AudioProcessor(feature_extractor=feature_extractor, tokenizer=fast)


def build_tiny_model(processor: Any, cfg: "TinyModelSection", attn_implementation: str = "sdpa") -> Any:
    """A randomly initialised Qwen2AudioForConditionalGeneration sized by `cfg`; seed torch first."""
    from transformers import Qwen2AudioConfig, Qwen2AudioForConditionalGeneration

    tokenizer = processor.tokenizer
    frames = processor.feature_extractor.nb_max_frames
    config = Qwen2AudioConfig(
        audio_config={
            "model_type": "qwen2_audio_encoder",
            "num_mel_bins": cfg.num_mel_bins,
            "encoder_layers": cfg.audio_layers,
            "encoder_attention_heads": cfg.audio_heads,
            "encoder_ffn_dim": cfg.audio_ffn_dim,
            "d_model": cfg.audio_dim,
            "dropout": cfg.audio_dropout,
            "max_source_positions": frames // CONV_STRIDE,
        },
        text_config={
            "model_type": "qwen2",
            "vocab_size": len(tokenizer),
            "hidden_size": cfg.text_dim,
            "intermediate_size": cfg.text_ffn_dim,
            "num_hidden_layers": cfg.text_layers,
            "num_attention_heads": cfg.text_heads,
            "num_key_value_heads": cfg.text_kv_heads,
            "max_position_embeddings": 4096,
            "tie_word_embeddings": False,
            "bos_token_id": tokenizer.convert_tokens_to_ids("<|im_start|>"),
            "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id,
        },
        audio_token_index=tokenizer.convert_tokens_to_ids("<|AUDIO|>"),
    )
    config._attn_implementation = attn_implementation
    model = Qwen2AudioForConditionalGeneration(config)
    _whisper_positions(model)
    _scale_conv_stem(model)
    _match_audio_scale(model, config.text_config.initializer_range)
    return model


def sinusoids(length: int, channels: int, max_timescale: float = 10_000.0) -> Any:
    """Whisper's sinusoidal position embedding: `length` x `channels`, sines then cosines."""
    import torch

    if channels % 2:
        raise ValueError(f"audio_dim must be even for sinusoidal positions, got {channels}")
    log_increment = math.log(max_timescale) / (channels // 2 - 1)
    inverse_timescales = torch.exp(-log_increment * torch.arange(channels // 2))
    scaled_time = torch.arange(length).view(-1, 1) * inverse_timescales.view(1, -1)
    return torch.cat([scaled_time.sin(), scaled_time.cos()], dim=1)


def _whisper_positions(model: Any) -> None:
    import torch

    positions = model.model.audio_tower.embed_positions
    with torch.no_grad():
        positions.weight.copy_(sinusoids(*positions.weight.shape))


def _scale_conv_stem(model: Any) -> None:
    """He initialisation of the encoder's two convolutions (GELU after each), zero biases."""
    import torch

    encoder = model.model.audio_tower
    for conv in (encoder.conv1, encoder.conv2):
        torch.nn.init.kaiming_normal_(conv.weight, nonlinearity="relu")
        torch.nn.init.zeros_(conv.bias)


def _match_audio_scale(model: Any, text_std: float) -> None:
    """Scale the projector so an audio position's vector has a text embedding's expected norm.

    The encoder ends in a LayerNorm, so each of its `d_audio` outputs has unit variance; projector weights
    of std `text_std / sqrt(d_audio)` then give outputs of std `text_std`, like the embedding table's rows.
    """
    import torch

    linear = model.model.multi_modal_projector.linear
    with torch.no_grad():
        linear.weight.normal_(0.0, text_std / math.sqrt(linear.in_features))
        linear.bias.zero_()
