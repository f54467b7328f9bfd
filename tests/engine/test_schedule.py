"""Binomial checkpoint schedules, tested on their own (pure Python) against the recursion."""
from functools import lru_cache

import pytest

from anodev2.adjoint.schedule import (Advance, Free, Reverse, binomial_cost, optimal_split, revolve_schedule,
                                      slots_for)


@lru_cache(maxsize=None)
def t_rec(n: int, c: int) -> int:
    """DESIGN.md's recursion, written independently of the implementation."""
    if n == 1:
        return 0
    if c == 0:
        return n * (n - 1) // 2
    return min(m + t_rec(n - m, c - 1) + t_rec(m, c) for m in range(1, n))


def simulate(n: int, c: int):
    """Execute a schedule symbolically; return (advanced steps, peak slots, reverse order)."""
    held = {0}
    stored: set[int] = set()
    peak = advanced = 0
    order = []
    transient = None
    for a in revolve_schedule(n, c):
        if isinstance(a, Advance):
            assert a.start in held, f"advance from a state that is not held: {a}"
            assert a.start < a.stop <= n - 1
            advanced += a.stop - a.start
            held.add(a.stop)
            if a.store:
                stored.add(a.stop)
                peak = max(peak, len(stored))
            else:
                transient = a.stop
        elif isinstance(a, Reverse):
            assert a.step in held, f"reverse of step {a.step} whose input is not held"
            assert not order or a.step == order[-1] - 1, "reversals must run n-1, ..., 0"
            if transient is not None:
                assert a.step == transient, "a transient state must be consumed by the next reversal"
                transient = None
            order.append(a.step)
        else:
            assert isinstance(a, Free) and a.index in held and a.index != 0
            held.discard(a.index)
            stored.discard(a.index)
    assert held == {0}, "every state but the input is released at the end"
    return advanced, peak, order


@pytest.mark.parametrize("c", range(0, 9))
def test_cost_matches_recursion(c):
    for n in range(1, 61):
        assert binomial_cost(n, c) == t_rec(n, c), (n, c)


@pytest.mark.parametrize("c", range(0, 9))
def test_schedule_attains_optimum_within_slots(c):
    for n in range(1, 61):
        advanced, peak, order = simulate(n, c)
        assert advanced == t_rec(n, c), (n, c)
        assert peak <= c
        assert order == list(range(n - 1, -1, -1))


def test_split_is_optimal():
    for n in range(2, 40):
        for c in range(1, 6):
            m = optimal_split(n, c)
            assert m + t_rec(n - m, c - 1) + t_rec(m, c) == t_rec(n, c)


def test_known_values_and_limits():
    assert binomial_cost(16, 4) == t_rec(16, 4)
    # enough slots: every step is recomputed exactly once (except the last)
    assert all(binomial_cost(n, n - 1) == n - 1 for n in range(1, 50))
    assert slots_for(10, None) == 9 and slots_for(10, 50) == 9 and slots_for(10, 3) == 3
    # large problems are fast and do not recurse deeply
    assert binomial_cost(5000, 4999) == 4999
    assert len(revolve_schedule(3000, None or 2999)) > 0


@pytest.mark.parametrize("n,c", [(0, 1), (3, -1), (2.0, 1), (True, 1)])
def test_bad_arguments(n, c):
    with pytest.raises(ValueError, match="must be an int"):
        binomial_cost(n, c)


def test_first_sweep_is_the_prefix_before_the_first_reversal():
    from anodev2.adjoint.schedule import first_sweep

    assert first_sweep(5, 4) == [1, 2, 3, 4]
    assert first_sweep(1, 0) == []
    for n in range(1, 40):
        for c in range(0, 6):
            sweep = first_sweep(n, c)
            assert sweep == sorted(sweep) and (not sweep or sweep[-1] == n - 1)
