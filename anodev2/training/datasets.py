"""The facts of every data set the training application knows, in one table.

Everything that depends on which data set a run uses (input channels and class count of the
network, image size, normalisation, whether horizontal flips are a valid augmentation, the
torchvision class and the arrays-file name ``data.root`` is searched for) is read from
:data:`DATASETS`; nothing else in the package guesses it from the name::

    from anodev2.training.datasets import DATASETS, dataset_info
    info = dataset_info("cifar100")     # DatasetInfo; ValueError naming the allowed names
    info.channels, info.classes, info.size, info.image_shape   # 3, 100, (32, 32), (3, 32, 32)
    info.mean, info.std, info.flip      # per-channel [0, 1] units; flips valid?
    info.arrays_file, info.torchvision  # "cifar100.npz", "CIFAR100"

A new data set is one more entry here (and, if torchvision does not have it, an arrays file).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

__all__ = ["DatasetInfo", "DATASETS", "dataset_info"]


@dataclass(frozen=True)
class DatasetInfo:
    """Facts of one data set.

    name: the ``data.name`` spelling. channels, classes: the network's input channels and outputs.
    size: (H, W) of every image. mean, std: per-channel normalisation in [0, 1] units (length
    ``channels``). flip: whether horizontal flips are a valid augmentation (not for digits).
    torchvision: class name in ``torchvision.datasets`` (None: not a torchvision set).
    arrays_file: the file name searched for in a ``data.root`` directory (None: generated in memory).
    """
    name: str
    channels: int
    classes: int
    size: tuple[int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    flip: bool = True
    torchvision: Optional[str] = None
    arrays_file: Optional[str] = None

    def __post_init__(self):
        if len(self.mean) != self.channels or len(self.std) != self.channels:
            raise ValueError(f"{self.name}: mean/std need {self.channels} entries")

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one image."""
        return (self.channels, *self.size)

    def torchvision_class(self):
        """The ``torchvision.datasets`` class (imports torchvision); ValueError when there is none."""
        if self.torchvision is None:
            raise ValueError(f"data set {self.name!r} is not a torchvision data set")
        import torchvision.datasets as tvd
        return getattr(tvd, self.torchvision)


#: data.name -> facts. CIFAR-10 normalisation as in the ANODE code; CIFAR-100's and MNIST's the usual values.
DATASETS: dict[str, DatasetInfo] = {d.name: d for d in (
    DatasetInfo("cifar10", 3, 10, (32, 32), (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010),
                torchvision="CIFAR10", arrays_file="cifar10.npz"),
    DatasetInfo("cifar100", 3, 100, (32, 32), (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762),
                torchvision="CIFAR100", arrays_file="cifar100.npz"),
    DatasetInfo("mnist", 1, 10, (28, 28), (0.1307,), (0.3081,), flip=False,
                torchvision="MNIST", arrays_file="mnist.npz"),
    # CIFAR-shaped, generated in memory (data.py): the pipeline without any download
    DatasetInfo("synthetic", 3, 10, (32, 32), (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)),
)}


def dataset_info(name: str) -> DatasetInfo:
    """The facts of ``name``; ValueError naming the allowed names for an unknown one."""
    try:
        return DATASETS[name]
    except (KeyError, TypeError):
        raise ValueError(f"data.name={name!r} is not allowed; allowed: {' | '.join(DATASETS)}") from None
