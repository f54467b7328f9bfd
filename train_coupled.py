#!/usr/bin/env python3
"""Train a coupled neural ODE network (ANODE / ANODEV2): the thin entry point of anodev2.training.cli.

    python train_coupled.py --config NAME_OR_PATH [KEY=VALUE ...] [--resume RUN_DIR]
    torchrun --nproc_per_node=N train_coupled.py --config NAME_OR_PATH [KEY=VALUE ...]

Configs ship in anodev2/training/configs/ (aconnect, baseline, neuralode, anode, smoke, ...);
``--help`` lists them, every key and the exit statuses. See docs/TRAINING.md.
"""
import signal
import sys


def _terminated_while_starting(signum, frame):
    """SIGTERM before the CLI installs its own handler (while torch is imported): one line, exit 143."""
    print("terminated: while starting; no checkpoint was written", file=sys.stderr, flush=True)
    raise SystemExit(143)


if __name__ == "__main__":
    if signal.getsignal(signal.SIGTERM) is not signal.SIG_IGN:
        signal.signal(signal.SIGTERM, _terminated_while_starting)
    from anodev2.training.cli import main

    sys.exit(main())
