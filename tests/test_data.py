import tarfile

import numpy as np
import pytest
import torch
from PIL import Image

from prune_tracker.core.data import (
    AUTO,
    BatchLoader,
    DataError,
    ImageSet,
    Order,
    load_splits,
    resolve_val_size,
    split_train_val,
    synthetic_images,
)


def _write_tree(root, per_class=6, classes=("cat", "dog", "ship")):
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for i, name in enumerate(classes):
            folder = root / split / name
            folder.mkdir(parents=True)
            for j in range(per_class):
                pixels = np.full((32, 32, 3), 40 * i + j, dtype=np.uint8) + rng.integers(0, 3, (32, 32, 3),
                                                                                         dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{j}.png")


def test_synthetic_is_seedable_balanced_and_class_dependent():
    a, b = synthetic_images(200, 10, seed=3), synthetic_images(200, 10, seed=3)
    assert torch.equal(a.images, b.images) and a.images.dtype == torch.uint8
    assert a.images.shape == (200, 3, 32, 32)
    assert torch.bincount(a.labels).tolist() == [20] * 10
    means = torch.stack([a.images[a.labels == c].float().mean(0) for c in range(10)])
    assert torch.cdist(means.flatten(1), means.flatten(1)).fill_diagonal_(1e9).min() > 100


def test_synthetic_any_class_count():
    splits = load_splits("synthetic", train_subset=300, val_size=100, num_classes=100)
    assert splits.num_classes == 100
    assert torch.bincount(splits.train.labels).tolist() == [3] * 100
    assert torch.bincount(splits.val.labels).tolist() == [1] * 100


def test_auto_val_size_is_5000_for_cifar_and_a_tenth_of_a_smaller_set():
    assert AUTO == "auto"
    assert resolve_val_size("auto", "cifar10", 50_000) == 5000
    assert resolve_val_size("auto", "synthetic", 4000) == 400
    assert resolve_val_size("auto", "cifar10", 18) == 1
    assert resolve_val_size(1234, "cifar10", 50_000) == 1234 and resolve_val_size("0", "synthetic", 4000) == 0


@pytest.mark.parametrize("bad", [4000, -1, 2.5, "many", True])
def test_bad_explicit_val_size_is_a_one_line_error(bad):
    with pytest.raises(DataError, match=r"^val_size=.* must be 'auto' or an integer in \[0, 3999\] for synthetic's "
                                        r"4000 training images$"):
        resolve_val_size(bad, "synthetic", 4000)


def test_load_splits_defaults_to_auto_val_size():
    splits = load_splits("synthetic", train_subset=512)
    assert len(splits.val) == 400 and len(splits.train) == 512
    assert torch.bincount(splits.val.labels).tolist() == [40] * 10
    with pytest.raises(DataError, match=r"val_size=5000 must be 'auto' or an integer in \[0, 3999\]"):
        load_splits("synthetic", val_size=5000)


def test_subset_and_validation_are_class_balanced_and_disjoint():
    full = synthetic_images(1000, 10, seed=1)
    train, val = split_train_val(full, val_size=200, train_subset=300, seed=0)
    assert torch.bincount(val.labels).tolist() == [20] * 10
    assert torch.bincount(train.labels).tolist() == [30] * 10
    train_set = {bytes(x.numpy()) for x in train.images}
    assert not train_set & {bytes(x.numpy()) for x in val.images}
    again, _ = split_train_val(full, val_size=200, train_subset=300, seed=0)
    assert torch.equal(train.images, again.images)


def test_image_folder_and_archive_read_the_same(tmp_path):
    _write_tree(tmp_path / "tree" / "cifar-copy")
    archive = tmp_path / "copy.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tmp_path / "tree" / "cifar-copy", arcname="cifar-copy")
    from prune_tracker.core import data as data_module

    tree_train, tree_test, classes = data_module._read_image_folder(tmp_path / "tree")
    arch_train, arch_test, arch_classes = data_module._read_archive(archive)
    assert classes == arch_classes == ["cat", "dog", "ship"]
    assert tree_train.labels.tolist() == [0] * 6 + [1] * 6 + [2] * 6
    assert 41 <= int(tree_train.images[7].min()) <= int(tree_train.images[7].max()) <= 43  # dog/1.png: 40 + 1 + noise
    assert torch.equal(tree_train.images, arch_train.images) and torch.equal(tree_test.labels, arch_test.labels)
    assert tree_train.images.shape == (18, 3, 32, 32)


def test_class_count_mismatch_is_a_clear_error(tmp_path):
    _write_tree(tmp_path / "tree")
    with pytest.raises(DataError, match="has 3 classes, but cifar10 has 10"):
        load_splits("cifar10", str(tmp_path / "tree"), val_size=3)


@pytest.mark.parametrize("bad,match", [("nope", "unknown dataset 'nope'; choose one of: cifar10, cifar100, synthetic")])
def test_unknown_dataset(bad, match):
    with pytest.raises(DataError, match=match):
        load_splits(bad)


def test_missing_data_dir_and_bad_file(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_splits("cifar10", str(tmp_path / "missing"))
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"not an archive")
    with pytest.raises(DataError, match="not a .tar"):
        load_splits("cifar10", str(junk))


def test_no_network_download_is_a_one_line_error(monkeypatch):
    from prune_tracker.core import data as data_module

    def offline(*_a, **_k):
        raise OSError("network unreachable")

    monkeypatch.setattr(data_module, "_read_torchvision", offline)
    with pytest.raises(DataError, match="could not download cifar100.*pass data_dir="):
        load_splits("cifar100")


def _window_of(augmented: torch.Tensor, source: torch.Tensor) -> tuple[int, int, bool] | None:
    """(row offset, col offset, mirrored) of the 32x32 window of the 4-pixel-padded `source` that
    `augmented` equals, or None."""
    padded = torch.nn.functional.pad(source, (4, 4, 4, 4)).float()
    windows = padded.unfold(1, 32, 1).unfold(2, 32, 1).permute(1, 2, 0, 3, 4)  # (9, 9, 3, 32, 32)
    for mirrored in (False, True):
        target = augmented.flip(2) if mirrored else augmented
        hits = torch.nonzero((windows == target).flatten(2).all(2))
        if len(hits):
            return int(hits[0, 0]), int(hits[0, 1]), mirrored
    return None


def test_augmentation_crops_and_flips_within_padding():
    images = synthetic_images(64, 4, seed=0)
    loader = BatchLoader(images, 64, (0.0, 0.0, 0.0), (1 / 255, 1 / 255, 1 / 255), order=Order(augment=True, seed=1),
                         channels_last=False)
    batch, labels = next(iter(loader))
    assert batch.shape == (64, 3, 32, 32) and torch.equal(labels, images.labels)
    # every augmented image is a (possibly mirrored) shifted copy of its source, zero-filled at the border
    found = [_window_of(batch[i], images.images[i]) for i in range(64)]
    assert None not in found
    offsets = [(dy, dx) for dy, dx, _ in found]  # 9 x 9 possible; (4, 4) is no shift
    assert len(set(offsets)) >= 20 and sum(o != (4, 4) for o in offsets) >= 48
    assert 16 <= sum(m for _, _, m in found) <= 48  # each image mirrored with p = 0.5
    dy, dx, m = found[0]
    shifted = torch.nn.functional.pad(images.images[0], (4, 4, 4, 4))[:, dy:dy + 32, dx:dx + 32].float()
    assert torch.equal(batch[0], shifted.flip(2) if m else shifted)
    identity = BatchLoader(images, 64, (0.0,) * 3, (1 / 255,) * 3, channels_last=False)
    assert torch.equal(next(iter(identity))[0], images.images.float())
    plain = next(iter(BatchLoader(images, 64, (0.5,) * 3, (0.25,) * 3, channels_last=False)))[0]
    assert torch.allclose(plain, (images.images.float() / 255 - 0.5) / 0.25, atol=1e-5)


def test_augmentation_follows_the_seed():
    images = synthetic_images(64, 4, seed=0)

    def first_batch(seed: int) -> torch.Tensor:
        return next(iter(BatchLoader(images, 64, (0,) * 3, (1,) * 3, order=Order(augment=True, seed=seed))))[0]

    assert torch.equal(first_batch(1), first_batch(1)) and not torch.equal(first_batch(1), first_batch(2))


def test_loader_shuffles_deterministically_and_covers_everything():
    ids = ImageSet(synthetic_images(100, 10, seed=0).images, torch.arange(100))  # label = image index

    def order(seed: int) -> list[int]:
        loader = BatchLoader(ids, 32, (0,) * 3, (1 / 255,) * 3, order=Order(shuffle=True, seed=seed),
                             channels_last=False)
        batches = list(loader)
        for x, y in batches:
            assert torch.equal(x, ids.images[y].float())  # images travel with their labels
        return torch.cat([y for _, y in batches]).tolist()

    first = order(5)
    assert sorted(first) == list(range(100)) and first != list(range(100))
    assert order(5) == first and order(6) != first
