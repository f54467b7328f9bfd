"""experiments/significance.py against hand-computed values (closed forms of Student's t for 1 and
2 degrees of freedom, binomial sums, Holm by hand) and against SciPy on random inputs."""
import math
import random

import pytest

from experiments import significance as sig


def test_describe_by_hand():
    s = sig.describe([1, 2, 3, 4])
    assert (s.n, s.mean, s.min, s.max) == (4, 2.5, 1.0, 4.0)
    assert s.sd == pytest.approx(math.sqrt(5 / 3), rel=1e-15)  # (2.25 + 0.25 + 0.25 + 2.25) / 3
    one = sig.describe([7.5])
    assert (one.n, one.mean, one.sd) == (1, 7.5, None)
    with pytest.raises(ValueError, match="no values"):
        sig.describe([])
    with pytest.raises(ValueError, match="non-finite"):
        sig.describe([1.0, math.nan])


def test_t_distribution_closed_forms():
    for t in (0.0, 0.3, 1.0, 2.5, 12.0):
        # df = 1 (Cauchy): P(|T| >= t) = 1 − (2/π) atan t;  df = 2: 1 − t / sqrt(2 + t²)
        assert sig.t_sf_two_sided(t, 1) == pytest.approx(1 - 2 / math.pi * math.atan(t), rel=1e-13, abs=1e-15)
        assert sig.t_sf_two_sided(t, 2) == pytest.approx(1 - t / math.sqrt(2 + t * t), rel=1e-13, abs=1e-15)
    for p in (0.6, 0.9, 0.975, 0.995):
        # quantiles: df = 1: tan(π(p − 1/2)); df = 2: (2p − 1) / sqrt(2p(1 − p))
        assert sig.t_quantile(p, 1) == pytest.approx(math.tan(math.pi * (p - 0.5)), rel=1e-12)
        assert sig.t_quantile(p, 2) == pytest.approx((2 * p - 1) / math.sqrt(2 * p * (1 - p)), rel=1e-12)
    assert sig.t_sf_two_sided(math.inf, 3) == 0.0
    assert sig.chi2_sf_1(3.841458820694124) == pytest.approx(0.05, rel=1e-12)  # the 95 % point of chi2(1)


def test_paired_t_by_hand():
    # differences 1, 2, 3: mean 2, sd 1, t = 2 / (1/√3) = 2√3 on 2 df
    r = sig.paired_t([0.0, 0.0, 0.0], [1.0, 2.0, 3.0])
    assert (r.n, r.mean, r.sd, r.df) == (3, 2.0, 1.0, 2)
    assert r.t == pytest.approx(2 * math.sqrt(3), rel=1e-15)
    assert r.p == pytest.approx(1 - math.sqrt(12 / 14), rel=1e-12)
    half = 0.95 / math.sqrt(2 * 0.975 * 0.025) / math.sqrt(3)  # t_{0.975, 2} · sd / √n
    assert (r.ci_low, r.ci_high) == (pytest.approx(2 - half, rel=1e-12), pytest.approx(2 + half, rel=1e-12))
    # the 3-seed CIFAR grid quoted in issue 20: +0.92 / +0.31 / +0.24 -> mean +0.49, t = 2.27, p = 0.15,
    # 95 % CI [-0.44, +1.42]
    q = sig.paired_t([0, 0, 0], [0.92, 0.31, 0.24])
    assert (round(q.mean, 2), round(q.t, 2), round(q.p, 2), round(q.ci_low, 2), round(q.ci_high, 2)) == \
        (0.49, 2.27, 0.15, -0.44, 1.42)
    # direction: b − a
    assert sig.paired_t([1.0, 2.0, 3.0], [0.0, 0.0, 0.0]).mean == -2.0


def test_paired_t_degenerate_cases_and_errors():
    same = sig.paired_t([1.0, 2.0, 3.0], [1.5, 2.5, 3.5])  # every difference +0.5: sd 0
    assert (same.sd, same.p, same.ci_low, same.ci_high, same.t) == (0.0, 0.0, 0.5, 0.5, math.inf)
    zero = sig.paired_t([1.0, 2.0], [1.0, 2.0])
    assert (zero.p, zero.t, zero.ci_low, zero.ci_high) == (1.0, 0.0, 0.0, 0.0)
    single = sig.paired_t([1.0], [3.0])
    assert (single.mean, single.sd, single.p, single.ci_low) == (2.0, None, None, None)
    with pytest.raises(ValueError, match="3 values of a but 2 of b"):
        sig.paired_t([1, 2, 3], [1, 2])
    with pytest.raises(ValueError, match="level must be in"):
        sig.paired_t([1, 2], [2, 3], level=95)


def test_mcnemar_exact_and_chi_square_by_hand():
    # 10 examples only A gets right, 3 only B, 5 both: exact, p = 2 (C(13,0..3)) / 2^13 = 756 / 8192
    a = [1] * 10 + [0] * 3 + [1] * 5
    b = [0] * 10 + [1] * 3 + [1] * 5
    r = sig.mcnemar(a, b)
    assert (r.n, r.only_a, r.only_b, r.discordant, r.method, r.statistic) == (18, 10, 3, 13, "exact binomial", None)
    assert r.p == 756 / 8192
    assert sig.mcnemar(b, a).p == r.p  # symmetric
    # 24 discordant: still exact; 25: chi-square with continuity correction (|b − c| − 1)² / (b + c)
    assert sig.mcnemar([1] * 12 + [0] * 12, [0] * 12 + [1] * 12).method == "exact binomial"
    assert sig.mcnemar([1] * 12 + [0] * 12, [0] * 12 + [1] * 12).p == 1.0
    c = sig.mcnemar([1] * 30 + [0] * 15, [0] * 30 + [1] * 15)
    assert c.method == "chi-square, continuity corrected" and c.statistic == 196 / 45
    assert c.p == pytest.approx(math.erfc(math.sqrt(196 / 90)), rel=1e-15)
    assert sig.binom_two_sided(0, 0) == 1.0 and sig.binom_two_sided(0, 5) == 2 / 32
    with pytest.raises(ValueError, match="equally long"):
        sig.mcnemar([1, 0], [1])


def test_holm_by_hand():
    # sorted 0.01, 0.03, 0.04 of m = 3: 0.03, 0.06, max(0.06, 0.04) = 0.06; None stays out of the family
    assert sig.holm([0.01, 0.04, 0.03, None]) == [pytest.approx(0.03), pytest.approx(0.06), pytest.approx(0.06), None]
    assert sig.holm([0.5, 0.9]) == [1.0, 1.0]
    assert sig.holm([]) == []


def test_against_scipy_on_random_inputs():
    stats = pytest.importorskip("scipy.stats")
    rng = random.Random(0)
    for n in (2, 3, 5, 8, 30):
        a = [rng.gauss(70, 1) for _ in range(n)]
        b = [x + rng.gauss(0.3, 0.5) for x in a]
        r = sig.paired_t(a, b)
        ref = stats.ttest_rel(b, a)
        ci = ref.confidence_interval(0.95)
        assert r.t == pytest.approx(ref.statistic, rel=1e-10)
        assert r.p == pytest.approx(ref.pvalue, rel=1e-10)
        assert (r.ci_low, r.ci_high) == (pytest.approx(ci.low, rel=1e-10), pytest.approx(ci.high, rel=1e-10))
    for only_a, only_b in ((0, 7), (4, 9), (12, 12), (40, 22), (300, 260)):
        r = sig.mcnemar([1] * only_a + [0] * only_b, [0] * only_a + [1] * only_b)
        if only_a + only_b < sig.MCNEMAR_EXACT_BELOW:
            ref = stats.binomtest(only_a, only_a + only_b, 0.5).pvalue
        else:
            ref = stats.chi2.sf((abs(only_a - only_b) - 1) ** 2 / (only_a + only_b), 1)
        assert r.p == pytest.approx(ref, rel=1e-10)
