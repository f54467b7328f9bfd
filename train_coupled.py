#!/usr/bin/env python3
"""Train a coupled neural ODE network (ANODE / ANODEV2): the thin entry point of anodev2.training.cli.

    python train_coupled.py --config NAME_OR_PATH [KEY=VALUE ...] [--resume RUN_DIR]
    torchrun --nproc_per_node=N train_coupled.py --config NAME_OR_PATH [KEY=VALUE ...]

Configs ship in anodev2/training/configs/ (aconnect, baseline, neuralode, anode, smoke, ...);
``--help`` lists them, every key and the exit statuses. See docs/TRAINING.md.
"""
import sys

from anodev2.training.cli import main

if __name__ == "__main__":
    sys.exit(main())
