"""Your own images as a dataset (`--dataset folder`): class folders under a root, any size, brought to one size.

The tree under ``--data-root`` is either
  (a) ``train/<class>/*`` and ``test/<class>/*``, or
  (b) ``train/<class>/*`` alone, or ``<class>/*`` alone: a seeded, class-stratified TEST_SHARE of each class is
      then held out as the test split (the same split whatever --seed, so that seeds train on the same data).
Class names are the sorted folder names of the training tree; hidden files and folders are skipped, and a class
folder's sub-folders are read too. Pixels are read as stored (RGB; grayscale, palette and alpha images are
converted, the alpha dropped; EXIF orientation is not applied, as in torchvision's ImageFolder) and brought to
one (H, W) size by a policy of `fit_image`. Nothing is written: unlike CIFAR-10 there is no decode cache.
"""

from __future__ import annotations

import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from torchvision.io import ImageReadMode, decode_image, read_file
from torchvision.transforms.v2 import functional as TF

from gradcam_repro.config import MAX_IMAGE_PIXELS, MIN_IMAGE_SIDE, RESIZE_POLICIES
from gradcam_repro.data.images import ImageData, tensor_fingerprint
from gradcam_repro.errors import UserError

# A tree without test/: the share of each class held out for testing, and the seed that picks it.
TEST_SHARE = 0.2
SPLIT_SEED = 0
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
# Formats torchvision decodes (fast, in C++); the others, and anything it refuses, go through PIL.
_TORCHVISION_FORMATS = {"JPEG", "PNG"}
# Decoded images between two progress calls: a large photo takes tens of ms.
_PROGRESS_EVERY = 100


@dataclass(frozen=True)
class FolderTree:
    """The image files of a class-folder tree: `classes` (sorted folder names), (file, label) pairs per split,
    and `note`, how the test split was made where the tree has none ("" otherwise)."""

    classes: tuple[str, ...]
    train: list[tuple[Path, int]]
    test: list[tuple[Path, int]]
    note: str = ""


def _train_dir(root: Path) -> Path:
    """Where the training classes are: train/, else the root itself (a tree of <class>/ folders)."""
    return root / "train" if (root / "train").is_dir() else root


def _class_folders(split_dir: Path) -> tuple[str, ...]:
    return tuple(sorted(p.name for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith(".")))


def _files(folder: Path) -> Iterator[Path]:
    """The files under `folder`, hidden ones and those in hidden folders left out."""
    return (p for p in folder.rglob("*")
            if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts))


def _empty_class(folder: Path) -> UserError:
    return UserError(f"class folder {folder} holds no images; fix: add its images or remove the folder")


def _class_files(split_dir: Path, names: tuple[str, ...], classes: tuple[str, ...]) -> list[tuple[Path, int]]:
    """(file, label) for every file of the class folders `names` of `split_dir`, labels indexing `classes`."""
    files = []
    for name in names:
        found = sorted(_files(split_dir / name))
        if not found:
            raise _empty_class(split_dir / name)
        files.extend((p, classes.index(name)) for p in found)
    return files


def folder_classes(root: str | Path) -> tuple[str, ...]:
    """The class names of the tree at `root` (sorted folder names of its training tree); reads no image.

    Raises `UserError` where `root` is missing, has test/ without train/, fewer than two class folders, or a class
    folder without a file."""
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"no image folder at {root}; fix: pass --data-root a folder holding train/<class>/ "
                        "(and test/<class>/) or <class>/ folders of images")
    if (root / "test").is_dir() and not (root / "train").is_dir():
        raise UserError(f"{root} has test/ but no train/; fix: put the training images in {root / 'train'}/<class>/")
    train_dir = _train_dir(root)
    classes = _class_folders(train_dir)
    if not classes:
        raise UserError(f"no class folders in {train_dir}; fix: put each class's images in its own folder, "
                        f"{train_dir}/<class>/")
    if len(classes) == 1:
        raise UserError(f"{train_dir} holds only one class folder ({classes[0]!r}); fix: add a folder per class, "
                        "at least two")
    empty = next((name for name in classes if next(_files(train_dir / name), None) is None), None)
    if empty is not None:  # before anything counts the classes: an empty folder is not a class
        raise _empty_class(train_dir / empty)
    return classes


def list_folder_tree(root: str | Path) -> FolderTree:
    """The classes and image files of the tree at `root` (module docstring); reads no image.

    Raises `UserError` naming the problem and the fix for a missing root, fewer than two classes, an empty class
    folder, or a test class that training lacks."""
    root = Path(root)
    classes = folder_classes(root)
    train_dir, test_dir = _train_dir(root), root / "test"
    train = _class_files(train_dir, classes, classes)
    if not test_dir.is_dir():
        train_at, test_at = stratified_split(torch.tensor([label for _, label in train]), TEST_SHARE, SPLIT_SEED)
        note = f"no test/ folder: a seeded {TEST_SHARE:.0%} of each class held out for testing"
        return FolderTree(classes, [train[i] for i in train_at], [train[i] for i in test_at], note)
    test_names = _class_folders(test_dir)
    extra = [name for name in test_names if name not in classes]
    if extra:
        raise UserError(f"class {extra[0]!r} is in {test_dir} but not in {train_dir}; fix: add its training images "
                        f"as {train_dir / extra[0]}/ or remove {test_dir / extra[0]}")
    if not test_names:
        raise UserError(f"no class folders in {test_dir}; fix: put each class's test images in {test_dir}/<class>/ "
                        "or remove test/ to hold out a share of train/")
    return FolderTree(classes, train, _class_files(test_dir, test_names, classes))


def stratified_split(labels: torch.Tensor, test_share: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(train, test) indices into (N,) int64 `labels`, both sorted: a seeded `test_share` of each class (at least
    one image of a class with two or more, never its last) goes to test."""
    gen = torch.Generator().manual_seed(seed)
    is_test = torch.zeros(len(labels), dtype=torch.bool)
    for c in labels.unique():
        where = (labels == c).nonzero().squeeze(1)
        n_test = min(len(where) - 1, max(1, round(test_share * len(where))))
        is_test[where[torch.randperm(len(where), generator=gen)[:n_test]]] = True
    return (~is_test).nonzero().squeeze(1), is_test.nonzero().squeeze(1)


@contextmanager
def _pil_bomb_check_off() -> Iterator[None]:
    """PIL's own bomb check raises before a size is known; `read_header` checks MAX_IMAGE_PIXELS itself and
    names the size. Only headers are read while it is off."""
    from PIL import Image

    limit, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
    try:
        yield
    finally:
        Image.MAX_IMAGE_PIXELS = limit


def read_header(path: Path) -> tuple[str, tuple[int, int]]:
    """(format, (H, W)) of an image file, from its header alone. Raises `UserError` for a file that is no image,
    or above MAX_IMAGE_PIXELS pixels (a small file can declare a huge canvas, a "decompression bomb")."""
    from PIL import Image, UnidentifiedImageError

    if path.suffix.lower() not in IMAGE_SUFFIXES:
        raise UserError(f"not an image file: {path}; fix: remove it from the tree (images end in "
                        f"{', '.join(sorted(IMAGE_SUFFIXES))})")
    try:
        with Image.open(path) as im:
            fmt, (width, height) = im.format, im.size
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        reason = "not an image" if isinstance(exc, UnidentifiedImageError) else str(exc).splitlines()[0][:120]
        raise UserError(f"unreadable image file: {path} ({reason}); fix: remove or replace it") from None
    if width * height > MAX_IMAGE_PIXELS:
        raise UserError(f"image {path} is {height}x{width} px (HxW) = {width * height:,} pixels, above the limit "
                        f"of {MAX_IMAGE_PIXELS:,}; fix: downscale it first or remove it")
    return fmt, (height, width)


def decode_rgb(path: Path, fmt: str) -> torch.Tensor:
    """The file's pixels as (3, H, W) uint8 RGB: grayscale, palette and alpha images converted (alpha dropped),
    16-bit PNGs rounded to 8 bits. Raises `UserError` naming a file that cannot be decoded."""
    if fmt in _TORCHVISION_FORMATS:
        try:
            image = decode_image(read_file(str(path)), mode=ImageReadMode.RGB)
        except RuntimeError:
            image = None  # truncated, or a variant it lacks: PIL below reads it or names the problem
        if image is not None and image.dtype == torch.uint16:
            return ((image.to(torch.int32) * 255 + 32767) // 65535).to(torch.uint8)
        if image is not None:
            return image
    return _decode_with_pil(path)


def _decode_with_pil(path: Path) -> torch.Tensor:
    from PIL import Image

    try:
        with Image.open(path) as im:
            im = im.convert("RGBA") if im.mode in ("P", "PA", "LA") else im  # palette transparency, then drop it
            im = im.convert("RGB")
            pixels = torch.frombuffer(bytearray(im.tobytes()), dtype=torch.uint8).view(im.height, im.width, 3)
    except (OSError, ValueError, SyntaxError) as exc:  # SyntaxError: PIL on a broken PNG chunk
        reason = str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__
        raise UserError(f"unreadable image file: {path} ({reason}); fix: remove or replace it") from None
    return pixels.permute(2, 0, 1).contiguous()


def fit_image(image: torch.Tensor, size: tuple[int, int], policy: str) -> torch.Tensor:
    """(3, h, w) uint8 -> (3, H, W) uint8 for `size` = (H, W), by `policy` (config.RESIZE_POLICIES):

    resize       stretch to (H, W) (the aspect ratio changes where it differs);
    centre-crop  scale to the smallest size that covers (H, W), keep the middle (no distortion; for a square
                 size this scales the short side to it);
    pad          scale to the largest size that fits inside (H, W), centre it on black (no distortion).
    Scaling is bilinear with antialiasing; an image already (H, W) is returned as it is."""
    (h, w), (height, width) = image.shape[-2:], size
    if (h, w) == (height, width):
        return image
    if policy == "resize":
        return TF.resize(image, [height, width], antialias=True)
    if policy not in RESIZE_POLICIES:
        raise UserError(f"--resize must be one of {', '.join(RESIZE_POLICIES)}, got {policy!r}")
    cover = policy == "centre-crop"
    scale = max(height / h, width / w) if cover else min(height / h, width / w)
    # Rounding may leave a side one px off: clamp it to the target, from above for cover, below for fit.
    nh, nw = (max(1, round(h * scale)), max(1, round(w * scale)))
    nh, nw = (max(nh, height), max(nw, width)) if cover else (min(nh, height), min(nw, width))
    scaled = image if (nh, nw) == (h, w) else TF.resize(image, [nh, nw], antialias=True)
    if cover:
        top, left = (nh - height) // 2, (nw - width) // 2
        return scaled[:, top:top + height, left:left + width].contiguous()
    out = torch.zeros((3, height, width), dtype=torch.uint8)
    top, left = (height - nh) // 2, (width - nw) // 2
    out[:, top:top + nh, left:left + nw] = scaled
    return out


def common_size(headers: dict[Path, tuple[str, tuple[int, int]]]) -> tuple[int, int]:
    """The (H, W) every image shares; `UserError` asking for --image-size where they differ."""
    example: dict[tuple[int, int], Path] = {}  # one file of each size
    for path, (_, size) in headers.items():
        example.setdefault(size, path)
    if len(example) == 1:
        return next(iter(example))
    (a_size, a), (b_size, b) = list(example.items())[:2]
    usual = Counter(size for _, size in headers.values()).most_common(1)[0][0]
    raise UserError(f"the images differ in size ({a} is {a_size[0]}x{a_size[1]} px, {b} is {b_size[0]}x{b_size[1]} "
                    f"px, HxW; {len(example)} sizes in all); fix: pass --image-size, e.g. --image-size "
                    f"{usual[0]}x{usual[1]} (the most common), and a --resize policy")


def load_folder(root: str | Path, image_size: tuple[int, int] | None = None, resize: str = "centre-crop",
                progress: Callable[[int, int], None] | None = None) -> ImageData:
    """The class-folder tree at `root` (module docstring) as (N, 3, H, W) uint8 images with (N,) int64 labels.

    image_size: (H, W) in px, None for the images' own size where they all share one. resize: the policy of
    `fit_image`. progress(done, total): images decoded so far. Every header is read (and checked) before any
    image is decoded; bad input raises a one-line `UserError`. The fingerprint covers the decoded tensors."""
    if resize not in RESIZE_POLICIES:
        raise UserError(f"--resize must be one of {', '.join(RESIZE_POLICIES)}, got {resize!r}")
    root = Path(root)
    tree = list_folder_tree(root)
    with _pil_bomb_check_off():
        headers = {path: read_header(path) for path, _ in tree.train + tree.test}
    size = image_size if image_size is not None else common_size(headers)
    if min(size) < MIN_IMAGE_SIDE:
        raise UserError(f"the images are {size[0]}x{size[1]} px, below the {MIN_IMAGE_SIDE} px minimum; "
                        f"fix: pass --image-size {MIN_IMAGE_SIDE} or more")
    counter = _ProgressCounter(len(headers), progress)
    tensors = {}
    for split, files in (("train", tree.train), ("test", tree.test)):
        tensors[f"{split}_images"] = _decode_all([(path, headers[path][0]) for path, _ in files], size, resize, counter)
        tensors[f"{split}_labels"] = torch.tensor([label for _, label in files], dtype=torch.int64)
    fingerprint = tensor_fingerprint(tensors["train_images"], tensors["train_labels"], tensors["test_images"],
                                     tensors["test_labels"])
    how = f"{size[0]}x{size[1]} px" + ("" if image_size is None else f", {resize}")
    source = f"{root.resolve()} ({how}{'; ' + tree.note if tree.note else ''})"  # the note reaches the data log line
    return ImageData("folder", tree.classes, fingerprint=fingerprint, source=source, **tensors)


@dataclass
class _ProgressCounter:
    """Calls progress(done, total) at the start, every _PROGRESS_EVERY images and at the end."""

    total: int
    progress: Callable[[int, int], None] | None
    done: int = 0

    def __post_init__(self) -> None:
        if self.progress is not None:
            self.progress(0, self.total)

    def step(self) -> None:
        self.done += 1
        if self.progress is not None and (self.done % _PROGRESS_EVERY == 0 or self.done == self.total):
            self.progress(self.done, self.total)


def _decode_all(files: list[tuple[Path, str]], size: tuple[int, int], resize: str,
                counter: _ProgressCounter) -> torch.Tensor:
    """(N, 3, H, W) uint8: each (file, format) decoded and brought to `size` = (H, W) as it is read, so that
    only one full-size image is held at a time."""
    images = torch.empty((len(files), 3, *size), dtype=torch.uint8)
    with warnings.catch_warnings():
        # torchvision >= 0.29 flags its image codecs as deprecated on every call.
        warnings.simplefilter("ignore", DeprecationWarning)
        for i, (path, fmt) in enumerate(files):
            images[i] = fit_image(decode_rgb(path, fmt), size, resize)
            counter.step()
    return images
