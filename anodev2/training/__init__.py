"""The training application of ``train_coupled.py``: configs, data, trainer, run files, TensorBoard views.

The engine (``anodev2.odeint``, ``anodev2.ODEBlock``, solvers, adjoints, weight evolution) does not import
this package; this package builds on the engine and on ``anodev2.models``.
"""
