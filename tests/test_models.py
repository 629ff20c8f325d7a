from pathlib import Path

from cotaforge.models import Clip, Sample
from cotaforge.schemas import schema_drift
from cotaforge.store import CLIP_SCHEMA, SAMPLE_SCHEMA

ROOT = Path(__file__).resolve().parents[1]


def test_committed_schemas_match_the_models():
    assert schema_drift(ROOT / "schemas") == [], "run `cotaforge schemas export` and commit schemas/"


def test_schema_drift_is_detected(tmp_path):
    from cotaforge.schemas import export_schemas

    export_schemas(tmp_path)
    (tmp_path / "sample.json").write_text("{}")
    assert schema_drift(tmp_path) == ["sample"]


def test_parquet_schemas_carry_every_model_field():
    assert set(SAMPLE_SCHEMA.names) == set(Sample.model_fields)
    assert set(Clip.model_fields) - {"facts"} <= set(CLIP_SCHEMA.names)
