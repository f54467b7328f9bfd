#!/usr/bin/env python3
"""Train a coupled neural ODE network (ANODE / ANODEV2).

    python train_coupled.py --config NAME_OR_PATH [key=value ...] [--resume RUN_DIR]
    torchrun --nproc_per_node=N train_coupled.py --config NAME_OR_PATH [key=value ...]

Configs live in anodev2/training/configs/ (aconnect, baseline, neuralode, anode, smoke, ...);
``--help`` lists them and every key. See docs/TRAINING.md and anodev2/train.py.
"""
import sys

from anodev2.training.trainer import main

if __name__ == "__main__":
    sys.exit(main())
