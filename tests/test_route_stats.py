"""A route's statistics (services/common/route_stats.py): bound parsing, decisions per metric, union-bound
levels, ratio and difference intervals at the edges, labelled accuracy, and speed."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest

from services.common import route_stats as rs
from services.common.confseq import Interval, mean_cs, quantile_cs


def _arrays(n: int = 2000, agree: float = 1.0, p_err: float = 0.0, c_err: float = 0.0, slower: float = 1.0,
            seed: int = 0) -> rs.PairArrays:
    rng = np.random.default_rng(seed)
    latency = rng.lognormal(-3, 0.3, n)
    return rs.PairArrays(
        agree=rng.random(n) < agree,
        top5=np.full(n, 1.0),
        primary_error=rng.random(n) < p_err,
        candidate_error=rng.random(n) < c_err,
        primary_latency_s=latency,
        candidate_latency_s=rng.lognormal(-3, 0.3, n) * slower,
    )


def _state(a: rs.PairArrays, text: str) -> str:
    (result,) = rs.route_statistics(a, rs.parse_bounds(text), 0.05).bounds
    return result.state


def test_parse_bounds_accepts_the_issue_words_and_snake_case():
    words = rs.parse_bounds("agreement >= 0.99, p99 ratio <= 1.10, error-rate difference <= 0.001")
    assert words == rs.DEFAULT_BOUNDS
    assert [b.text() for b in words] == ["agreement >= 0.99", "p99_ratio <= 1.1", "error_rate_diff <= 0.001"]
    assert rs.parse_bounds("top5_overlap≥0.8,p50_ratio<=2") == (
        rs.Bound("top5_overlap", ">=", 0.8), rs.Bound("p50_ratio", "<=", 2.0))


@pytest.mark.parametrize("text, message", [
    ("", "no bounds"),
    ("agreement > 0.99", "cannot read"),
    ("agreement >= ninety", "cannot read"),
    ("latency >= 1", "unknown bound metric"),
    ("agreement >= 1.5", "in \\[0, 1\\]"),
    ("p99_ratio <= 0", "> 0"),
    ("agreement >= 0.9, agreement >= 0.9", "twice"),
    ("agreement >= 0.9\x00", "NUL"),
    ("x" * 20000, "characters"),
    (",".join(["agreement >= 0.9"] * 40), "at most"),
    ("agreement >= 1e999", "finite"),
])
def test_parse_bounds_refuses_hostile_text_clearly(text, message):
    with pytest.raises(ValueError, match=message):
        rs.parse_bounds(text)


def test_agreement_decisions():
    assert _state(_arrays(agree=1.0), "agreement >= 0.99") == rs.HOLDS
    assert _state(_arrays(agree=0.95), "agreement >= 0.99") == rs.VIOLATED
    assert _state(_arrays(n=50, agree=1.0), "agreement >= 0.99") == rs.UNDECIDED
    assert _state(_arrays(agree=0.95), "agreement <= 0.99") == rs.HOLDS


def test_top5_decisions_ignore_unknown_rows():
    a = _arrays()
    a.top5 = np.where(np.arange(2000) % 2 == 0, 0.6, np.nan)
    stats = rs.route_statistics(a, rs.parse_bounds("top5_overlap >= 0.8"), 0.05)
    assert stats.bounds[0].state == rs.VIOLATED and stats.top5_overlap.n == 1000


def test_error_rate_difference_decisions():
    assert _state(_arrays(c_err=0.2), "error_rate_diff <= 0.05") == rs.VIOLATED
    assert _state(_arrays(), "error_rate_diff <= 0.05") == rs.HOLDS
    assert _state(_arrays(n=20), "error_rate_diff <= 0.05") == rs.UNDECIDED


def test_latency_ratio_decisions():
    assert _state(_arrays(slower=2.0), "p50_ratio <= 1.5") == rs.VIOLATED
    assert _state(_arrays(n=20000), "p90_ratio <= 1.5") == rs.HOLDS
    assert _state(_arrays(n=200), "p99_ratio <= 1.1") == rs.UNDECIDED  # the p99's upper end is still +inf


def test_each_bound_runs_at_alpha_over_the_number_of_bounds():
    a = _arrays(agree=0.995, n=5000, c_err=0.01)
    bounds = rs.parse_bounds("agreement >= 0.99, error_rate_diff <= 0.1, p90_ratio <= 2, top5_overlap >= 0.5")
    stats = rs.route_statistics(a, bounds, 0.05)
    agreement = mean_cs(a.agree.astype(float), 0.05 / 4)
    assert stats.bounds[0].interval.lower >= agreement.lower and stats.bounds[0].interval.upper <= agreement.upper
    diff = rs.difference_interval(a.candidate_error, a.primary_error, 0.05 / 4)
    assert stats.bounds[1].interval == diff
    ratio = rs.ratio_interval(quantile_cs(a.candidate_latency_s, 0.9, 0.05 / 8),
                              quantile_cs(a.primary_latency_s, 0.9, 0.05 / 8))
    assert stats.bounds[2].interval == ratio
    # Unbounded metrics are shown at alpha: narrower than at alpha / 4.
    wide = rs.route_statistics(a, bounds, 0.05).primary_error_rate
    assert wide == mean_cs(a.primary_error.astype(float), 0.05)


def test_ratio_interval_guards_zero_and_infinity():
    finite = Interval(1.0, 2.0, 1.5, 100, "m")

    def ends(c: Interval, p: Interval) -> tuple[float, float]:
        ratio = rs.ratio_interval(c, p)
        return ratio.lower, ratio.upper

    assert ends(finite, Interval(-math.inf, math.inf, 1.0, 10, "m")) == (0.0, math.inf)
    assert ends(finite, Interval(0.0, 4.0, 1.0, 10, "m")) == (0.25, math.inf)
    assert ends(finite, Interval(0.0, 0.0, 0.0, 10, "m")) == (0.0, math.inf)
    assert ends(Interval(-math.inf, 3.0, 1.0, 10, "m"), Interval(1.0, 2.0, 0.0, 10, "m")) == (0.0, 3.0)
    assert math.isnan(rs.ratio_interval(finite, Interval(1.0, 2.0, 0.0, 10, "m")).estimate)
    assert rs.decide(rs.Bound("p99_ratio", "<=", 1.1), Interval(0.0, math.inf, 1.0, 1, "m")) == rs.UNDECIDED
    assert rs.decide(rs.Bound("p99_ratio", "<=", 1.1), Interval(1.2, math.inf, 1.3, 1, "m")) == rs.VIOLATED


def test_difference_interval_maps_back_to_minus_one_one():
    everything_fails = rs.difference_interval(np.ones(500, bool), np.zeros(500, bool), 0.05)
    assert everything_fails.estimate == 1.0 and 0.9 < everything_fails.lower <= everything_fails.upper == 1.0
    empty = rs.difference_interval(np.zeros(0, bool), np.zeros(0, bool), 0.05)
    assert (empty.lower, empty.upper) == (-1.0, 1.0) and math.isnan(empty.estimate)


def test_empty_route_is_undecided_everywhere():
    empty = rs.PairArrays(*(np.zeros(0) for _ in range(6)))
    stats = rs.route_statistics(empty, rs.DEFAULT_BOUNDS, rs.DEFAULT_ALPHA)
    assert [b.state for b in stats.bounds] == [rs.UNDECIDED] * 3
    assert stats.history == [] and stats.accuracy.labelled == 0 and stats.accuracy.mcnemar_p_fixed_n == 1.0


def test_accuracy_on_discordant_pairs():
    # 300 labelled rows: both right on 200, only the candidate on 80, only the primary on 20.
    primary = np.array([True] * 200 + [False] * 80 + [True] * 20)
    candidate = np.array([True] * 200 + [True] * 80 + [False] * 20)
    acc = rs.labelled_accuracy(primary, candidate, 0.05)
    assert (acc.labelled, acc.discordant, acc.candidate_right) == (300, 100, 80)
    assert acc.candidate_share_of_discordant.lower > 0.5 and acc.verdict == "candidate more accurate"
    assert acc.primary.estimate == pytest.approx(220 / 300) and acc.candidate.estimate == pytest.approx(280 / 300)
    assert rs.labelled_accuracy(candidate, primary, 0.05).verdict == "primary more accurate"
    rows = np.r_[190:200, 270:286]  # 10 both right, 10 only the candidate, 6 only the primary
    few = rs.labelled_accuracy(primary[rows], candidate[rows], 0.05)
    assert (few.discordant, few.candidate_right) == (16, 10)
    assert few.verdict == "no difference shown (16 discordant)"


def test_mcnemar_exact_matches_the_binomial_sum():
    # b = 1, c = 9: 2 * (1 + 10) / 2**10.
    assert rs.mcnemar_exact(1, 9) == pytest.approx(2 * 11 / 1024)
    assert rs.mcnemar_exact(5, 5) == 1.0 and rs.mcnemar_exact(0, 0) == 1.0
    assert 0 < rs.mcnemar_exact(4000, 6000) < 1e-50


def test_history_is_at_most_200_points_and_the_agreement_interval_is_its_last():
    stats = rs.route_statistics(_arrays(n=3000, agree=0.99), rs.DEFAULT_BOUNDS, 0.05)
    assert len(stats.history) == 200
    n, lower, upper, _ = stats.history[-1]
    assert (stats.agreement.n, stats.agreement.lower, stats.agreement.upper) == (n, lower, upper)


def test_latency_histogram_shares_edges():
    edges, p, c = rs.latency_histogram(np.array([0.01, 0.02, 0.04]), np.array([0.04, 0.08]), bins=4)
    assert len(edges) == 5 and sum(p) == 3 and sum(c) == 2
    assert rs.latency_histogram(np.zeros(0), np.zeros(0)) == ([], [], [])


def test_route_statistics_on_20000_rows_is_fast():
    a = _arrays(n=20000, agree=0.995, p_err=0.001, c_err=0.001)
    a.primary_right = np.random.default_rng(1).random(5000) < 0.9
    a.candidate_right = np.random.default_rng(2).random(5000) < 0.9
    rs.route_statistics(a, rs.DEFAULT_BOUNDS, rs.DEFAULT_ALPHA)
    start = time.perf_counter()
    rs.route_statistics(a, rs.DEFAULT_BOUNDS, rs.DEFAULT_ALPHA)
    assert time.perf_counter() - start < 0.5
