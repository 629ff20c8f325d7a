"""The recipe on a GPU: bf16 autocast and the same resume guarantee. Skips itself without CUDA."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from cotaforge.train.recipe import run_finetune  # noqa: E402

from .factories import tiny_config  # noqa: E402

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


def test_tiny_model_trains_in_bf16_on_gpu(digit_dataset: Path, tmp_path: Path) -> None:
    result = run_finetune(tiny_config(digit_dataset, tmp_path, "gpu", train={"precision": "bf16", "max_steps": 4}))
    assert result.final_dir is not None and result.last_loss is not None and math.isfinite(result.last_loss)
