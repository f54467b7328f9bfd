"""The measurement harness of the benchmark scripts (bench_adjoint, memory_time_study,
bench_models, grad_accuracy), split by job:

* :mod:`.block`  -- one ODE block differentiated per gradient mode (ours and torchdiffeq's),
  each row measured in fresh subprocesses (``python -m experiments.bench.block --worker``);
* :mod:`.memory` -- peak resident memory and glibc allocator settings;
* :mod:`.timing` -- timed training steps (wall and process CPU time, medians);
* :mod:`.ops`    -- aten-operator counts of a profiled callable;
* :mod:`.args`   -- the command-line options the block benchmarks share.

CSV / figure output is :mod:`experiments.output` (shared with the non-benchmark scripts).
"""
