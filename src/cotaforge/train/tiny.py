"""A tiny Qwen2-Audio with random weights, built offline: for tests, CPU runs and debugging a recipe.

The tokenizer is a byte-level BPE trained on the train split's text (system prompt, user turns and
answers), with Qwen's chat and audio special tokens and the CoT tags as single tokens; the feature
extractor is Whisper's with a short window, so the encoder's positions match a 1-2 s clip.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cotaforge.models import COT_STAGES, SAMPLE_RATE_HZ, SYSTEM_PROMPT
from cotaforge.train.data import iter_rows, render_user_text, split_shards

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
    return Qwen2AudioForConditionalGeneration(config)
