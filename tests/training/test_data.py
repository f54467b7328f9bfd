"""In-memory data sets, batch augmentation, deterministic (seed, epoch) order and rank sharding."""
from pathlib import Path

import numpy as np
import pytest
import torch

from anodev2.training import data as datamod
from anodev2.training.datasets import DATASETS
from anodev2.training.data import (ArrayDataset, BatchLoader, DataNotFoundError, augment_batch,
                          default_root, load_datasets)

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"


def _small(n=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n, 3, 8, 8), generator=g, dtype=torch.uint8)
    return ArrayDataset(x, torch.arange(n) % 10, 10, (0.5,) * 3, (0.25,) * 3)


def test_synthetic_is_deterministic_and_subsets_depend_on_seed():
    a_train, a_test = load_datasets("synthetic", subset_train=64, subset_test=32, seed=0)
    b_train, _ = load_datasets("synthetic", subset_train=64, subset_test=32, seed=0)
    c_train, _ = load_datasets("synthetic", subset_train=64, subset_test=32, seed=1)
    assert a_train.images.shape == (64, 3, 32, 32) and a_test.images.shape == (32, 3, 32, 32)
    assert a_train.images.dtype == torch.uint8 and a_train.labels.dtype == torch.int64
    assert torch.equal(a_train.images, b_train.images) and torch.equal(a_train.labels, b_train.labels)
    assert not torch.equal(a_train.images, c_train.images)
    full, _ = load_datasets("synthetic")
    # classes are separable: per-class mean images differ clearly
    means = torch.stack([full.images[full.labels == c].float().mean(0) for c in range(10)])
    assert (means[0] - means[1]).abs().mean() > 10


def _reference_augment(x, seed, padding=4):
    """Per-image slicing with the same random draws as augment_batch."""
    g = torch.Generator().manual_seed(seed)
    b, c, h, w = x.shape
    off = torch.randint(0, 2 * padding + 1, (2, b), generator=g)
    flip = torch.rand(b, generator=g) < 0.5
    xp = torch.nn.functional.pad(x, (padding,) * 4)
    out = []
    for i in range(b):
        crop = xp[i, :, off[0, i]: off[0, i] + h, off[1, i]: off[1, i] + w]
        out.append(crop.flip(-1) if flip[i] else crop)
    return torch.stack(out)


def test_augment_batch_is_random_crop_and_flip():
    x = torch.randint(0, 256, (32, 3, 10, 12), dtype=torch.uint8)
    got = augment_batch(x, torch.Generator().manual_seed(5))
    assert got.dtype == torch.uint8 and got.shape == x.shape
    assert torch.equal(got, _reference_augment(x, 5))
    assert not torch.equal(got, x)
    # no flip, no padding: identity
    assert torch.equal(augment_batch(x, torch.Generator().manual_seed(0), padding=0, flip=False), x)


def test_loader_normalises_and_orders_by_seed_and_epoch():
    data = _small()
    loader = BatchLoader(data, 16, shuffle=True, augment=False, seed=3)
    assert len(loader) == 3
    loader.set_epoch(0)
    e0 = list(loader)
    assert [len(y) for _, y in e0] == [16, 16, 8]
    idx0 = loader.indices()
    x, y = e0[0]
    mean = torch.tensor(data.mean).view(1, 3, 1, 1)
    std = torch.tensor(data.std).view(1, 3, 1, 1)
    assert torch.allclose(x * std + mean, data.images[idx0[:16]].float() / 255, atol=1e-6)
    assert torch.equal(y, data.labels[idx0[:16]])
    assert sorted(idx0.tolist()) == list(range(40))
    loader.set_epoch(1)
    assert not torch.equal(loader.indices(), idx0)
    loader.set_epoch(0)
    assert torch.equal(loader.indices(), idx0)
    unshuffled = BatchLoader(data, 16, shuffle=False, augment=False)
    assert torch.equal(unshuffled.indices(), torch.arange(40))


def test_augmentation_depends_only_on_seed_epoch_and_workers_agree():
    data = _small()
    a = BatchLoader(data, 8, shuffle=True, augment=True, seed=1)
    b = BatchLoader(data, 8, shuffle=True, augment=True, seed=1, workers=1)
    for epoch in (0, 2):
        a.set_epoch(epoch)
        b.set_epoch(epoch)
        for (xa, ya), (xb, yb) in zip(a, b):
            assert torch.equal(xa, xb) and torch.equal(ya, yb)
    a.set_epoch(0)
    first = [x for x, _ in a]
    a.set_epoch(1)
    assert not all(torch.equal(p, q) for p, q in zip(first, (x for x, _ in a)))


@pytest.mark.parametrize("n", [40, 37])
def test_rank_sharding_like_distributed_sampler(n):
    data = _small(n)
    shards = [BatchLoader(data, 8, shuffle=True, augment=False, seed=0, rank=r, world_size=2) for r in range(2)]
    idx = [s.indices() for s in shards]
    assert len(idx[0]) == len(idx[1]) == -(-n // 2) and len(shards[0]) == len(shards[1])
    assert set(idx[0].tolist()) | set(idx[1].tolist()) == set(range(n))
    if n % 2 == 0:
        assert not set(idx[0].tolist()) & set(idx[1].tolist())
    # evaluation shards (no padding) partition the set exactly
    ev = [BatchLoader(data, 8, shuffle=False, augment=False, rank=r, world_size=2, pad=False) for r in range(2)]
    got = sorted(ev[0].indices().tolist() + ev[1].indices().tolist())
    assert got == list(range(n)) and sum(len(list(e)) for e in ev) == sum(len(e) for e in ev)


def test_npz_layout_is_read(tmp_path):
    rng = np.random.default_rng(0)
    arrays = dict(x_train=rng.integers(0, 256, (20, 32, 32, 3), dtype=np.uint8), y_train=np.arange(20) % 10,
                  x_test=rng.integers(0, 256, (6, 32, 32, 3), dtype=np.uint8), y_test=rng.integers(0, 10, 6))
    np.savez(tmp_path / "cifar10.npz", **arrays)
    train, test = load_datasets("cifar10", root=str(tmp_path), download=False)
    assert train.images.shape == (20, 3, 32, 32) and test.images.shape == (6, 3, 32, 32)
    assert torch.equal(train.images.permute(0, 2, 3, 1), torch.from_numpy(arrays["x_train"]))
    assert train.mean == DATASETS["cifar10"].mean and "cifar10.npz" in train.source
    sub, _ = load_datasets("cifar10", root=str(tmp_path), download=False, subset_train=5)
    assert len(sub) == 5


def test_missing_data_message_says_where_and_how(tmp_path, monkeypatch):
    with pytest.raises(DataNotFoundError) as e:
        load_datasets("cifar10", root=str(tmp_path), download=False)
    msg = str(e.value)
    assert str(tmp_path / "cifar10.npz") in msg and "make_cifar10_npz.py" in msg
    assert "internet" in msg and "torchvision" in msg
    monkeypatch.setenv("ANODEV2_DATA", str(tmp_path))
    assert default_root() == str(tmp_path)
    monkeypatch.delenv("ANODEV2_DATA")
    assert default_root() == "./data"


@pytest.mark.skipif(not (SHARED / "MNIST" / "raw").is_dir(), reason="no shared MNIST copy")
def test_shared_mnist_loads_single_channel():
    train, test = load_datasets("mnist", root=str(SHARED), download=False, subset_test=100)
    assert train.images.shape == (60000, 1, 28, 28) and len(test) == 100
    assert train.flip is False and train.num_classes == 10
    assert abs(train.images.float().mean().item() / 255 - DATASETS["mnist"].mean[0]) < 1e-3


def test_data_root_may_name_the_arrays_file_itself(tmp_path):
    rng = np.random.default_rng(0)
    arrays = {"x_train": rng.integers(0, 256, (10, 32, 32, 3), dtype=np.uint8), "y_train": np.arange(10),
              "x_test": rng.integers(0, 256, (4, 32, 32, 3), dtype=np.uint8), "y_test": np.arange(4)}
    np.savez(tmp_path / "mine.npz", **arrays)
    train, test = load_datasets("cifar10", root=str(tmp_path / "mine.npz"), download=False)
    assert len(train) == 10 and len(test) == 4
    with pytest.raises(DataNotFoundError, match="names an arrays file that does not exist"):
        load_datasets("cifar10", root=str(tmp_path / "other.npz"), download=False)


def test_a_failed_download_leaves_no_new_directories(tmp_path, monkeypatch):
    class Offline:
        def __init__(self, root, train, download):
            (Path(root) / "MNIST" / "raw").mkdir(parents=True, exist_ok=True)  # as torchvision does first
            if download:
                raise OSError("network unreachable")
            raise RuntimeError("Dataset not found")

    monkeypatch.setattr(datamod, "_torchvision_class", lambda info: Offline)
    (tmp_path / "kept").mkdir()
    root = tmp_path / "new" / "data"
    with pytest.raises(DataNotFoundError, match="network unreachable"):
        load_datasets("mnist", root=str(root), download=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kept"]


# ----------------------------------------------------------------------------- the facts table and data consistency

def _arrays(tmp_path, name="cifar10.npz", n=(10, 4), shape=(32, 32, 3), test_shape=None, classes=10):
    rng = np.random.default_rng(0)
    test_shape = test_shape or shape
    np.savez(tmp_path / name, x_train=rng.integers(0, 256, (n[0], *shape), dtype=np.uint8),
             y_train=np.arange(n[0]) % classes, x_test=rng.integers(0, 256, (n[1], *test_shape), dtype=np.uint8),
             y_test=np.arange(n[1]) % classes)
    return tmp_path / name


def test_dataset_facts_table():
    from anodev2.training.datasets import dataset_info
    assert {n: (d.channels, d.classes, d.size, d.arrays_file, d.torchvision, d.flip) for n, d in DATASETS.items()} == {
        "cifar10": (3, 10, (32, 32), "cifar10.npz", "CIFAR10", True),
        "cifar100": (3, 100, (32, 32), "cifar100.npz", "CIFAR100", True),
        "mnist": (1, 10, (28, 28), "mnist.npz", "MNIST", False),
        "synthetic": (3, 10, (32, 32), None, None, True)}
    assert dataset_info("mnist").image_shape == (1, 28, 28) and len(dataset_info("cifar100").std) == 3
    import torchvision.datasets as tvd
    assert dataset_info("cifar100").torchvision_class() is tvd.CIFAR100
    with pytest.raises(ValueError, match="data.name='imagenet' is not allowed; allowed: cifar10 | cifar100 | mnist"):
        dataset_info("imagenet")
    # the synthetic set and the config's choices come from the same table
    train, _ = load_datasets("synthetic", subset_train=4, subset_test=4)
    assert tuple(train.images.shape[1:]) == DATASETS["synthetic"].image_shape and train.mean == DATASETS["synthetic"].mean
    from anodev2.training.config import DataConfig, _datasets
    assert _datasets() == tuple(DATASETS) and DataConfig().name == "cifar10"


@pytest.mark.parametrize("case, words", [
    ("cifar100 from cifar10", ["y_train holds 10 of cifar100's 100 classes", "data.name=cifar100 does not match"]),
    ("test 16x16", ["x_test has dtype uint8 and shape [4, 16, 16, 3]",
                    "allowed for cifar10: uint8 [N, 32, 32, 3] or [N, 3, 32, 32]"]),
    ("mnist of colour", ["x_train has dtype uint8 and shape [10, 28, 28, 3]",
                         "allowed for mnist: uint8 [N, 28, 28] or [N, 28, 28, 1] or [N, 1, 28, 28]"]),
    ("empty", ["x_train holds no images", "allowed: at least 1 image"]),
    ("missing class", ["y_train holds 9 of cifar10's 10 classes"]),
])
def test_arrays_must_match_the_data_set_facts(tmp_path, case, words):
    """W4/W6: data.name must match the arrays file (classes present, channels, image size); train and test agree."""
    name, kw = {"cifar100 from cifar10": ("cifar100", {}), "test 16x16": ("cifar10", dict(test_shape=(16, 16, 3))),
                "mnist of colour": ("mnist", dict(shape=(28, 28, 3))), "empty": ("cifar10", dict(n=(0, 4))),
                "missing class": ("cifar10", dict(classes=9))}[case]
    path = _arrays(tmp_path, "data.npz", **kw)
    with pytest.raises(datamod.DataError) as e:
        load_datasets(name, root=str(path), download=False)
    for w in words:
        assert w in str(e.value), str(e.value)
    assert str(path) in str(e.value)


def test_train_and_test_shapes_must_agree():
    a = ArrayDataset(torch.zeros(2, 3, 32, 32, dtype=torch.uint8), torch.zeros(2), 10, (0.5,) * 3, (0.25,) * 3)
    b = ArrayDataset(torch.zeros(2, 3, 16, 16, dtype=torch.uint8), torch.zeros(2), 10, (0.5,) * 3, (0.25,) * 3)
    datamod.check_pair(a, a, "x")
    with pytest.raises(datamod.DataError, match=r"src: training images are \[3, 32, 32\] .* test images are "
                                                r"\[3, 16, 16\]; allowed: the same shape"):
        datamod.check_pair(a, b, "src")


def test_unusable_data_roots(tmp_path):
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    with pytest.raises(datamod.DataError, match=f"data.root={loop} is a symlink loop; allowed: a readable"):
        load_datasets("cifar10", root=str(loop), download=True)
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(datamod.DataError, match="is a file but not an arrays file"):
        load_datasets("cifar10", root=str(tmp_path / "notes.txt"), download=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["loop", "notes.txt"]


def test_cli_refuses_mismatched_data_in_process(tmp_path, capsys):
    """The CLI's answer to W4: one error line, exit 2."""
    from anodev2.training.cli import main
    path = _arrays(tmp_path)
    status = main(["--config", "smoke", "data.name=cifar100", f"data.root={path}", f"out_dir={tmp_path / 'run'}"])
    err = capsys.readouterr().err
    assert status == 2 and err.count("\n") == 1 and err.startswith("error: ") and "cifar100's 100 classes" in err
