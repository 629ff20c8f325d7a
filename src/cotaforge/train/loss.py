"""The answer loss both training and evaluation compute: cross-entropy over the tokens a label marks.

Labels hold the token ids whose loss counts and `IGNORE_INDEX` elsewhere (the prompt, padding, and, for the
answer-token loss of evaluation, everything but the answer value).
"""

from __future__ import annotations

from typing import Any

from cotaforge.train.data import IGNORE_INDEX


def answer_loss_terms(logits: Any, labels: Any) -> tuple[Any, Any]:
    """Per-sample summed cross-entropy over labelled tokens, and the labelled token counts (next-token shift)."""
    import torch

    shift_logits = logits[:, :-1, :].float()
    shift_labels = labels[:, 1:]
    per_token = torch.nn.functional.cross_entropy(
        shift_logits.reshape(-1, shift_logits.size(-1)), shift_labels.reshape(-1),
        ignore_index=IGNORE_INDEX, reduction="none",
    ).view(shift_labels.shape)
    mask = shift_labels != IGNORE_INDEX
    return (per_token * mask).sum(dim=1), mask.sum(dim=1)


def answer_tokens(labels: Any) -> Any:
    """Labelled tokens per sample, as `answer_loss_terms` counts them."""
    return (labels[:, 1:] != IGNORE_INDEX).sum(dim=1)
