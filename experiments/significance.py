"""Statistics of paired seed grids: summaries, the paired t interval, McNemar's test, Holm.

Pure Python (``math`` only: no torch, numpy or scipy), so the numbers a grid's summary reports
depend on nothing but its inputs; tests/experiments/test_significance.py checks every function
against hand-computed values and SciPy.

* :func:`describe`  -- n, mean, sample standard deviation (n − 1), min, max;
* :func:`paired_t`  -- mean of paired differences ``b − a``, its 95 % confidence interval from
  Student's t with n − 1 degrees of freedom, and the two-sided p of H0: mean difference = 0;
* :func:`mcnemar`   -- two classifiers on the same test examples: discordant counts and the
  two-sided p of H0: both err equally often. Exact binomial test when the discordant count is
  below :data:`MCNEMAR_EXACT_BELOW` (25), else the chi-square statistic with continuity
  correction ``(|b − c| − 1)² / (b + c)`` on 1 degree of freedom; the result names its method;
* :func:`holm`      -- Holm's step-down adjustment of several p-values (family-wise error).

The special functions are written from their definitions: the regularised incomplete beta
function by its continued fraction (evaluated with the modified Lentz method) gives Student's t
distribution, ``erfc`` gives chi-square with one degree of freedom, and t quantiles come from
bisection on the distribution function.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence

__all__ = ["Summary", "PairedDifference", "McNemar", "MCNEMAR_EXACT_BELOW", "describe", "paired_t",
           "mcnemar", "holm", "t_sf_two_sided", "t_quantile", "chi2_sf_1", "binom_two_sided"]

#: McNemar's test is exact (binomial) when the number of discordant examples is below this.
MCNEMAR_EXACT_BELOW = 25


@dataclass(frozen=True)
class Summary:
    """n values: mean, sample standard deviation (None for n < 2), min, max."""

    n: int
    mean: float
    sd: Optional[float]
    min: float
    max: float


@dataclass(frozen=True)
class PairedDifference:
    """Paired differences d_i = b_i − a_i: their mean, sample sd, the ``level`` confidence
    interval ``mean ± t_{1−α/2, n−1} · sd / √n`` and the two-sided p-value of H0: E[d] = 0
    (None where n < 2; for sd = 0 the interval is the point and p is 0 or 1)."""

    n: int
    mean: float
    sd: Optional[float]
    t: Optional[float]
    df: Optional[int]
    p: Optional[float]
    ci_low: Optional[float]
    ci_high: Optional[float]
    level: float = 0.95


@dataclass(frozen=True)
class McNemar:
    """Two classifiers A and B on the same n examples. ``only_a``: examples A gets right and B
    wrong; ``only_b``: the reverse. ``method`` is "exact binomial" or "chi-square, continuity
    corrected"; ``statistic`` the chi-square value (None for the exact test)."""

    n: int
    only_a: int
    only_b: int
    p: float
    method: str
    statistic: Optional[float] = None

    @property
    def discordant(self) -> int:
        return self.only_a + self.only_b


def _finite(values: Sequence[float], what: str) -> list[float]:
    vals = [float(v) for v in values]
    if not vals:
        raise ValueError(f"{what}: no values")
    if not all(math.isfinite(v) for v in vals):
        raise ValueError(f"{what}: non-finite value in {vals}")
    return vals


def describe(values: Sequence[float]) -> Summary:
    """n, mean, sample sd (divisor n − 1; None for one value), min and max of ``values``."""
    vals = _finite(values, "describe")
    n = len(vals)
    mean = math.fsum(vals) / n
    sd = math.sqrt(math.fsum((v - mean) ** 2 for v in vals) / (n - 1)) if n > 1 else None
    return Summary(n, mean, sd, min(vals), max(vals))


# ----------------------------------------------------------------------------- distributions
def _betacf(a: float, b: float, x: float) -> float:
    """The continued fraction of I_x(a, b): 1 / (1 + d1 / (1 + d2 / (1 + ...))) with
    d_{2m+1} = −(a+m)(a+b+m)x / ((a+2m)(a+2m+1)), d_{2m} = m(b−m)x / ((a+2m−1)(a+2m)),
    evaluated by the modified Lentz method."""
    tiny = 1e-300
    f = tiny
    c, d = f, 0.0
    for k in range(0, 2000):
        if k == 0:
            coef = 1.0
        elif k % 2 == 1:
            m = (k - 1) // 2
            coef = -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))
        else:
            m = k // 2
            coef = m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m))
        d = 1.0 + coef * d
        d = tiny if abs(d) < tiny else d
        c = 1.0 + coef / c
        c = tiny if abs(c) < tiny else c
        d = 1.0 / d
        step = c * d
        f *= step
        if k > 0 and abs(step - 1.0) < 1e-15:
            return f
    raise ArithmeticError(f"incomplete beta continued fraction did not converge (a={a}, b={b}, x={x})")


def _betainc(a: float, b: float, x: float) -> float:
    """The regularised incomplete beta function I_x(a, b) for a, b > 0, 0 <= x <= 1."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    if x > (a + 1.0) / (a + b + 2.0):  # the fraction converges fast on this side only
        return 1.0 - _betainc(b, a, 1.0 - x)
    log_front = a * math.log(x) + b * math.log1p(-x) - (math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b))
    return math.exp(log_front) / a * _betacf(a, b, x)


def t_sf_two_sided(t: float, df: int) -> float:
    """P(|T| >= |t|) for Student's T with ``df`` degrees of freedom: I_{df/(df+t²)}(df/2, 1/2)."""
    if df < 1:
        raise ValueError(f"df must be >= 1, got {df}")
    if math.isinf(t):
        return 0.0
    return _betainc(df / 2.0, 0.5, df / (df + t * t))


def t_quantile(prob: float, df: int) -> float:
    """The ``prob`` quantile (0.5 < prob < 1) of Student's t with ``df`` degrees of freedom,
    by bisection on :func:`t_sf_two_sided` (monotone in |t|) to float resolution."""
    if not 0.5 < prob < 1.0:
        raise ValueError(f"prob must be in (0.5, 1), got {prob}")
    target = 2.0 * (1.0 - prob)
    lo, hi = 0.0, 1.0
    while t_sf_two_sided(hi, df) > target:
        hi *= 2.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if t_sf_two_sided(mid, df) > target:
            lo = mid
        else:
            hi = mid
        if hi - lo <= 1e-15 * hi:
            break
    return 0.5 * (lo + hi)


def chi2_sf_1(x: float) -> float:
    """P(X >= x) for chi-square with 1 degree of freedom: erfc(√(x/2))."""
    return 1.0 if x <= 0 else math.erfc(math.sqrt(x / 2.0))


def binom_two_sided(k: int, n: int) -> float:
    """Two-sided exact p of k successes in n Bernoulli(1/2) trials: min(1, 2·P(X <= min(k, n − k)))."""
    if not 0 <= k <= n:
        raise ValueError(f"need 0 <= k <= n, got k={k}, n={n}")
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(k, n - k) + 1))
    return min(1.0, 2 * tail / 2 ** n)


# ----------------------------------------------------------------------------- tests
def paired_t(a: Sequence[float], b: Sequence[float], level: float = 0.95) -> PairedDifference:
    """Paired t analysis of ``b − a`` (one pair per seed): mean difference, its ``level``
    confidence interval and the two-sided p of H0: mean difference = 0.

    Raises:
        ValueError: different lengths, no pairs, non-finite values or ``level`` outside (0, 1).
    """
    if len(a) != len(b):
        raise ValueError(f"paired_t: {len(a)} values of a but {len(b)} of b (one pair per seed)")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    d = [y - x for x, y in zip(_finite(a, "paired_t a"), _finite(b, "paired_t b"))]
    s = describe(d)
    if s.n < 2:
        return PairedDifference(s.n, s.mean, None, None, None, None, None, None, level)
    df = s.n - 1
    if s.sd == 0.0:
        return PairedDifference(s.n, s.mean, 0.0, math.copysign(math.inf, s.mean) if s.mean else 0.0, df,
                                0.0 if s.mean else 1.0, s.mean, s.mean, level)
    se = s.sd / math.sqrt(s.n)
    t = s.mean / se
    half = t_quantile(0.5 + level / 2.0, df) * se
    return PairedDifference(s.n, s.mean, s.sd, t, df, t_sf_two_sided(t, df), s.mean - half, s.mean + half, level)


def mcnemar(correct_a: Sequence[bool], correct_b: Sequence[bool]) -> McNemar:
    """McNemar's test of two classifiers on the same examples (``correct_x[i]``: classifier x
    got example i right). Exact binomial below :data:`MCNEMAR_EXACT_BELOW` discordant examples,
    else chi-square with continuity correction (1 df).

    Raises:
        ValueError: the two sequences differ in length or are empty.
    """
    if len(correct_a) != len(correct_b) or not len(correct_a):
        raise ValueError(f"mcnemar: need two equally long, non-empty sequences, got {len(correct_a)} "
                         f"and {len(correct_b)}")
    only_a = sum(1 for x, y in zip(correct_a, correct_b) if x and not y)
    only_b = sum(1 for x, y in zip(correct_a, correct_b) if y and not x)
    n_disc = only_a + only_b
    if n_disc < MCNEMAR_EXACT_BELOW:
        return McNemar(len(correct_a), only_a, only_b, binom_two_sided(only_a, n_disc), "exact binomial")
    stat = (abs(only_a - only_b) - 1) ** 2 / n_disc
    return McNemar(len(correct_a), only_a, only_b, chi2_sf_1(stat), "chi-square, continuity corrected", stat)


def holm(pvalues: Sequence[Optional[float]]) -> list[Optional[float]]:
    """Holm's step-down adjusted p-values (same order; None entries are left out of the family
    and stay None): the i-th smallest of m is multiplied by (m − i + 1), made monotone, capped at 1."""
    idx = sorted((i for i, p in enumerate(pvalues) if p is not None), key=lambda i: pvalues[i])
    m = len(idx)
    out: list[Optional[float]] = [None] * len(pvalues)
    running = 0.0
    for rank, i in enumerate(idx):
        running = max(running, min(1.0, (m - rank) * pvalues[i]))
        out[i] = running
    return out
