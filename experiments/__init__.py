"""The project's experiments: scripts researchers run, and the helpers they share.

Scripts (each one ``main(argv)``; run from the repository root either way)::

    python experiments/NAME.py ARGS        # by path
    python -m experiments.NAME ARGS        # as a module

Both work because ``experiments`` is a package installed with the project (``pip install -e .``
maps it to this folder, see pyproject.toml), so a script run by path imports its helpers as
``experiments.…`` like any other module; nothing edits ``sys.path``. Tests import scripts the
same way (``import experiments.ablate``).

Helpers (imported by scripts, never run):

* :mod:`experiments.bench` -- the measurement harness: ``block`` (one ODE block per gradient
  mode in fresh subprocesses), ``memory`` (peak RSS, allocator settings), ``timing`` (timed
  steps), ``ops`` (aten-op counting), ``args`` (the shared command-line options);
* :mod:`experiments.output` -- CSV / PNG / number formatting written once;
* :mod:`experiments.significance` -- paired statistics of seed grids (paired t interval,
  McNemar, Holm), pure Python;
* :mod:`experiments.trained` -- reading a trained run (``anodev2.training.runs.load_run`` with the
  scripts' ``error:`` exit);
* :mod:`experiments.grid` -- running a grid of training runs resumably (local or submitit);
* :mod:`experiments.predictions` -- per-example test predictions of a finished run, evolution
  on and off (also ``python -m experiments.predictions RUN``).

No script imports another script: what two scripts share lives in a helper module.
"""
