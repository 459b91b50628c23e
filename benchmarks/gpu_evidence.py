"""CIFAR-10 for a lent GPU machine, which reaches no network and receives at most 64 MiB per call.

`python -m benchmarks.gpu_evidence pack --data-root DATA` (here): the decoded CIFAR-10 tensors, cut into parts of at
most `PART_MB` MB under `.gpu-data/` (ignored by git), with a manifest holding the data's fingerprint. Each device
call carries one part (`carry: [".gpu-data/part-N.pt"]`); a warm machine keeps the parts sent before.

`python -m benchmarks.gpu_evidence unpack --tree DIR` (there): the parts put back together, checked against the
manifest's fingerprint, and written as a lossless PNG tree (`train/<class>/NNNNN.png`, `test/...`) in the order the
JPEG tree decodes in, so `--data-root DIR` decodes to the same pixels: the same fingerprint, so the same experiment
keys as the runs made here. `benchmarks/gpu_evidence.sh` runs the evidence on the GPU from there.
"""

from __future__ import annotations

import argparse
import json
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from PIL import Image

from gradcam_repro.data.cifar10 import CIFAR10_CLASSES, load_cifar10
from gradcam_repro.data.images import tensor_fingerprint
from gradcam_repro.errors import UserError
from gradcam_repro.store import torch_save

PARTS = Path(".gpu-data")
PART_MB = 56  # a part plus the working tree (~2 MB) stays well inside one call's 64 MiB
MANIFEST = "manifest.json"
SPLITS = ("train", "test")


def pack(images: dict[str, torch.Tensor], labels: dict[str, torch.Tensor], fingerprint: str, out: Path,
         part_mb: float = PART_MB) -> list[Path]:
    """`images`/`labels` by split, cut along the images into parts of at most `part_mb` MB (`out/part-N.pt`:
    {split: (start, images, labels)}), and `out/manifest.json` (the fingerprint, each split's count, the parts).
    Returns the parts' paths."""
    per_part = max(1, int(part_mb * 1e6 // images["train"][0].numel()))
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("part-*.pt"):
        old.unlink()
    # The splits laid end to end; part k holds positions [k * per_part, (k + 1) * per_part) of that line.
    offsets = {"train": 0, "test": len(images["train"])}
    total = sum(len(images[s]) for s in SPLITS)
    parts = []
    for low in range(0, total, per_part):
        part = {}
        for split, offset in offsets.items():
            a, b = max(low, offset) - offset, min(low + per_part, offset + len(images[split])) - offset
            if a < b:
                part[split] = (a, images[split][a:b].clone(), labels[split][a:b].clone())
        parts.append(out / f"part-{len(parts)}.pt")
        torch_save(parts[-1], part)
    manifest = {"fingerprint": fingerprint, "counts": {s: len(images[s]) for s in SPLITS},
                "shape": list(images["train"].shape[1:]), "parts": [p.name for p in parts]}
    (out / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
    return parts


def unpacked(parts: Path) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """The tensors `pack` cut up, put back together and checked against the manifest's fingerprint (`UserError`
    naming what is missing or wrong otherwise)."""
    manifest = json.loads((parts / MANIFEST).read_text())
    missing = [name for name in manifest["parts"] if not (parts / name).is_file()]
    if missing:
        raise UserError(f"{parts} lacks {', '.join(missing)}; fix: send every part (one per device call) first")
    shape = manifest["shape"]
    images = {s: torch.empty((n, *shape), dtype=torch.uint8) for s, n in manifest["counts"].items()}
    labels = {s: torch.empty(n, dtype=torch.int64) for s, n in manifest["counts"].items()}
    for name in manifest["parts"]:
        for split, (start, x, y) in torch.load(parts / name, weights_only=True).items():
            images[split][start:start + len(x)], labels[split][start:start + len(y)] = x, y
    found = tensor_fingerprint(images["train"], labels["train"], images["test"], labels["test"])
    if found != manifest["fingerprint"]:
        raise UserError(f"the parts in {parts} give fingerprint {found[:12]}, not {manifest['fingerprint'][:12]}; "
                        "fix: pack them again and resend every part")
    return images, labels


def write_tree(images: dict[str, torch.Tensor], labels: dict[str, torch.Tensor], tree: Path, workers: int = 8) -> None:
    """A PNG tree whose sorted listing (`data.cifar10`: class folders in class order, files by name) gives the
    images back in the same order: each split's images are grouped by class, and file names are their indices."""
    jobs = []
    for split in SPLITS:
        if (torch.diff(labels[split]) < 0).any():
            raise UserError(f"the {split} images are not grouped by class; fix: pack from a CIFAR-10 image tree")
        width = len(str(len(images[split])))
        for name in CIFAR10_CLASSES:
            (tree / split / name).mkdir(parents=True, exist_ok=True)
        jobs += [(tree / split / CIFAR10_CLASSES[int(y)] / f"{i:0{width}d}.png", x)
                 for i, (x, y) in enumerate(zip(images[split], labels[split]))]

    def save(job):
        path, image = job
        Image.fromarray(image.permute(1, 2, 0).numpy()).save(path)

    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(save, jobs))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu_evidence", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("pack", help="here: CIFAR-10 as parts a device call can carry")
    p.add_argument("--data-root", required=True)
    p.add_argument("--out", default=str(PARTS))
    u = sub.add_parser("unpack", help="there: the parts as a PNG tree with the same pixels")
    u.add_argument("--parts", default=str(PARTS))
    u.add_argument("--tree", required=True)
    args = parser.parse_args(argv)
    try:
        if args.command == "pack":
            data = load_cifar10(args.data_root, download=False)
            parts = pack({"train": data.train_images, "test": data.test_images},
                         {"train": data.train_labels, "test": data.test_labels}, data.fingerprint, Path(args.out))
            for path in parts:
                print(f"{path} ({path.stat().st_size / 2**20:.1f} MiB): carry it in its own device call")
            print(f"fingerprint {data.fingerprint[:12]}")
        else:
            images, labels = unpacked(Path(args.parts))
            write_tree(images, labels, Path(args.tree))
            print(f"{args.tree}: {sum(len(x) for x in images.values())} PNG images")
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
