import json
from collections import Counter

from cotaforge.cot import parse_assistant_text
from cotaforge.describe import display_label
from cotaforge.stages.ingest import load_run_stats

from ..conftest import read_stage


def test_question_types_and_styles_per_clip(built):
    cfg, run, _ = built
    samples = read_stage(run, "expand")
    per_clip = Counter(s["clip_id"] for s in samples)
    assert min(per_clip.values()) >= 8  # 4 types x 2 styles, plus metadata questions where there are some
    assert {s["question_type"] for s in samples} == {"multiple_choice", "yes_no", "open_ended", "comparison"}
    assert {s["prompt_style"] for s in samples} == {"concise", "conversational"}
    assert {s["target"].split(".")[0] for s in samples} == {"class", "metadata", "fact"}


def test_class_answers_agree_with_labels(built):
    _, run, _ = built
    for s in read_stage(run, "expand"):
        truth = display_label(s["labels"][0])
        if s["target"] != "class":
            continue
        if s["question_type"] == "multiple_choice":
            assert s["options"][ord(s["answer"]) - 65] == truth
            assert s["response"].rstrip(".").endswith(s["answer"])
        elif s["question_type"] == "yes_no":
            assert s["answer"] == ("yes" if s["asked_value"] == truth else "no")
            assert s["response"].lower().startswith(s["answer"])


def test_distractors_come_from_the_same_source_dataset(built):
    _, run, _ = built
    stats = load_run_stats(run)
    for s in read_stage(run, "expand"):
        if s["question_type"] == "multiple_choice" and s["target"] == "class":
            own = {display_label(c) for c in stats["classes_by_dataset"][s["source_dataset"]]}
            assert set(s["options"]) <= own and len(set(s["options"])) == len(s["options"])


def test_yes_no_and_letters_are_balanced_by_construction(built):
    _, run, _ = built
    samples = read_stage(run, "expand")
    yes_no = Counter(s["answer"] for s in samples if s["question_type"] == "yes_no")
    assert abs(yes_no["yes"] - yes_no["no"]) <= 1
    letters = Counter(s["answer"] for s in samples if s["question_type"] == "multiple_choice" and s["target"] == "class")
    assert set(letters) == {"A", "B", "C", "D"} and max(letters.values()) - min(letters.values()) <= len(samples) * 0.05


def test_comparisons_follow_the_measured_facts(built):
    _, run, _ = built
    clips = {c["clip_id"]: c for c in read_stage(run, "ingest")}
    comparisons = [s for s in read_stage(run, "expand") if s["question_type"] == "comparison"]
    assert comparisons
    for s in comparisons:
        grounding = json.loads(s["validation"])["grounding"]
        value = clips[s["clip_id"]]["facts"][grounding["fact"]]
        assert s["answer"] == (grounding["more"] if value > grounding["reference_value"] else grounding["less"])


def test_every_stage_is_written_from_the_clip_and_rendered_tagged(built):
    _, run, _ = built
    samples = read_stage(run, "expand")
    for stage in ("planning", "reasoning", "summary"):
        texts = Counter(s[stage] for s in samples)
        # No boilerplate shared by all samples: at most a few share the same text.
        assert texts.most_common(1)[0][1] < len(samples) * 0.05, stage
    for s in samples:
        stages, problems = parse_assistant_text(s["assistant_text"])
        assert problems == [] and stages["reasoning"] == s["reasoning"]
        assert s["teacher"]["prompt_versions"] == ["cot_template.v2"]


def test_teacher_text_is_kept_in_normal_form_so_validate_does_not_drop_it(built, tmp_path, monkeypatch):
    """A teacher's no-break spaces, ellipses and zero-width spaces are normalised at expand, not rejected."""
    import shutil

    from cotaforge.stages import expand, validate
    from cotaforge.store import RunDir
    from cotaforge.teacher.template import TemplateTeacher

    cfg, run, _ = built

    class Typographic(TemplateTeacher):
        def write_cots(self, requests):
            return [c.model_copy(update={"caption": c.caption.replace(" ", "\u00a0", 1) + " Then\u2026 quiet\u200b."})
                    if hasattr(c, "caption") else c for c in super().write_cots(requests)]

    copy = RunDir(tmp_path / "run")
    shutil.copytree(run.root, copy.root)
    shutil.rmtree(copy.stage_dir("expand"))
    shutil.rmtree(copy.stage_dir("validate"), ignore_errors=True)
    monkeypatch.setattr(expand, "build_teacher", lambda cfg: Typographic(cfg.expand.cot_bank))
    expand.expand_batch(copy, cfg, 0)
    captions = copy.read_part("expand", 0, ["caption"])["caption"].to_pylist()
    assert captions and all("Then... quiet." in c and "\u00a0" not in c for c in captions)
    report = validate.validate_batch(copy, cfg, 0)
    assert not {"text_not_normalized", "mixed_script_word"} & set(report.rejected), report.rejected
