"""`benchmarks.gpu_evidence`: CIFAR-10 cut into parts a device call can carry, and put back as a PNG tree that
decodes to the same pixels (so the same experiment keys) as the data it was packed from."""

from __future__ import annotations

import json

import pytest
import torch

from benchmarks import gpu_evidence
from gradcam_repro.data.cifar10 import load_cifar10
from gradcam_repro.data.images import tensor_fingerprint
from gradcam_repro.errors import UserError


def _data():
    gen = torch.Generator().manual_seed(0)
    images = {"train": torch.randint(0, 256, (30, 3, 32, 32), generator=gen, dtype=torch.uint8),
              "test": torch.randint(0, 256, (10, 3, 32, 32), generator=gen, dtype=torch.uint8)}
    labels = {"train": torch.arange(30) // 3, "test": torch.arange(10)}  # grouped by class, as the tree decodes
    return images, labels, tensor_fingerprint(images["train"], labels["train"], images["test"], labels["test"])


def test_the_parts_fit_their_size_and_the_png_tree_decodes_to_the_same_fingerprint(tmp_path):
    images, labels, fingerprint = _data()
    parts = gpu_evidence.pack(images, labels, fingerprint, tmp_path / "parts", part_mb=12.5 * 3072 / 1e6)
    # 40 images, 12 a part: 12 | 12 | 6 train + 6 test | 4 test, the last train part shared with the test split.
    assert [p.name for p in parts] == ["part-0.pt", "part-1.pt", "part-2.pt", "part-3.pt"]
    sizes = [sum(len(x) for _, x, _ in torch.load(p, weights_only=True).values()) for p in parts]
    assert sizes == [12, 12, 12, 4]
    assert json.loads((tmp_path / "parts" / "manifest.json").read_text())["counts"] == {"train": 30, "test": 10}
    back, back_labels = gpu_evidence.unpacked(tmp_path / "parts")
    assert torch.equal(back["test"], images["test"]) and torch.equal(back_labels["train"], labels["train"])
    gpu_evidence.write_tree(back, back_labels, tmp_path / "tree")
    assert (tmp_path / "tree" / "train" / "airplane" / "00.png").is_file()
    decoded = load_cifar10(tmp_path / "tree", cache_dir=tmp_path / "cache", download=False)
    assert decoded.fingerprint == fingerprint


def test_a_missing_or_changed_part_is_a_one_line_error_with_the_fix(tmp_path):
    images, labels, fingerprint = _data()
    parts = gpu_evidence.pack(images, labels, fingerprint, tmp_path, part_mb=20.5 * 3072 / 1e6)
    first = torch.load(parts[0], weights_only=True)
    start, x, y = first["train"]
    x[0, 0, 0, 0] ^= 1
    torch.save({"train": (start, x, y)}, parts[0])
    with pytest.raises(UserError, match="fix: pack them again and resend every part"):
        gpu_evidence.unpacked(tmp_path)
    parts[1].unlink()
    with pytest.raises(UserError, match=r"lacks part-1.pt; fix: send every part"):
        gpu_evidence.unpacked(tmp_path)
    with pytest.raises(UserError, match="not grouped by class"):
        gpu_evidence.write_tree(images, {"train": labels["train"].flip(0), "test": labels["test"]}, tmp_path / "t")
