"""Review decisions as publish applies them: latest per annotator, undo, exact attribution, unappliable ones."""

from __future__ import annotations

import json

from cotaforge.decisions import Decision, latest_decisions, review_outcomes, withdrawn_ids


def _decision(i: int, sample: str, who: str, action: str, revision: int = 0, reason: str = "") -> Decision:
    return Decision(id=i, nonce=f"n{i}", sample_id=sample, annotator=who, action=action, reason=reason, note="",
                    revision=revision, created_at=f"2026-01-01T00:00:{i:02d}.000000Z", source="app")


def test_undo_withdraws_the_annotators_decision_before_it() -> None:
    history = [_decision(1, "s", "ana", "accept"), _decision(2, "s", "ana", "reject", reason="other"),
               _decision(3, "s", "bo", "accept"), _decision(4, "s", "ana", "undo"), _decision(5, "t", "ana", "undo")]
    assert withdrawn_ids(history) == {2}
    assert {n: d.id for n, d in latest_decisions(history)["s"].items()} == {"ana": 1, "bo": 3}
    assert "t" not in latest_decisions(history)  # an undo with nothing to withdraw is nothing


def test_rejects_name_only_those_who_rejected() -> None:
    history = [_decision(1, "s", "ana", "accept"), _decision(2, "s", "bo", "reject", reason="wrong_answer"),
               _decision(3, "s", "cy", "accept")]
    outcome = review_outcomes(history, {}).outcomes["s"]
    assert not outcome.keep and outcome.rejected_by == ("bo",)
    assert json.loads(outcome.review)["reasons"] == ["wrong_answer"]


def test_a_decision_on_a_missing_revision_is_skipped_and_named() -> None:
    history = [_decision(1, "s", "ana", "edit", revision=1), _decision(2, "s", "bo", "accept", revision=99),
               _decision(3, "t", "bo", "accept", revision=7), _decision(4, "u", "cy", "shrug")]
    result = review_outcomes(history, {("s", 1): {"reasoning": "new"}})
    assert set(result.outcomes) == {"s"}
    assert result.outcomes["s"].revision == 1 and json.loads(result.outcomes["s"].review)["annotators"] == ["ana"]
    assert len(result.skipped) == 3
    assert "decision 2 by bo on sample s" in result.skipped[0] and "revision 99 does not exist" in result.skipped[0]
    assert "'shrug'" in result.skipped[2]
