"""Datasets as in-memory uint8 tensors: CIFAR-10 (three sources) and the synthetic shapes set.

CIFAR-10 is looked for under a data root (``--data-root``, else
``$GRADCAM_DATA_ROOT``, else ``./data``) as
  (a) the canonical ``cifar-10-batches-py/`` folder (read through torchvision),
  (b) an image-folder tree ``train/<class>/*`` and ``test/<class>/*``,
  (c) neither: the torchvision download into the root is tried.
An image-folder tree is decoded once into a cache file keyed by a fingerprint
of the tree (paths, sizes, modification times), so later runs load in about a
second.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from torchvision.datasets import CIFAR10
from torchvision.io import ImageReadMode, decode_image, read_file

from gradcam_repro.data.images import IMAGE_SIZE, ImageData, tensor_fingerprint
from gradcam_repro.errors import UserError
from gradcam_repro.store import torch_save

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
# Bump when the cache layout or the decoder changes, so stale caches are not reused.
_CACHE_VERSION = 1
_IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png"}
# Decoded images between two progress calls (a few ms of work each time).
_PROGRESS_EVERY = 500


def resolve_data_root(flag: str | None) -> Path:
    """``--data-root`` if given, else ``$GRADCAM_DATA_ROOT``, else ``./data``."""
    return Path(flag or os.environ.get("GRADCAM_DATA_ROOT") or "data").expanduser()


def default_cache_dir() -> Path:
    return Path(os.environ.get("GRADCAM_CACHE_DIR") or "data/cache").expanduser()


def load_cifar10(root: str | Path, cache_dir: str | Path | None = None, download: bool = True,
                 progress: Callable[[int, int], None] | None = None) -> ImageData:
    """CIFAR-10 from `root` (see module docstring); raises `UserError` with the fix if absent or corrupt.

    progress(done, total): images decoded so far, while an image-folder tree is decoded (not from the cache).
    """
    root = Path(root)
    batches = _find_batches_folder(root)
    if batches is not None:
        return _load_batches_py(batches)
    if (root / "train").is_dir() and (root / "test").is_dir():
        return _load_image_tree(root, Path(cache_dir) if cache_dir else default_cache_dir(), progress)
    if download:
        error = _try_download(root)
        if error is None:
            return _load_batches_py(root / "cifar-10-batches-py")
    else:
        error = "download disabled"
    raise UserError(
        f"no CIFAR-10 under {root.resolve()} (looked for {root / 'cifar-10-batches-py'} and "
        f"{root / 'train'}/<class>/, {root / 'test'}/<class>/; download failed: {error}); "
        "fix: pass --data-root (or set GRADCAM_DATA_ROOT) to a folder holding either layout, "
        "or run once with internet access so torchvision can download it"
    )


def _find_batches_folder(root: Path) -> Path | None:
    for candidate in (root / "cifar-10-batches-py", root):
        if (candidate / "data_batch_1").is_file() and (candidate / "test_batch").is_file():
            return candidate
    return None


def _try_download(root: Path) -> str | None:
    """Try torchvision's download into `root`; return None on success, else a short reason."""
    try:
        root.mkdir(parents=True, exist_ok=True)
        CIFAR10(str(root), train=True, download=True)
    except Exception as exc:  # network, disk, checksum: all end in the same advice
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return reason[:200]
    return None


def _load_batches_py(folder: Path) -> ImageData:
    root = folder.parent
    if folder.name != "cifar-10-batches-py":
        raise UserError(
            f"found CIFAR-10 batches in {folder} but torchvision needs the folder to be named "
            "cifar-10-batches-py; fix: rename it or pass its parent as --data-root"
        )
    splits = {}
    for train in (True, False):
        try:
            ds = CIFAR10(str(root), train=train, download=False)
        except Exception as exc:
            raise UserError(f"cannot read CIFAR-10 batches in {folder} ({exc}); fix: re-download the folder") from None
        images = torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous()
        splits[train] = (images, torch.tensor(ds.targets, dtype=torch.int64))
    (tr_x, tr_y), (te_x, te_y) = splits[True], splits[False]
    return ImageData(
        "cifar10", CIFAR10_CLASSES, tr_x, tr_y, te_x, te_y,
        fingerprint=tensor_fingerprint(tr_x, tr_y, te_x, te_y), source=str(folder.resolve()),
    )


def _list_tree(root: Path) -> dict[str, list[tuple[Path, int]]]:
    """{'train': [(file, label), ...], 'test': [...]} in a stable order; checks the class folders."""
    listing = {}
    for split in ("train", "test"):
        split_dir = root / split
        found = sorted(p.name for p in split_dir.iterdir() if p.is_dir())
        if tuple(found) != CIFAR10_CLASSES:
            missing = sorted(set(CIFAR10_CLASSES) - set(found))
            extra = sorted(set(found) - set(CIFAR10_CLASSES))
            raise UserError(
                f"{split_dir} must hold one folder per CIFAR-10 class (missing: {missing or 'none'}, "
                f"unexpected: {extra or 'none'}); fix: point --data-root at a complete CIFAR-10 tree"
            )
        files = []
        for label, name in enumerate(CIFAR10_CLASSES):
            class_files = sorted(p for p in (split_dir / name).iterdir() if p.is_file() and not p.name.startswith("."))
            if not class_files:
                raise UserError(f"class folder {split_dir / name} is empty; fix: restore its images or use a complete tree")
            files.extend((p, label) for p in class_files)
        listing[split] = files
    return listing


def _tree_key(listing: dict[str, list[tuple[Path, int]]], root: Path) -> str:
    """Cheap fingerprint of the tree from stat() alone (no file reads)."""
    digest = hashlib.sha256(f"v{_CACHE_VERSION}".encode())
    for split, files in listing.items():
        for path, label in files:
            st = path.stat()
            digest.update(f"{split}/{path.relative_to(root / split)}:{label}:{st.st_size}:{st.st_mtime_ns};".encode())
    return digest.hexdigest()


def _decode_file(path: Path) -> torch.Tensor:
    if path.suffix.lower() not in _IMAGE_SUFFIXES:
        raise UserError(f"not an image file: {path}; fix: remove it from the data tree (images must be .jpg or .png)")
    try:
        data = read_file(str(path))
    except RuntimeError:
        raise UserError(f"empty or unreadable image file: {path}; fix: remove or restore it") from None
    try:
        image = decode_image(data, mode=ImageReadMode.UNCHANGED)
    except RuntimeError as exc:
        reason = "truncated" if "truncated" in str(exc) or "incomplete" in str(exc) else "unreadable"
        raise UserError(f"{reason} image file: {path}; fix: remove or restore it") from None
    if tuple(image.shape) != (3, IMAGE_SIZE, IMAGE_SIZE):
        raise UserError(
            f"image {path} is {tuple(image.shape[1:])} with {image.shape[0]} channel(s), expected 32x32 RGB; "
            "fix: remove it or convert the tree to 32x32 RGB images"
        )
    return image


def _load_image_tree(root: Path, cache_dir: Path, progress: Callable[[int, int], None] | None = None) -> ImageData:
    listing = _list_tree(root)
    key = _tree_key(listing, root)
    cache_file = cache_dir / f"cifar10-tree-{key[:20]}.pt"
    if cache_file.is_file():
        try:
            cached = torch.load(cache_file, weights_only=True)
            return ImageData("cifar10", CIFAR10_CLASSES, fingerprint=cached.pop("fingerprint"), source=str(root.resolve()), **cached)
        except Exception:
            pass  # an unreadable cache is rebuilt below
    tensors, done, total = {}, 0, sum(len(files) for files in listing.values())
    if progress is not None:
        progress(0, total)
    for split, files in listing.items():
        images = torch.empty((len(files), 3, IMAGE_SIZE, IMAGE_SIZE), dtype=torch.uint8)
        with warnings.catch_warnings():
            # torchvision >= 0.29 flags its image codecs as deprecated on every call.
            warnings.simplefilter("ignore", DeprecationWarning)
            for i, (path, _) in enumerate(files):
                images[i] = _decode_file(path)
                done += 1
                if progress is not None and (done % _PROGRESS_EVERY == 0 or done == total):
                    progress(done, total)
        tensors[f"{split}_images"] = images
        tensors[f"{split}_labels"] = torch.tensor([label for _, label in files], dtype=torch.int64)
    fingerprint = tensor_fingerprint(
        tensors["train_images"], tensors["train_labels"], tensors["test_images"], tensors["test_labels"]
    )
    try:
        torch_save(cache_file, {**tensors, "fingerprint": fingerprint})
    except OSError:
        pass  # a read-only cache folder only costs the decode next time
    return ImageData("cifar10", CIFAR10_CLASSES, fingerprint=fingerprint, source=str(root.resolve()), **tensors)
