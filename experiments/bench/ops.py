"""Counting the aten operators a computation launches (torch.profiler, CPU)."""
from __future__ import annotations

from typing import Callable

#: aten ops that only make views or read metadata (no kernel launch on a GPU).
VIEW_OPS = frozenset({"view", "reshape", "_reshape_alias", "unsqueeze", "squeeze", "t", "transpose", "permute",
                      "split", "split_with_sizes", "narrow", "slice", "select", "as_strided", "expand", "detach",
                      "_unsafe_view", "alias", "lift_fresh", "empty", "empty_like", "result_type", "unbind",
                      "resolve_conj", "resolve_neg", "is_nonzero", "item", "_local_scalar_dense", "numpy_T"})


def aten_ops(fn: Callable[[], object]) -> tuple[list[str], list[str]]:
    """Run ``fn`` once under the CPU profiler; (every aten op name, the compute ops among them:
    those not in :data:`VIEW_OPS`), in call order, without the ``aten::`` prefix."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    names = [e.name.split("::", 1)[1] for e in prof.events() if e.name.startswith("aten::")]
    return names, [n for n in names if n not in VIEW_OPS]


def self_cpu_by_op(fn: Callable[[], object], repeats: int) -> dict[str, tuple[float, float]]:
    """Profile ``repeats`` calls of ``fn``; ``{op: (self CPU ms per call, calls per call)}``."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(repeats):
            fn()
    return {e.key: (e.self_cpu_time_total / 1e3 / repeats, e.count / repeats) for e in prof.key_averages()}
