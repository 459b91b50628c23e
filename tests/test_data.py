"""CIFAR-10 loading: image-folder trees, the decode cache, data-root resolution and bad data."""

from pathlib import Path

import pytest
import torch
from torchvision.io import encode_jpeg, write_png

from gradcam_repro.data import cifar10 as data_mod
from gradcam_repro.data.cifar10 import CIFAR10_CLASSES, load_cifar10, resolve_data_root
from gradcam_repro.data.images import stratified_subset
from gradcam_repro.errors import UserError


def make_tree(root: Path, per_class=(3, 2), seed=0) -> dict:
    """A tiny CIFAR-10-shaped image-folder tree; returns the written pixels per split."""
    gen = torch.Generator().manual_seed(seed)
    written = {}
    for split, n in zip(("train", "test"), per_class):
        images = []
        for name in CIFAR10_CLASSES:
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(n):
                img = torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8, generator=gen)
                write_png(img, str(folder / f"{i:04d}.png"))  # lossless, so pixels can be compared
                images.append(img)
        written[split] = torch.stack(images)
    return written


def test_image_tree_decodes_to_exact_pixels_and_labels(tmp_path):
    written = make_tree(tmp_path / "tree")
    d = load_cifar10(tmp_path / "tree", cache_dir=tmp_path / "cache", download=False)
    assert d.classes == CIFAR10_CLASSES
    assert d.train_images.dtype == torch.uint8 and d.train_images.shape == (30, 3, 32, 32)
    assert torch.equal(d.train_images, written["train"])
    assert torch.equal(d.test_images, written["test"])
    assert d.train_labels.tolist() == [c for c in range(10) for _ in range(3)]
    assert d.test_labels.dtype == torch.int64 and d.test_labels.tolist() == [c for c in range(10) for _ in range(2)]
    assert len(d.fingerprint) == 64


def test_tree_is_decoded_once_then_loaded_from_cache(tmp_path, monkeypatch):
    make_tree(tmp_path / "tree")
    first = load_cifar10(tmp_path / "tree", cache_dir=tmp_path / "cache", download=False)
    assert len(list((tmp_path / "cache").glob("cifar10-tree-*.pt"))) == 1

    def no_decoding(path):
        raise AssertionError(f"decoded {path} although a cache exists")

    monkeypatch.setattr(data_mod, "_decode_file", no_decoding)
    second = load_cifar10(tmp_path / "tree", cache_dir=tmp_path / "cache", download=False)
    assert torch.equal(first.train_images, second.train_images)
    assert first.fingerprint == second.fingerprint


def test_changed_tree_invalidates_the_cache(tmp_path):
    make_tree(tmp_path / "tree")
    first = load_cifar10(tmp_path / "tree", cache_dir=tmp_path / "cache", download=False)
    write_png(torch.zeros(3, 32, 32, dtype=torch.uint8), str(tmp_path / "tree/train/cat/0000.png"))
    second = load_cifar10(tmp_path / "tree", cache_dir=tmp_path / "cache", download=False)
    assert first.fingerprint != second.fingerprint
    assert second.train_images[3 * 3].sum() == 0  # cat is class 3, its first image now all black


def test_jpeg_tree_is_read(tmp_path):
    folder_root = tmp_path / "tree"
    make_tree(folder_root, per_class=(1, 1))
    img = torch.full((3, 32, 32), 128, dtype=torch.uint8)
    (folder_root / "train/dog/0000.png").unlink()
    (folder_root / "train/dog/0000.jpg").write_bytes(encode_jpeg(img, quality=95).numpy().tobytes())
    d = load_cifar10(folder_root, cache_dir=tmp_path / "cache", download=False)
    assert (d.train_images[5].float() - 128).abs().max() <= 2  # JPEG is lossy, but a flat image survives


@pytest.mark.parametrize(
    "damage, expected",
    [
        (lambda root: [p.unlink() for p in (root / "train/frog").iterdir()], "class folder .*train/frog is empty"),
        (lambda root: (root / "train/cat/notes.txt").write_text("hello"), "not an image file: .*notes.txt"),
        (lambda root: (root / "test/dog/0001.jpg").write_bytes(
            encode_jpeg(torch.zeros(3, 32, 32, dtype=torch.uint8)).numpy().tobytes()[:200]),
         "truncated image file: .*0001.jpg"),
        (lambda root: write_png(torch.zeros(3, 16, 16, dtype=torch.uint8), str(root / "train/ship/0000.png")),
         r"image .*0000.png is \(16, 16\) with 3 channel\(s\), expected 32x32 RGB"),
        (lambda root: write_png(torch.zeros(1, 32, 32, dtype=torch.uint8), str(root / "train/ship/0001.png")),
         r"0001.png is \(32, 32\) with 1 channel\(s\), expected 32x32 RGB"),
        (lambda root: (root / "train/horse").rename(root / "train/pony"), "missing: \\['horse'\\], unexpected: \\['pony'\\]"),
    ],
    ids=["empty-class", "non-image", "truncated-jpeg", "wrong-size", "grayscale", "wrong-class-folder"],
)
def test_bad_tree_names_the_problem(tmp_path, monkeypatch, capsys, damage, expected):
    """Through the CLI: one line naming the file and the fix, exit code 2, earlier results untouched."""
    import re

    from gradcam_repro.cli import main

    make_tree(tmp_path / "tree", per_class=(2, 2))
    damage(tmp_path / "tree")
    monkeypatch.setenv("GRADCAM_CACHE_DIR", str(tmp_path / "cache"))
    previous = tmp_path / "run"
    (previous / "baseline").mkdir(parents=True)
    (previous / "summary.md").write_text("earlier results")
    code = main(["run", "--preset", "smoke", "--data-root", str(tmp_path / "tree"), "--out", str(previous)])
    err = capsys.readouterr().err
    assert code == 2 and re.search(expected, err), err
    assert "fix:" in err and err.count("\n") == 1 and "Traceback" not in err
    assert [p.name for p in previous.rglob("*")] == ["baseline", "summary.md"]
    assert (previous / "summary.md").read_text() == "earlier results"
    assert not list((tmp_path / "cache").glob("*.pt")) if (tmp_path / "cache").exists() else True


def test_missing_data_says_where_it_looked_and_both_fixes(tmp_path, monkeypatch):
    monkeypatch.setattr(data_mod, "_try_download", lambda root: "no network")
    with pytest.raises(UserError) as info:
        load_cifar10(tmp_path / "nothing", cache_dir=tmp_path / "cache")
    message = str(info.value)
    assert str(tmp_path / "nothing") in message and "cifar-10-batches-py" in message
    assert "--data-root" in message and "download" in message and "no network" in message


def test_data_root_resolution_order(monkeypatch):
    monkeypatch.setenv("GRADCAM_DATA_ROOT", "/from/env")
    assert resolve_data_root("/from/flag") == Path("/from/flag")
    assert resolve_data_root(None) == Path("/from/env")
    monkeypatch.delenv("GRADCAM_DATA_ROOT")
    assert resolve_data_root(None) == Path("data")


def test_canonical_batches_folder_is_read_through_torchvision(tmp_path, monkeypatch):
    import pickle

    import numpy as np

    # torchvision checks the real files' MD5 sums; these hand-made batches cannot match them.
    import torchvision.datasets.cifar as tv_cifar
    from torchvision.datasets import CIFAR10

    monkeypatch.setattr(CIFAR10, "_check_integrity", lambda self: True)
    monkeypatch.setattr(tv_cifar, "check_integrity", lambda path, md5=None: True)

    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    batches = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        pixels = rng.integers(0, 256, (4, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, 4).tolist()
        batches[name] = (pixels, labels)
        with open(folder / name, "wb") as f:
            pickle.dump({"data": pixels, "labels": labels}, f)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": list(CIFAR10_CLASSES)}, f)
    d = load_cifar10(tmp_path, download=False)
    assert d.train_images.shape == (20, 3, 32, 32) and d.test_images.shape == (4, 3, 32, 32)
    expected = torch.from_numpy(batches["data_batch_1"][0]).view(4, 3, 32, 32)
    assert torch.equal(d.train_images[:4], expected)
    assert d.test_labels.tolist() == batches["test_batch"][1]


def test_stratified_subset_is_balanced_deterministic_and_sorted():
    labels = torch.arange(10).repeat_interleave(100)
    a = stratified_subset(labels, 250, seed=1)
    assert torch.equal(a, stratified_subset(labels, 250, seed=1))
    assert not torch.equal(a, stratified_subset(labels, 250, seed=2))
    counts = torch.bincount(labels[a], minlength=10)
    assert counts.max() - counts.min() <= 1 and counts.sum() == 250
    assert torch.equal(a, a.sort().values) and len(a.unique()) == 250
