import json

from cotaforge.stages.caption import grounding_fields
from cotaforge.stages.ingest import load_run_stats

from ..conftest import read_stage


def test_captions_describe_each_clip_from_its_own_facts(built):
    cfg, run, reports = built
    captions = {c["clip_id"]: c for c in read_stage(run, "caption")}
    clips = read_stage(run, "ingest")
    assert len(captions) == len(clips) == reports["caption"].rows_out
    for clip in clips:
        text = captions[clip["clip_id"]]["text"]
        assert f'"{clip["class_label"].replace("_", " ")}"' in text
        assert f"{clip['facts']['loudness_dbfs']:.1f} dBFS" in text
        assert f"{clip['facts']['duration_s']:.2f} seconds" in text or "long" in text or "recording" in text
        assert clip["source_path"].rsplit("/", 1)[-1] not in text
    assert len({c["text"] for c in captions.values()}) == len(captions)


def test_grounding_fields_skip_ids_constants_and_class_renames(built):
    cfg, run, _ = built
    fields = grounding_fields(load_run_stats(run), cfg)
    digits = [f for d, f in fields.items() if "digits" in d][0]
    drums = [f for d, f in fields.items() if "drums" in d][0]
    assert digits == ["accent"]  # not speaker (the split group), gender (constant) or digit (the class renamed)
    assert drums == []  # not source_file or source_instrument (provenance), license or kit (one value here)


def test_metadata_appears_in_the_caption(built):
    _, run, _ = built
    clips = {c["clip_id"]: c for c in read_stage(run, "ingest")}
    for caption in read_stage(run, "caption"):
        metadata = json.loads(clips[caption["clip_id"]]["metadata"])
        if "accent" in metadata:
            assert f"accent is {metadata['accent']}" in caption["text"]
