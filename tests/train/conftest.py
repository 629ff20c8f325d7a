"""Fixtures for the fine-tuning tests: a small published digits dataset and tiny-model configs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from .factories import write_digit_dataset

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")


@pytest.fixture(scope="session")
def digit_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three speakers, digits 0-3: train (george), validation (jackson), test (lucas); three question types."""
    root = tmp_path_factory.mktemp("datasets") / "digits" / "v1"
    return write_digit_dataset(root, {"train": ["george"], "validation": ["jackson"], "test": ["lucas"]},
                               digits=[0, 1, 2, 3], question_types=("multiple_choice", "yes_no", "open_ended"))
