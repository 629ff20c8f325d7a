"""JSON Schema files generated from the pydantic models, committed under `schemas/`."""

from __future__ import annotations

import json
from pathlib import Path

from cotaforge.models import EXPORTED_MODELS


def schema_texts() -> dict[str, str]:
    return {name: json.dumps(model.model_json_schema(), indent=2, sort_keys=True) + "\n"
            for name, model in EXPORTED_MODELS.items()}


def export_schemas(folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in schema_texts().items():
        path = folder / f"{name}.json"
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return written


def schema_drift(folder: Path) -> list[str]:
    """Names whose committed schema differs from the model (or is missing, or is not a model any more)."""
    texts = schema_texts()
    drift = [name for name, text in texts.items()
             if not (folder / f"{name}.json").is_file() or (folder / f"{name}.json").read_text(encoding="utf-8") != text]
    drift += [p.stem for p in folder.glob("*.json") if p.stem not in texts]
    return sorted(drift)
