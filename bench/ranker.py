"""Ranker benchmark: Bradley-Terry fit + 1000 bootstrap rounds on 100,000 matches among 100 models,
against scikit-learn's LogisticRegression fitted on each round (the usual arena approach), in the same
run and on the same resamples → docs/BENCHMARKS.md.

    python bench/ranker.py [--rounds 1000] [--baseline-rounds 1000]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.report import git_rev, machine, write_section  # noqa: E402
from services.ranker import bt  # noqa: E402

K, N, RIDGE, SEED = 100, 100_000, 1e-4, 0


def synthetic() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(SEED)
    strength = rng.normal(0, 1, K)
    a = rng.integers(0, K, N)
    b = (a + rng.integers(1, K, N)) % K
    p = 1 / (1 + np.exp(strength[b] - strength[a]))
    outcome = np.where(rng.random(N) < 0.05, 3, np.where(rng.random(N) < p, 1, 2))
    return a, b, outcome


def resamples(a: np.ndarray, b: np.ndarray, o: np.ndarray, rounds: int) -> np.ndarray:
    """The bootstrap's resampled win matrices (same draws as bt.bootstrap with this seed)."""
    rng = np.random.default_rng(SEED)
    code = (a * K + b) * 3 + (o - 1)
    uniq, inverse = np.unique(code, return_inverse=True)
    base = np.bincount(inverse).astype(float)
    ua, rest = np.divmod(uniq, 3 * K)
    ub, uo = np.divmod(rest, 3)
    counts = rng.multinomial(N, base / base.sum(), size=rounds)
    return np.stack([bt.win_matrix(ua, ub, uo + 1, K, c.astype(float)) for c in counts])


def arena_ratings(w: np.ndarray, anchor: int = 0) -> np.ndarray:
    """Chatbot Arena's fit (lm-sys/FastChat fastchat/serve/monitor/rating_systems.py): one row per
    (winner, loser) pair with its count as sample weight, mirrored; features scaled by ln 10 so the
    coefficients are log10 odds; rating = 400 * coef + 1000, shifted so ``anchor`` rates 1000.
    The same ridge on natural-log strengths (beta = ln 10 * coef) is C = 1 / (ridge * ln(10)^2)."""
    from sklearn.linear_model import LogisticRegression

    i, j = np.nonzero(w)
    x = np.zeros((len(i), K))
    x[np.arange(len(i)), i] = np.log(10)
    x[np.arange(len(i)), j] = -np.log(10)
    lr = LogisticRegression(fit_intercept=False, C=1 / (RIDGE * np.log(10) ** 2), tol=1e-10, max_iter=10_000)
    lr.fit(np.vstack([x, -x]), np.r_[np.ones(len(i)), np.zeros(len(i))], sample_weight=np.r_[w[i, j], w[i, j]] / 2)
    rating = 400 * lr.coef_[0] + 1000
    return rating - rating[anchor] + 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=1000)
    parser.add_argument("--baseline-rounds", type=int, default=1000,
                        help="rounds the baseline fits (per-round time is what is compared)")
    args = parser.parse_args()
    a, b, o = synthetic()

    t0 = time.perf_counter()
    ours = bt.bootstrap(a, b, o, K, rounds=args.rounds, seed=SEED, ridge=RIDGE, anchor=0)
    ours_s = time.perf_counter() - t0

    ws = resamples(a, b, o, args.baseline_rounds)
    t0 = time.perf_counter()
    w_full = bt.win_matrix(a, b, o, K)
    base_point = arena_ratings(w_full)
    base_boot = np.stack([arena_ratings(w) for w in ws])
    base_s = time.perf_counter() - t0
    base_per_round = base_s / (args.baseline_rounds + 1)
    base_total = base_per_round * (args.rounds + 1)
    speedup = base_total / ours_s

    point_diff = float(np.abs(ours.rating - base_point).max())
    ours_boot_same = bt.to_ratings(bt.fit_batch(ws, RIDGE, bt.fit(w_full, RIDGE)), 0)
    boot_diff = float(np.abs(ours_boot_same - base_boot).max())
    lo, hi = np.percentile(base_boot, [2.5, 97.5], axis=0)
    ci_diff = float(max(np.abs(lo - ours.ci_low).max(), np.abs(hi - ours.ci_high).max())) \
        if args.baseline_rounds == args.rounds else float("nan")

    lines = [
        "## Ranker: Bradley-Terry + bootstrap (100,000 matches, 100 models)",
        "",
        f"Command: `python bench/ranker.py --rounds {args.rounds} --baseline-rounds {args.baseline_rounds}` "
        f"(commit {git_rev()}). Machine: {machine()}.",
        "Synthetic matches from known strengths (5% ties, counted half), ridge 1e-4 on natural-log strengths in both "
        "fits (sklearn on ln 10-scaled features, C = 1/(ridge·ln²10)); both report the Elo / Chatbot Arena scale "
        "1000 + 400·log10 odds.",
        "",
        "| method | time for fit + bootstrap rounds | per round |",
        "|---|---:|---:|",
        f"| Versus (`services/ranker/bt.py`: aggregated Newton, batched, warm-started) | {ours_s:.2f} s | "
        f"{1e3 * ours_s / (args.rounds + 1):.2f} ms |",
        "| scikit-learn LogisticRegression per round (Chatbot Arena's fit; measured on "
        f"{args.baseline_rounds} rounds) | "
        f"{base_total:.1f} s | {1e3 * base_per_round:.1f} ms |",
        "",
        f"- Speed-up: {speedup:.1f}×** (target ≥ 10×).",
        f"- Point ratings, max |difference|: {point_diff:.2e} rating points (target ≤ 1e-3).",
        f"- Same resampled rounds fitted both ways, max |difference|: {boot_diff:.2e} rating points"
        + (f"; 95% interval bounds differ by at most {ci_diff:.2e}." if ci_diff == ci_diff else "."),
    ]
    write_section("ranker", "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
