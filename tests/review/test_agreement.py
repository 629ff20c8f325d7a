"""Agreement statistics against values computed by hand and a published worked example."""

from __future__ import annotations

import pytest

from cotaforge.review.agreement import cohen_kappa, krippendorff_alpha_nominal, pairwise_kappas


def test_cohen_kappa_hand_computed() -> None:
    # 10 items: both accept 4, both reject 3, A accepts / B rejects 2, A rejects / B accepts 1.
    pairs = [("a", "a")] * 4 + [("r", "r")] * 3 + [("a", "r")] * 2 + [("r", "a")]
    # p_o = 0.7; A: 6 a / 4 r; B: 5 a / 5 r; p_e = 0.6*0.5 + 0.4*0.5 = 0.5; kappa = 0.2 / 0.5 = 0.4
    assert cohen_kappa(pairs) == pytest.approx(0.4)


def test_cohen_kappa_three_categories() -> None:
    pairs = [("accept", "accept"), ("accept", "edit"), ("edit", "edit"), ("reject", "reject"), ("reject", "accept"),
             ("accept", "accept")]
    # p_o = 4/6; A: accept 3, edit 1, reject 2; B: accept 3, edit 2, reject 1; p_e = (9 + 2 + 2) / 36
    p_o, p_e = 4 / 6, 13 / 36
    assert cohen_kappa(pairs) == pytest.approx((p_o - p_e) / (1 - p_e))


def test_cohen_kappa_perfect_and_undefined() -> None:
    assert cohen_kappa([("a", "a"), ("r", "r")]) == pytest.approx(1.0)
    assert cohen_kappa([("a", "a"), ("a", "a")]) is None  # one category only: chance agreement is total
    assert cohen_kappa([]) is None


def test_krippendorff_alpha_published_example() -> None:
    # Krippendorff (2011), "Computing Krippendorff's Alpha-Reliability", example C: 4 coders, 12 units,
    # missing values; nominal alpha = 0.743.
    table = {
        "A": [1, 2, 3, 3, 2, 1, 4, 1, 2, None, None, None],
        "B": [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, None, 3],
        "C": [None, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, None],
        "D": [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, None],
    }
    units = {u: {c: values[u] for c, values in table.items() if values[u] is not None} for u in range(12)}
    assert krippendorff_alpha_nominal(units) == pytest.approx(0.743, abs=5e-4)


def test_krippendorff_alpha_two_coders_hand_computed() -> None:
    # Two coders, 4 units: (a,a) (a,a) (a,r) (r,r). Coincidences: o_aa = 4, o_ar = o_ra = 1, o_rr = 2;
    # n_a = 5, n_r = 3, n = 8; alpha = 1 - (n - 1) * 2 / (2 * n_a * n_r) = 1 - 14 / 30.
    units = {1: {"x": "a", "y": "a"}, 2: {"x": "a", "y": "a"}, 3: {"x": "a", "y": "r"}, 4: {"x": "r", "y": "r"}}
    assert krippendorff_alpha_nominal(units) == pytest.approx(1 - 14 / 30)
    assert krippendorff_alpha_nominal({1: {"x": "a", "y": "a"}}) is None
    assert krippendorff_alpha_nominal({1: {"x": "a"}}) is None


def test_pairwise_kappas_only_shared_items() -> None:
    units = {1: {"ana": "accept", "bo": "accept"}, 2: {"ana": "reject", "bo": "reject"},
             3: {"ana": "accept", "cy": "reject"}}
    result = pairwise_kappas(units)
    assert result[("ana", "bo")] == (pytest.approx(1.0), 2)
    assert result[("ana", "cy")] == (pytest.approx(0.0), 1)  # p_o = 0, p_e = 0
    assert ("bo", "cy") not in result
