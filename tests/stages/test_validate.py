import copy

import pytest

from cotaforge.cot import render_assistant_text
from cotaforge.models import COT_STAGES
from cotaforge.stages.validate import final_letter, validate_samples

from ..conftest import read_stage


@pytest.fixture(scope="module")
def material(built):
    cfg, run, _ = built
    clips = {c["clip_id"]: c for c in read_stage(run, "ingest")}
    samples = read_stage(run, "expand")
    return cfg, clips, samples


def pick(samples, **where):
    return copy.deepcopy(next(s for s in samples if all(s[k] == v for k, v in where.items())))


def rerender(sample):
    sample["assistant_text"] = render_assistant_text({s: sample[s] for s in COT_STAGES})
    return sample


def reasons_for(material, sample):
    cfg, clips, _ = material
    passed, rejects = validate_samples([sample], clips, cfg)
    return rejects[0].reasons if rejects else []


def test_template_samples_pass_and_get_validation_details(built, material):
    cfg, clips, samples = material
    passed, rejects = validate_samples(samples, clips, cfg)
    assert not rejects and len(passed) == len(samples)
    assert '"passed":true' in passed[0]["validation"]
    assert built[2]["validate"].rows_out == len(samples)


def test_wrong_letter(material):
    s = pick(material[2], question_type="multiple_choice", target="class")
    s["answer"] = "A" if s["answer"] != "A" else "B"
    assert "answer_mismatch" in reasons_for(material, s)


def test_response_and_summary_must_agree_with_the_answer(material):
    s = pick(material[2], question_type="multiple_choice", target="class")
    other = "A" if s["answer"] != "A" else "B"
    s["response"] = f"It is option {other}"
    s["summary"] = f"Option {other}, {s['options'][ord(other) - 65]}, fits."
    assert {"response_mismatch", "summary_disagrees"} <= set(reasons_for(material, rerender(s)))


def test_yes_no_must_match_the_clip(material):
    s = pick(material[2], question_type="yes_no", answer="yes")
    s["answer"] = "no"
    assert "answer_mismatch" in reasons_for(material, s)


def test_missing_and_misordered_stages(material):
    s = pick(material[2], question_type="open_ended")
    s["assistant_text"] = s["assistant_text"].replace("<SUMMARY>", "").replace("</SUMMARY>", "")
    assert "missing_stage" in reasons_for(material, s)
    s = pick(material[2], question_type="open_ended")
    plan = f"<PLANNING>\n{s['planning']}\n</PLANNING>\n"
    s["assistant_text"] = s["assistant_text"].replace(plan, "").replace("</REASONING>\n", "</REASONING>\n" + plan)
    assert "stage_order" in reasons_for(material, s)


def test_stage_lengths(material):
    s = pick(material[2], question_type="open_ended")
    s["planning"] = "Ok."
    assert "stage_too_short" in reasons_for(material, rerender(s))
    s["planning"] = "word " * 2000
    assert "stage_too_long" in reasons_for(material, rerender(s))


def test_leaks_of_file_names_ids_and_forbidden_words(material):
    cfg, clips, samples = material
    s = pick(samples, question_type="open_ended")
    clip = clips[s["clip_id"]]
    s["reasoning"] += f" The file {clip['source_path'].rsplit('/', 1)[-1]} says so."
    assert "leak_source_id" in reasons_for(material, rerender(s))
    s = pick(samples, question_type="open_ended")
    s["reasoning"] += " The label agrees."
    assert "leak_forbidden_word" in reasons_for(material, rerender(s))
    s = pick(samples, question_type="open_ended")
    s["question"] = f"Is this {s['target_value']}? What is heard?"
    assert "leak_answer_in_question" in reasons_for(material, s)


def test_leak_terms_are_worked_out_once_per_clip(material, monkeypatch):
    from cotaforge.stages import validate

    cfg, clips, samples = material
    calls = []
    monkeypatch.setattr(validate, "leak_terms", lambda clip: calls.append(clip["clip_id"]) or [])
    validate_samples(samples, clips, cfg)
    assert len(samples) > len(clips) and sorted(calls) == sorted({s["clip_id"] for s in samples})


def test_speaker_name_counts_as_an_id(material):
    s = pick(material[2], question_type="open_ended", source_dataset=next(
        x["source_dataset"] for x in material[2] if "speaker" in x["metadata"]))
    speaker = s["group_id"].split(":", 1)[1]
    s["caption"] += f" Spoken by {speaker}."
    assert "leak_source_id" in reasons_for(material, rerender(s))


def test_options_must_be_distinct_with_one_correct(material):
    s = pick(material[2], question_type="multiple_choice", target="class")
    wrong = next(i for i in range(len(s["options"])) if chr(65 + i) != s["answer"])
    s["options"][wrong] = s["options"][ord(s["answer"]) - 65].upper()
    assert {"options_not_distinct", "options_ambiguous"} <= set(reasons_for(material, s))


def test_near_duplicate_questions_of_one_clip(material):
    cfg, clips, samples = material
    first = pick(samples, question_type="open_ended", prompt_style="concise")
    second = pick(samples, clip_id=first["clip_id"], question_type="open_ended", prompt_style="conversational")
    second["question"] = first["question"]
    passed, rejects = validate_samples([first, second], clips, cfg)
    assert len(passed) == 1 and rejects[0].reason == "near_duplicate_question"


def test_schema_errors_are_rejects_not_exceptions(material):
    s = pick(material[2], question_type="open_ended")
    s["question_type"] = "riddle"
    assert reasons_for(material, s) == ["schema_invalid"]


@pytest.mark.parametrize("text,letter", [
    ("so the answer is C", "C"), ("Answer: B.", "B"), ("A or B? I pick D", "D"), ("no letter here", None),
])
def test_final_letter(text, letter):
    assert final_letter(text) == letter


def test_a_sample_whose_clip_is_unknown_is_rejected_not_raised(material):
    cfg, clips, samples = material
    s = pick(samples, question_type="open_ended")
    s["clip_id"] = "0" * 16
    passed, rejects = validate_samples([s], clips, cfg)
    assert not passed and rejects[0].reason == "ground_truth_mismatch" and "not among" in rejects[0].message


# -- numbers in the chain of thought against the clip's facts (every sample) -------------------------------------

def _with_reasoning(sample, extra):
    sample["reasoning"] += " " + extra
    return rerender(sample)


def test_a_cot_that_misstates_a_measured_fact_is_rejected(material):
    cfg, clips, samples = material
    s = pick(samples, question_type="open_ended")
    facts = clips[s["clip_id"]]["facts"]
    wrong = [f"Its spectral centroid sits near {facts['spectral_centroid_hz'] * 3 + 500:.0f} Hz.",
             f"The average level is {facts['loudness_dbfs'] - 15:.1f} dBFS.",
             f"The clip lasts {facts['duration_s'] + 4:.2f} seconds.",
             f"It runs for {(facts['duration_s'] + 4) * 1000:.0f} ms.",
             f"I count {facts['onset_count'] + 4} distinct onsets.",
             f"Its energy is around {(facts['spectral_centroid_hz'] * 3 + 500) / 1000:.1f} kHz.",
             f"Most energy lies between {facts['spectral_centroid_hz'] * 3:.0f} and {facts['spectral_centroid_hz'] * 4:.0f} Hz."]
    for sentence in wrong:
        reasons = reasons_for(material, _with_reasoning(pick(samples, sample_id=s["sample_id"]), sentence))
        assert reasons == ["cot_contradicts_facts"], (sentence, reasons)


def test_rounded_hedged_and_ranged_statements_of_the_facts_pass(material):
    cfg, clips, samples = material
    s = pick(samples, question_type="open_ended")
    facts = clips[s["clip_id"]]["facts"]
    centroid, duration = facts["spectral_centroid_hz"], facts["duration_s"]
    right = [f"Its spectral centroid sits near {centroid:.0f} Hz.",
             f"Its energy is around {centroid / 1000:.1f} kHz.",
             f"Most energy lies between {centroid * 0.8:.0f} and {centroid * 1.2:.0f} Hz.",
             f"It lasts about {round(duration)} seconds." if round(duration) else "It lasts about 0.5 seconds.",
             f"The level averages roughly {facts['loudness_dbfs']:.0f} dBFS, peaking at {facts['peak_dbfs']:.1f} dBFS.",
             f"It runs for {duration * 1000:.0f} ms."]
    for sentence in right:
        assert reasons_for(material, _with_reasoning(pick(samples, sample_id=s["sample_id"]), sentence)) == [], sentence


def test_v1_prompts_keep_single_clip_behaviour_and_pass_the_new_checks(tmp_path, digits_manifest):
    from ..conftest import make_config, run_stages

    cfg = make_config(tmp_path / "out", [digits_manifest], "expand.question_bank=questions.v1",
                      "expand.cot_bank=cot_template.v1")
    run, reports = run_stages(cfg, until="validate")
    samples = read_stage(run, "expand")
    assert samples and all(s["teacher"]["prompt_versions"] == ["cot_template.v1"] for s in samples)
    assert {s["question_type"] for s in samples} == {"multiple_choice", "yes_no", "open_ended", "comparison"}
    assert reports["validate"].rejected == {} and reports["validate"].rows_out == len(samples)


# -- scene samples: answers from the timeline, and CoTs that contradict it ----------------------------------------

SCENE_FACTS = {"duration_s": 5.0, "loudness_dbfs": -20.0, "peak_dbfs": -3.0, "clipping_ratio": 0.0,
               "silence_ratio": 0.4, "spectral_centroid_hz": 1200.0, "onset_count": 4, "tempo_bpm": None,
               "f0_median_hz": None, "voiced_ratio": 0.1}


def _scene_samples(form: str):
    """Samples of one scene (snare 0.3 s, kick 1.1 s, snare 3.0 s, tom 3.8 s) made by expand's own code."""
    from cotaforge.config import load_config
    from cotaforge.prompts import load_bank
    from cotaforge.scenes import Event, events_to_json
    from cotaforge.stages.expand import QUESTION_PLACEHOLDERS, _sample_row, _teacher_info, plan_clip
    from cotaforge.teacher.template import TemplateTeacher

    def ev(cls, onset, offset, level):
        return Event(cls, f"audio/{cls}_7.wav", "", f"{cls}-source", onset, offset, 0.0, level)

    events = [ev("snare", 0.3, 0.6, -12.0), ev("kick", 1.1, 2.6, -24.0), ev("snare", 3.0, 3.3, -12.5),
              ev("tom", 3.8, 4.4, -30.0)]
    clip = {"clip_id": "c" * 16, "group_id": "scene:g1", "source_dataset": "drums", "source_path": "scene:" + "c" * 16,
            "source_id": "", "manifest_row": "compose/plan.json:scene 1", "labels": ["snare", "kick", "tom"],
            "class_label": "snare", "metadata": "{}", "sample_rate_hz": 16000, "facts": SCENE_FACTS,
            "scene_kind": "sequence", "events": events_to_json(events), "twin_of_clip": "", "twin_change": ""}
    stats = {"classes": ["crash", "kick", "snare", "tom"], "classes_by_dataset": {"drums": ["crash", "kick", "snare", "tom"]}}
    cfg = load_config(None, [])
    teacher = TemplateTeacher(cfg.expand.cot_bank)
    samples = []
    bank = load_bank(cfg.expand.question_bank, QUESTION_PLACEHOLDERS)
    for i in range(32):  # clip ids turn the forms, options and letters a clip gets
        for item in plan_clip({**clip, "clip_id": f"{i:08x}" + "c" * 8}, "A scene.", cfg, stats, [], [], bank):
            if item.request.form == form:
                stages = teacher.write_cots([item.request])[0].model_dump()
                samples.append(_sample_row(item, stages, _teacher_info(teacher)))
    assert samples, form
    return cfg, clip, samples


def _scene_reasons(cfg, clip, sample):
    passed, rejects = validate_samples([sample], {sample["clip_id"]: {**clip, "clip_id": sample["clip_id"]}}, cfg)
    return rejects[0].reasons if rejects else []


@pytest.mark.parametrize("form", ["count_class", "count_all", "first", "last", "after", "before", "longest",
                                  "shortest", "louder", "loudest", "present", "onset"])
def test_template_scene_samples_pass(form):
    cfg, clip, samples = _scene_samples(form)
    for sample in samples:  # one by one: the seeds repeat some questions, which one batch would call duplicates
        assert _scene_reasons(cfg, clip, sample) == []


def test_a_scene_answer_is_recomputed_from_the_timeline():
    import json

    cfg, clip, samples = _scene_samples("count_class")
    s = copy.deepcopy(next(x for x in samples if not x["options"]))
    s["target_value"] = s["answer"] = str(int(s["answer"]) + 1)
    assert "ground_truth_mismatch" in _scene_reasons(cfg, clip, s)
    # the same sample on a timeline where the counted sound is too close to another is no longer certain
    s = copy.deepcopy(next(x for x in samples if not x["options"] and json.loads(x["asked_value"]) == ["snare"]))
    events = json.loads(clip["events"])
    events[2]["onset_s"], events[2]["offset_s"] = 0.65, 0.9  # 0.05 s after the first snare
    assert "ground_truth_mismatch" in _scene_reasons(cfg, {**clip, "events": json.dumps(events)}, s)


@pytest.mark.parametrize("form,sentence", [
    ("count_class", 'So "snare" is heard 3 times.'),
    ("count_class", "The snare comes back twice more after the first one, so I hear it four times."),
    ("count_all", "I hear 5 separate sounds."),
    ("onset", 'The "tom" comes in around 2.0 s.'),
    ("first", 'The first sound is "tom".'),
    ("last", '"snare" comes last.'),
    ("before", 'Clearly "tom" is heard before "kick".'),
    ("after", 'The kick ends around 2.6 s and the tom follows right after, from 1.6 s.'),
])
def test_a_cot_that_contradicts_the_timeline_is_rejected(form, sentence):
    cfg, clip, samples = _scene_samples(form)
    s = copy.deepcopy(samples[0])
    s["reasoning"] += " " + sentence
    assert "cot_contradicts_timeline" in _scene_reasons(cfg, clip, rerender(s)), sentence


def test_a_walk_through_with_times_out_of_order_is_rejected():
    cfg, clip, samples = _scene_samples("present")
    s = copy.deepcopy(samples[0])
    s["caption"] = ('First, around 0.3 s, a short "snare"; then, from about 3.8 s, a quiet "kick"; then, around 1.1 s, '
                    'a loud "snare"; finally, around 3.0 s, a "tom".')
    reasons = _scene_reasons(cfg, clip, rerender(s))
    assert "cot_contradicts_timeline" in reasons


def test_a_scene_cot_with_an_invented_level_is_rejected_as_contradicting_facts():
    cfg, clip, samples = _scene_samples("louder")
    s = copy.deepcopy(samples[0])
    s["reasoning"] += ' The "kick" sits at about -45 dBFS.'
    assert _scene_reasons(cfg, clip, rerender(s)) == ["cot_contradicts_facts"]


def test_scene_source_file_names_count_as_leaks():
    cfg, clip, samples = _scene_samples("present")
    s = copy.deepcopy(samples[0])
    s["reasoning"] += " This is kick_7.wav again."
    assert "leak_source_id" in _scene_reasons(cfg, clip, rerender(s))


def test_teacher_text_with_hidden_characters_or_look_alike_letters_is_refused(material):
    cases = {"la\u200bbel": "text_not_normalized", "a\x00b": "text_not_normalized",
             "\u202eright": "text_not_normalized", "l\u0430bel": "mixed_script_word"}
    for inserted, code in cases.items():
        s = pick(material[2], question_type="multiple_choice", target="class")
        s["reasoning"] = s["reasoning"] + f" It sounds {inserted}."
        assert code in reasons_for(material, rerender(s)), inserted


def test_more_options_than_the_run_asks_for_are_refused(material):
    cfg = material[0]
    s = pick(material[2], question_type="multiple_choice", target="class")
    s["options"] = s["options"] + [f"sound {i}" for i in range(cfg.expand.n_options + 1 - len(s["options"]))]
    assert "too_many_options" in reasons_for(material, s)
