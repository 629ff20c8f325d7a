"""Agreement between annotators on nominal judgements: Cohen's kappa for a pair, Krippendorff's alpha overall.

Both return None where they are undefined (no items, or every judgement in one category), rather than a
number that would look like a measurement.
"""

from __future__ import annotations

from collections import Counter
from itertools import combinations
from typing import Hashable, Mapping


def cohen_kappa(pairs: list[tuple[Hashable, Hashable]]) -> float | None:
    """Cohen's kappa of two annotators' judgements on the same items, given as (first, second) pairs."""
    n = len(pairs)
    if n == 0:
        return None
    observed = sum(a == b for a, b in pairs) / n
    first = Counter(a for a, _ in pairs)
    second = Counter(b for _, b in pairs)
    expected = sum(first[c] * second[c] for c in first) / (n * n)
    if expected == 1.0:
        return None
    return (observed - expected) / (1.0 - expected)


def krippendorff_alpha_nominal(units: Mapping[Hashable, Mapping[Hashable, Hashable]]) -> float | None:
    """Krippendorff's alpha (nominal) over units {unit: {coder: value}}; units with one value are skipped.

    alpha = 1 - D_o / D_e from the coincidence matrix (Krippendorff 2011, "Computing Krippendorff's
    Alpha-Reliability"); missing values are allowed.
    """
    coincidences: Counter = Counter()
    for values in units.values():
        judged = list(values.values())
        m = len(judged)
        if m < 2:
            continue
        for i, j in ((i, j) for i in range(m) for j in range(m) if i != j):
            coincidences[(judged[i], judged[j])] += 1.0 / (m - 1)
    totals: Counter = Counter()
    for (c, _), weight in coincidences.items():
        totals[c] += weight
    n = sum(totals.values())
    if n <= 1:
        return None
    disagree_observed = sum(w for (c, k), w in coincidences.items() if c != k)
    disagree_expected = sum(totals[c] * totals[k] for c in totals for k in totals if c != k) / (n - 1)
    if disagree_expected == 0:
        return None
    return 1.0 - disagree_observed / disagree_expected


def pairwise_kappas(units: Mapping[Hashable, Mapping[str, Hashable]]) -> dict[tuple[str, str], tuple[float | None, int]]:
    """Cohen's kappa and the number of shared items for every pair of coders that shared an item."""
    shared: dict[tuple[str, str], list[tuple[Hashable, Hashable]]] = {}
    for values in units.values():
        for a, b in combinations(sorted(values), 2):
            shared.setdefault((a, b), []).append((values[a], values[b]))
    return {pair: (cohen_kappa(items), len(items)) for pair, items in sorted(shared.items())}
