"""Data sets held in memory as uint8 tensors, with batch-level augmentation.

Every supported data set (CIFAR-10/100, MNIST, synthetic) is loaded once into an
:class:`ArrayDataset` (``images`` uint8 [N, C, H, W], ``labels`` int64 [N]).
:class:`BatchLoader` then yields normalised float batches. Data order and
augmentation depend only on ``(seed, epoch, rank, batch index)``, so a run resumed
after epoch k sees exactly the batches an uninterrupted run would, with or
without worker processes.

Where CIFAR comes from, in this order (``root`` = ``data.root``, default
``$ANODEV2_DATA`` or ``./data``):

1. an arrays file: ``root`` itself when it names a ``.npz`` file, else ``root/cifar10.npz``
   (``cifar100.npz``, ``mnist.npz``: ``arrays_file`` in :data:`datasets.DATASETS`, the one table of
   channels, image size, classes and normalisation every set is checked against), with keys ``x_train`` uint8 [N, H, W, C] or [N, H, W],
   ``y_train``, ``x_test``, ``y_test`` (e.g. written by a ``make_cifar10_npz.py`` script
   from a CIFAR-10 PNG copy);
2. torchvision's layout in ``root`` (``download=False``);
3. a torchvision download into ``root`` (when ``data.download``; network errors are caught and
   the directories a failed download created are removed again);
4. otherwise :class:`DataNotFoundError` saying where it looked and how to provide the data.

An unreadable, truncated, corrupt or wrongly shaped arrays file raises :class:`DataError`.
"""
from __future__ import annotations

import errno
import os
import stat
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

import numpy as np
import torch

from .datasets import DATASETS, DatasetInfo, dataset_info

__all__ = ["ArrayDataset", "DataError", "DataNotFoundError", "BatchLoader", "load_datasets", "default_root",
           "augment_batch", "seed_for", "check_pair"]

SYNTHETIC_SIZES = (1024, 256)  # train, test images of the synthetic set


class DataError(ValueError):
    """Data that cannot be used (unreadable or malformed arrays file); the message names the file and the fix."""


class DataNotFoundError(DataError):
    """The data set is neither in ``root`` nor downloadable; the message says how to provide it."""


@dataclass
class ArrayDataset:
    """An in-memory image classification set.

    images: uint8 [N, C, H, W]; labels: int64 [N]; mean/std: per-channel normalisation
    (length C, [0, 1] units); flip: whether horizontal flips are a valid augmentation.
    """
    images: torch.Tensor
    labels: torch.Tensor
    num_classes: int
    mean: tuple
    std: tuple
    flip: bool = True
    source: str = ""

    def __post_init__(self):
        if self.images.dtype != torch.uint8 or self.images.dim() != 4:
            raise ValueError(f"images must be uint8 [N, C, H, W], got {self.images.dtype} {tuple(self.images.shape)}")
        if self.labels.shape != (self.images.shape[0],):
            raise ValueError(f"labels must have shape [{self.images.shape[0]}], got {tuple(self.labels.shape)}")
        self.labels = self.labels.long()

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def in_channels(self) -> int:
        return self.images.shape[1]

    def subset(self, n: Optional[int], seed: int) -> "ArrayDataset":
        """``n`` images chosen by a generator seeded with ``seed`` (kept in original order); all if n is None."""
        if n is None or n >= len(self):
            return self
        g = torch.Generator().manual_seed(seed_for(seed, "subset"))
        idx = torch.randperm(len(self), generator=g)[:n].sort().values
        return ArrayDataset(self.images[idx].contiguous(), self.labels[idx], self.num_classes,
                            self.mean, self.std, self.flip, self.source + f" (subset {n})")


def seed_for(*parts) -> int:
    """A 63-bit seed derived deterministically from ints/strings (numpy SeedSequence)."""
    ints = [p if isinstance(p, int) else int.from_bytes(str(p).encode(), "little") % (2**32) for p in parts]
    return int(np.random.SeedSequence(ints).generate_state(2, np.uint32).astype(np.uint64) @ np.array([1, 2**31], np.uint64))


def default_root() -> str:
    """``$ANODEV2_DATA`` if set, else ``./data``."""
    return os.environ.get("ANODEV2_DATA") or "./data"


# ----------------------------------------------------------------------------- loading

def _from_arrays(x: np.ndarray, y: np.ndarray, info: DatasetInfo, source: str) -> ArrayDataset:
    """An :class:`ArrayDataset` of checked arrays: [N, H, W] / [N, H, W, C] / [N, C, H, W] -> [N, C, H, W]."""
    x = torch.as_tensor(np.ascontiguousarray(x))
    if x.dim() == 3:
        x = x.unsqueeze(1)
    elif x.dim() == 4 and tuple(x.shape[1:]) != info.image_shape:
        x = x.permute(0, 3, 1, 2)
    return ArrayDataset(x.contiguous().to(torch.uint8), torch.as_tensor(np.asarray(y)).long(),
                        info.classes, info.mean, info.std, flip=info.flip, source=source)


NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")


def _allowed_shapes(info: DatasetInfo) -> str:
    c, (h, w) = info.channels, info.size
    shapes = [f"[N, {h}, {w}, {c}]", f"[N, {c}, {h}, {w}]"]
    if c == 1:
        shapes.insert(0, f"[N, {h}, {w}]")
    return " or ".join(shapes)


def _check_split(x: np.ndarray, y: np.ndarray, info: DatasetInfo, split: str) -> None:
    """x/y of one split against the facts of ``info`` (datasets.DATASETS): dtype, image shape, labels, not empty."""
    c, (h, w) = info.channels, info.size
    ok_x = x.dtype == np.uint8 and (tuple(x.shape[1:]) in ((h, w, c), (c, h, w)) or
                                    c == 1 and tuple(x.shape[1:]) == (h, w))
    if not ok_x:
        raise DataError(f"x_{split} has dtype {x.dtype} and shape {list(x.shape)}; "
                        f"allowed for {info.name}: uint8 {_allowed_shapes(info)}")
    if x.shape[0] == 0:
        raise DataError(f"x_{split} holds no images; allowed: at least 1 image per split")
    if y.ndim != 1 or y.shape[0] != x.shape[0] or not np.issubdtype(y.dtype, np.integer):
        raise DataError(f"y_{split} has dtype {y.dtype} and shape {list(y.shape)}; allowed: integer [{x.shape[0]}]")
    if y.min() < 0 or y.max() >= info.classes:
        raise DataError(f"y_{split} holds labels {int(y.min())}..{int(y.max())}; "
                        f"allowed: 0..{info.classes - 1} ({info.name} has {info.classes} classes)")


def _check_classes(y_train: np.ndarray, info: DatasetInfo) -> None:
    """Every class of ``info`` occurs in the training labels (a CIFAR-10 file read as cifar100 has 10 of 100)."""
    present = np.unique(y_train).size
    if present != info.classes:
        raise DataError(f"y_train holds {present} of {info.name}'s {info.classes} classes "
                        f"(labels {int(y_train.min())}..{int(y_train.max())}); data.name={info.name} does not match "
                        f"this data (allowed: a training set holding every class 0..{info.classes - 1}; data sets: "
                        f"{', '.join(f'{d.name} {d.classes} classes' for d in DATASETS.values())})")


def check_pair(train: ArrayDataset, test: ArrayDataset, where: str) -> None:
    """Train and test images of one data set must have the same [C, H, W]; DataError naming ``where`` otherwise."""
    a, b = tuple(train.images.shape[1:]), tuple(test.images.shape[1:])
    if a != b:
        raise DataError(f"{where}: training images are {list(a)} [C, H, W] but test images are {list(b)}; "
                        f"allowed: the same shape in both splits")


def _load_npz(path: Path, info: DatasetInfo) -> tuple[ArrayDataset, ArrayDataset]:
    """The (train, test) sets of an arrays file; DataError (naming the file) when it cannot be used."""
    try:
        with np.load(path, allow_pickle=False) as z:
            missing = set(NPZ_KEYS) - set(z.files)
            if missing:
                raise DataError(f"lacks the arrays {sorted(missing)}; allowed: keys {', '.join(NPZ_KEYS)}")
            arrays = {k: z[k] for k in NPZ_KEYS}
        for split in ("train", "test"):
            _check_split(arrays[f"x_{split}"], arrays[f"y_{split}"], info, split)
        _check_classes(arrays["y_train"], info)
    except DataError as e:
        raise DataError(f"{path}: {e}; rebuild the file or point data.root elsewhere") from None
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:  # truncated, CRC error, not an npz
        raise DataError(f"{path} is not a readable arrays file ({type(e).__name__}: "
                        f"{' '.join(str(e).split())[:120]}); rebuild it or point data.root elsewhere") from None
    return (_from_arrays(arrays["x_train"], arrays["y_train"], info, str(path)),
            _from_arrays(arrays["x_test"], arrays["y_test"], info, str(path)))


def _missing_ancestor(path: Path) -> Optional[Path]:
    """The highest directory on the way to ``path`` (itself included) that does not exist yet, or None."""
    top = None
    for p in [path, *path.parents]:
        if p.exists():
            break
        top = p
    return top


def _remove_new_empty_dirs(root: Path, before: set[Path], top: Optional[Path]) -> None:
    """Remove empty directories below ``top`` (or ``root``) that were not in ``before``: what a failed download made."""
    start = top or root
    if not start.is_dir():
        return
    for dirpath, _, _ in sorted(os.walk(start), key=lambda w: -len(Path(w[0]).parts)):
        d = Path(dirpath)
        if d not in before and not any(d.iterdir()):
            d.rmdir()


def _torchvision_class(info: DatasetInfo):
    return info.torchvision_class()


def _load_torchvision(info: DatasetInfo, root: str, download: bool) -> tuple[ArrayDataset, ArrayDataset]:
    cls = _torchvision_class(info)
    out = []
    for train in (True, False):
        ds = cls(root=root, train=train, download=download)
        data = ds.data.numpy() if torch.is_tensor(ds.data) else np.asarray(ds.data)
        targets = np.asarray(ds.targets)
        source = f"torchvision {cls.__name__} in {root}"
        try:
            _check_split(data, targets, info, "train" if train else "test")
            if train:
                _check_classes(targets, info)
        except DataError as e:
            raise DataError(f"{source}: {e}") from None
        out.append(_from_arrays(data, targets, info, source))
    return out[0], out[1]


def _synthetic(seed: int = 0) -> tuple[ArrayDataset, ArrayDataset]:
    """CIFAR-shaped, deterministic, learnable: each class is a smooth colour template plus noise."""
    g = torch.Generator().manual_seed(seed_for(seed, "synthetic"))
    templates = torch.rand(10, 3, 4, 4, generator=g)
    templates = torch.nn.functional.interpolate(templates, size=(32, 32), mode="bilinear", align_corners=False)

    def make(n):
        y = torch.randint(0, 10, (n,), generator=g)
        x = 0.6 * templates[y] + 0.4 * torch.rand(n, 3, 32, 32, generator=g)
        return (x * 255).round().clamp(0, 255).to(torch.uint8), y

    info = DATASETS["synthetic"]
    (xa, ya), (xb, yb) = make(SYNTHETIC_SIZES[0]), make(SYNTHETIC_SIZES[1])
    return (ArrayDataset(xa, ya, info.classes, info.mean, info.std, source="synthetic"),
            ArrayDataset(xb, yb, info.classes, info.mean, info.std, source="synthetic"))


def load_datasets(name: str, root: Optional[str] = None, download: bool = True,
                  subset_train: Optional[int] = None, subset_test: Optional[int] = None,
                  seed: int = 0) -> tuple[ArrayDataset, ArrayDataset]:
    """(train, test) :class:`ArrayDataset` of ``name`` in cifar10 | cifar100 | mnist | synthetic.

    Subsets are chosen by a generator seeded with ``seed``. The facts the data must match (channels, image
    size, classes: every class present in the training set) come from :data:`datasets.DATASETS`. Raises
    DataError (unusable data, naming the file and what is allowed) or DataNotFoundError; ValueError for an
    unknown ``name``.
    """
    info = dataset_info(name)
    if name == "synthetic":
        train, test = _synthetic()
    else:
        root = root or default_root()
        train, test = _find_real(info, root, download)
        check_pair(train, test, train.source)
    return train.subset(subset_train, seed), test.subset(subset_test, seed + 1)


def _check_root(root: str) -> None:
    """DataError for a data.root that cannot be used at all: a symlink loop, unreadable, a file that is not .npz."""
    try:
        st = os.stat(root)
    except FileNotFoundError:
        return  # may be created by a download
    except OSError as e:  # ELOOP (symlink loop), EACCES on a parent, ENOTDIR, ENAMETOOLONG ...
        what = "is a symlink loop" if e.errno == errno.ELOOP else f"cannot be read ({e.strerror})"
        raise DataError(f"data.root={root} {what}; allowed: a readable data directory or .npz file") from None
    if stat.S_ISDIR(st.st_mode):
        if not os.access(root, os.R_OK | os.X_OK):
            raise DataError(f"data.root={root} is a directory this user cannot read; "
                            f"allowed: a readable data directory or .npz file")
    elif not root.endswith(".npz"):
        raise DataError(f"data.root={root} is a file but not an arrays file; allowed: a data directory "
                        f"or a FILE.npz")


def _find_real(info: DatasetInfo, root: str, download: bool) -> tuple[ArrayDataset, ArrayDataset]:
    name = info.name
    _check_root(root)
    if root.endswith(".npz"):
        if not Path(root).is_file():
            raise DataNotFoundError(f"data.root={root} names an arrays file that does not exist; "
                                    f"allowed: an existing .npz file or a data directory")
        return _load_npz(Path(root), info)
    npz = Path(root) / info.arrays_file
    if npz.is_file():
        return _load_npz(npz, info)
    tried = [f"{npz} (not found)"]
    top = _missing_ancestor(Path(root))
    before = {Path(d) for d, _, _ in os.walk(root)}
    try:
        return _load_torchvision(info, root, download=False)
    except (RuntimeError, OSError) as e:
        tried.append(f"torchvision layout in {root} ({' '.join(str(e).split())[:120]})")
    if download:
        try:
            return _load_torchvision(info, root, download=True)
        except DataError:
            raise
        except Exception as e:  # URLError, HTTPError, timeouts, checksum errors: all mean "no data"
            tried.append(f"torchvision download into {root} ({type(e).__name__}: {' '.join(str(e).split())[:120]})")
    else:
        tried.append("download skipped (data.download=false)")
    _remove_new_empty_dirs(Path(root), before, top)  # what the failed attempts created
    how = ("run once with internet access (torchvision downloads it into data.root)"
           if download else "set data.download=true on a machine with internet access")
    extra = (f", or build the arrays file offline from a CIFAR-10 PNG copy (its make_cifar10_npz.py script: "
             f"python make_cifar10_npz.py {root}) and pass data.root=DIR or data.root=FILE.npz"
             if name == "cifar10" else "")
    raise DataNotFoundError(f"{name} data not found. Looked at: {'; '.join(tried)}. To provide it: {how}{extra}, "
                            f"or put torchvision's {name} layout in {root} (data.root=DIR or $ANODEV2_DATA)")


# ----------------------------------------------------------------------------- batches

def augment_batch(x: torch.Tensor, generator: torch.Generator, padding: int = 4, flip: bool = True) -> torch.Tensor:
    """Random crop with zero padding + random horizontal flip, on a whole uint8 batch [B, C, H, W]."""
    b, c, h, w = x.shape
    hp, wp = h + 2 * padding, w + 2 * padding
    xp = torch.nn.functional.pad(x, (padding,) * 4) if padding > 0 else x
    off = torch.randint(0, 2 * padding + 1, (2, b), generator=generator)
    rows, cols = torch.arange(h)[:, None] * wp, torch.arange(w)[None, :]
    grid = (rows + cols).view(1, -1)  # [1, H*W] flat offsets of the crop in the padded image
    if flip:
        mask = torch.rand(b, generator=generator) < 0.5
        grid = torch.where(mask[:, None], (rows + cols.flip(-1)).view(1, -1), grid)
    idx = (off[0] * wp + off[1])[:, None] + grid  # [B, H*W]
    out = torch.gather(xp.reshape(b, c, hp * wp), 2, idx[:, None, :].expand(b, c, h * w))
    return out.view(b, c, h, w)


def _shard(n: int, rank: int, world: int, pad: bool, perm: torch.Tensor) -> torch.Tensor:
    """This rank's indices of ``perm`` (as DistributedSampler: padded to a multiple of world when ``pad``)."""
    if world == 1:
        return perm
    if pad and n % world:
        perm = torch.cat([perm, perm[: world - n % world]])
    return perm[rank::world]


class _Batches(torch.utils.data.Dataset):
    """Map-style dataset whose items are whole batches; key = (epoch, batch index, index tensor)."""

    def __init__(self, data: ArrayDataset, augment: bool, seed: int, rank: int):
        self.data, self.augment, self.seed, self.rank = data, augment, seed, rank
        self.mean = torch.tensor(data.mean).view(1, -1, 1, 1) * 255
        self.std = torch.tensor(data.std).view(1, -1, 1, 1) * 255

    def __getitem__(self, key):
        epoch, b, idx = key
        x = self.data.images[idx]
        if self.augment:
            g = torch.Generator().manual_seed(seed_for(self.seed, "augment", epoch, self.rank, b))
            x = augment_batch(x, g, flip=self.data.flip)
        return (x.float() - self.mean) / self.std, self.data.labels[idx]

    def __len__(self):  # not used by the sampler-driven DataLoader
        return len(self.data)


class _Keys(torch.utils.data.Sampler):
    def __init__(self, loader: "BatchLoader"):
        self.loader = loader

    def __iter__(self):
        return iter(self.loader._keys())

    def __len__(self):
        return len(self.loader)


class BatchLoader:
    """Iterates over ``(x float [B, C, H, W] normalised, y int64 [B])`` batches of one rank.

    shuffle: new permutation each epoch from seed_for(seed, 'order', epoch) (same on all ranks,
    then sharded rank::world_size, padded like DistributedSampler when ``pad``). augment: crop+flip
    drawn from seed_for(seed, 'augment', epoch, rank, batch). workers > 0 prepares batches in
    persistent worker processes; 0 prepares them in the calling process. Call ``set_epoch``.
    """

    def __init__(self, data: ArrayDataset, batch_size: int, shuffle: bool, augment: bool, seed: int = 0,
                 rank: int = 0, world_size: int = 1, workers: int = 0, pad: bool = True, pin_memory: bool = False):
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size} is not allowed; allowed: >= 1")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank={rank} is not allowed; allowed: 0 <= rank < world_size={world_size}")
        self.data, self.batch_size, self.shuffle, self.seed = data, batch_size, shuffle, seed
        self.rank, self.world_size, self.pad, self.epoch = rank, world_size, pad, 0
        self.batches = _Batches(data, augment, seed, rank)
        self.workers = workers
        self._loader = None
        if workers > 0:
            self._loader = torch.utils.data.DataLoader(
                self.batches, batch_size=None, sampler=_Keys(self), num_workers=workers,
                persistent_workers=True, pin_memory=pin_memory, prefetch_factor=2)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def indices(self) -> torch.Tensor:
        """This rank's sample indices for the current epoch, in order."""
        n = len(self.data)
        if self.shuffle:
            g = torch.Generator().manual_seed(seed_for(self.seed, "order", self.epoch))
            perm = torch.randperm(n, generator=g)
        else:
            perm = torch.arange(n)
        return _shard(n, self.rank, self.world_size, self.pad, perm)

    def _keys(self):
        idx = self.indices()
        return [(self.epoch, b, idx[s: s + self.batch_size])
                for b, s in enumerate(range(0, len(idx), self.batch_size))]

    def __len__(self) -> int:
        n = len(self.data)
        per_rank = -(-n // self.world_size) if self.pad else len(range(self.rank, n, self.world_size))
        return -(-per_rank // self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if self._loader is not None:
            return iter(self._loader)
        return (self.batches[k] for k in self._keys())
