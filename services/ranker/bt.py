"""Bradley-Terry ratings from pairwise outcomes (pure numpy; no gRPC, no storage).

Model: P(i beats j) = sigmoid(beta_i - beta_j). Ties count half a win for each side. The fit
maximises the log-likelihood of the aggregated win matrix W (W[i, j] = wins of i over j) with a tiny
L2 penalty (``ridge``), which fixes the free additive constant (sum(beta) = 0 at the optimum), keeps
the estimate finite for a model that never lost, and centres each disconnected component on 0.
Newton's method on the K x K problem converges in a handful of steps, so the cost does not grow with
the number of matches: bootstrap rounds only re-aggregate resampled matches into W.

Ratings are on the Elo / Chatbot Arena scale: ``1000 + 400 * log10(odds)``. The strengths ``beta`` are
natural-log odds, so a rating is ``1000 + 400 * beta / ln 10``, shifted so the anchor model rates 1000:
a 400-point gap means 10:1 odds (as in lm-sys/FastChat ``fastchat/serve/monitor/rating_systems.py``,
which fits with logit ``ln(10) * (r_a - r_b)`` and reports ``400 * r + 1000``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

#: Rating points per unit of log10 odds: a 400-point gap means 10:1.
ELO_POINTS = 400.0
#: Rating points per unit of natural-log strength beta (400 / ln 10 ≈ 173.7).
SCALE = ELO_POINTS / math.log(10.0)
BASE = 1000.0


def win_matrix(a: np.ndarray, b: np.ndarray, outcome: np.ndarray, k: int,
               weights: np.ndarray | None = None) -> np.ndarray:
    """Aggregate matches into W (k x k). ``outcome``: 1 = a wins, 2 = b wins, 3 = tie."""
    w = np.ones(len(a)) if weights is None else weights
    a_score = np.where(outcome == 1, 1.0, np.where(outcome == 3, 0.5, 0.0)) * w
    b_score = w - a_score
    flat = (np.bincount(a * k + b, weights=a_score, minlength=k * k)
            + np.bincount(b * k + a, weights=b_score, minlength=k * k))
    return flat.reshape(k, k)


def fit(w: np.ndarray, ridge: float = 1e-4, beta0: np.ndarray | None = None, max_iter: int = 50) -> np.ndarray:
    """Penalised maximum-likelihood strengths beta for win matrix ``w`` (Newton's method)."""
    return fit_batch(w[None], ridge, np.zeros(w.shape[0]) if beta0 is None else beta0, max_iter)[0]


def fit_batch(ws: np.ndarray, ridge: float, beta0: np.ndarray, max_iter: int = 50) -> np.ndarray:
    """``fit`` for a stack of win matrices (R x k x k) at once, warm-started from ``beta0``.

    Stops when every gradient entry is below 1e-9 per match a model played (relative to the data,
    since the near-flat direction that the ridge pins down amplifies rounding in the step).
    """
    r, k, _ = ws.shape
    n = ws + ws.transpose(0, 2, 1)
    beta = np.repeat(np.asarray(beta0, dtype=float)[None, :], r, axis=0)
    wins = ws.sum(axis=2)
    eye = np.eye(k)[None]
    tol = 1e-9 * np.maximum(1.0, n.sum(axis=2))
    for _ in range(max_iter):
        p = 1.0 / (1.0 + np.exp(beta[:, None, :] - beta[:, :, None]))  # p[r, i, j] = P(i beats j)
        grad = wins - (n * p).sum(axis=2) - ridge * beta
        if np.all(np.abs(grad) <= tol):
            break
        c = n * p * (1.0 - p)
        hess = c.sum(axis=2)[:, :, None] * eye - c + ridge * eye  # negative Hessian: positive definite
        beta += np.linalg.solve(hess, grad[:, :, None])[:, :, 0]
    return beta


def components(w: np.ndarray) -> list[list[int]]:
    """Connected components of the match graph (models that played each other, directly or not)."""
    k = w.shape[0]
    adj = (w + w.T) > 0
    seen = np.zeros(k, dtype=bool)
    out = []
    for start in range(k):
        if seen[start]:
            continue
        stack, comp = [start], []
        seen[start] = True
        while stack:
            node = stack.pop()
            comp.append(node)
            for nxt in np.flatnonzero(adj[node] & ~seen):
                seen[nxt] = True
                stack.append(int(nxt))
        out.append(sorted(comp))
    return out


@dataclass(frozen=True)
class Ratings:
    """Ratings with bootstrap percentile intervals, index-aligned with the model list."""

    rating: np.ndarray
    ci_low: np.ndarray
    ci_high: np.ndarray
    rank: np.ndarray  # 1 = best; models whose intervals overlap share a rank
    rounds: int


def to_ratings(beta: np.ndarray, anchor: int | None) -> np.ndarray:
    """1000 + 400 * log10(odds) = 1000 + (400 / ln 10) * beta, shifted so the anchor rates exactly 1000
    (no anchor: mean 1000)."""
    ref = beta[..., anchor] if anchor is not None else beta.mean(axis=-1)
    return SCALE * (beta - np.expand_dims(ref, -1)) + BASE


def ranks(low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """Rank = 1 + number of models whose whole interval lies above this model's interval."""
    return 1 + (low[None, :] > high[:, None]).sum(axis=1)


def bootstrap(a: np.ndarray, b: np.ndarray, outcome: np.ndarray, k: int, *, rounds: int = 1000, seed: int = 0,
              ridge: float = 1e-4, anchor: int | None = None, chunk: int = 100) -> Ratings:
    """Point ratings on all matches plus 95% percentile intervals from ``rounds`` resamples."""
    beta = fit(win_matrix(a, b, outcome, k), ridge)
    point = to_ratings(beta, anchor)
    if rounds <= 0 or len(a) == 0:
        return Ratings(point, point.copy(), point.copy(), np.ones(k, dtype=int), 0)
    rng = np.random.default_rng(seed)
    # Each distinct (a, b, outcome) triple is one category; a resample is a multinomial draw of counts.
    code = (a * k + b) * 3 + (outcome - 1)
    uniq, inverse = np.unique(code, return_inverse=True)
    base_counts = np.bincount(inverse, minlength=len(uniq)).astype(float)
    ua, rest = np.divmod(uniq, 3 * k)
    ub, uo = np.divmod(rest, 3)
    samples = []
    for start in range(0, rounds, chunk):
        size = min(chunk, rounds - start)
        counts = rng.multinomial(len(a), base_counts / base_counts.sum(), size=size)
        ws = np.stack([win_matrix(ua, ub, uo + 1, k, c.astype(float)) for c in counts])
        samples.append(to_ratings(fit_batch(ws, ridge, beta), anchor))
    boot = np.concatenate(samples)
    low, high = np.percentile(boot, [2.5, 97.5], axis=0)
    return Ratings(point, low, high, ranks(low, high), rounds)
