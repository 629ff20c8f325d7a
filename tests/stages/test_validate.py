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
