"""`--dataset folder`: your own class folders at any size, brought to one (H, W) size, and every bad input named."""

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from gradcam_repro.config import Config, parse_image_size, preset_config
from gradcam_repro.data import folder as folder_mod
from gradcam_repro.data.folder import fit_image, folder_classes, list_folder_tree, load_folder, stratified_split
from gradcam_repro.data.registry import DATASETS, dataset_for
from gradcam_repro.errors import UserError

CLASSES = ("cat", "dog", "emu")


def pixels_of(i: int, label: int, size_wh=(48, 64)) -> Image.Image:
    """A distinct, seeded RGB image (PIL sizes are (W, H): (48, 64) is 64 rows by 48 columns)."""
    gen = torch.Generator().manual_seed(1000 * label + i)
    data = torch.randint(0, 256, (size_wh[1], size_wh[0], 3), dtype=torch.uint8, generator=gen)
    return Image.fromarray(data.numpy(), "RGB")


def as_tensor(image: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(image.convert("RGB")).copy()).permute(2, 0, 1)


def make_tree(root: Path, splits=(("train", 6), ("test", 2)), classes=CLASSES, size_wh=(48, 64)) -> dict:
    """root/<split>/<class>/<i>.png (lossless); returns the written pixels per split, in load order."""
    written = {}
    for split, n in splits:
        images = []
        for label, name in enumerate(classes):
            folder = root / split / name if split else root / name
            folder.mkdir(parents=True)
            for i in range(n):
                image = pixels_of(i, label, size_wh)
                image.save(folder / f"{i:03d}.png")
                images.append(as_tensor(image))
        written[split] = torch.stack(images)
    return written


def test_a_train_and_test_tree_loads_every_image_with_labels_from_the_sorted_folder_names(tmp_path):
    written = make_tree(tmp_path)
    data = load_folder(tmp_path)
    assert data.name == "folder" and data.classes == CLASSES
    assert data.train_images.dtype == torch.uint8 and data.train_images.shape == (18, 3, 64, 48)
    assert data.test_images.shape == (6, 3, 64, 48)
    assert torch.equal(data.train_images, written["train"]) and torch.equal(data.test_images, written["test"])
    assert data.train_labels.dtype == torch.int64 and data.train_labels.tolist() == [c for c in range(3) for _ in range(6)]
    assert data.test_labels.tolist() == [0, 0, 1, 1, 2, 2]
    assert data.source.startswith(str(tmp_path.resolve())) and "64x48 px" in data.source


def test_the_fingerprint_records_the_pixels_and_the_size(tmp_path):
    make_tree(tmp_path)
    first, again = load_folder(tmp_path), load_folder(tmp_path, progress=lambda done, total: None)
    assert first.fingerprint == again.fingerprint and len(first.fingerprint) == 64
    assert load_folder(tmp_path, (32, 24)).fingerprint != first.fingerprint
    Image.new("RGB", (48, 64), (1, 2, 3)).save(tmp_path / "train" / "cat" / "000.png")
    assert load_folder(tmp_path).fingerprint != first.fingerprint


def test_image_size_is_height_by_width_and_every_policy_gives_that_shape(tmp_path):
    make_tree(tmp_path)
    assert parse_image_size("32x24") == (32, 24) and parse_image_size("40") == (40, 40)
    assert parse_image_size(" 16 X 8 ") == (16, 8) and parse_image_size(None) is None
    for policy in ("resize", "centre-crop", "pad"):
        data = load_folder(tmp_path, (32, 40), policy)
        assert data.train_images.shape == (18, 3, 32, 40) and data.test_images.shape == (6, 3, 32, 40)
        assert "32x40 px, " + policy in data.source


def two_colour_strip() -> torch.Tensor:
    """(3, 32, 64): columns 0-15 red, 16-47 blue, 48-63 green."""
    image = torch.zeros((3, 32, 64), dtype=torch.uint8)
    image[0, :, :16] = 255
    image[2, :, 16:48] = 255
    image[1, :, 48:] = 255
    return image


def test_centre_crop_keeps_the_middle_without_distortion():
    # Covering 32x32 needs no scaling (the short side is 32 already): the middle 32 columns are all blue.
    out = fit_image(two_colour_strip(), (32, 32), "centre-crop")
    assert out.shape == (3, 32, 32) and bool((out[2] == 255).all()) and bool((out[:2] == 0).all())


def test_resize_stretches_so_every_colour_stays():
    # Halving the width: columns 0-6 are still pure red, 9-22 pure blue, 25-31 pure green (only the seams blend).
    out = fit_image(two_colour_strip(), (32, 32), "resize")
    assert out.shape == (3, 32, 32)
    assert bool((out[:, :, :7] == torch.tensor([255, 0, 0]).view(3, 1, 1)).all())
    assert bool((out[:, :, 9:23] == torch.tensor([0, 0, 255]).view(3, 1, 1)).all())
    assert bool((out[:, :, 25:] == torch.tensor([0, 255, 0]).view(3, 1, 1)).all())


def test_pad_fits_the_whole_image_on_black_borders():
    strip = two_colour_strip()
    out = fit_image(strip, (64, 64), "pad")  # fits at scale 1: 16 black rows above and below
    assert out.shape == (3, 64, 64) and torch.equal(out[:, 16:48], strip)
    assert bool((out[:, :16] == 0).all()) and bool((out[:, 48:] == 0).all())
    half = fit_image(strip, (32, 32), "pad")  # scaled to 16x32, then 8 black rows above and below
    assert bool((half[:, :8] == 0).all()) and bool((half[:, 24:] == 0).all()) and bool((half[2, 8:24, 12:20] == 255).all())


def test_an_image_already_at_the_size_is_left_as_it_is():
    strip = two_colour_strip()
    for policy in ("resize", "centre-crop", "pad"):
        assert fit_image(strip, (32, 64), policy) is strip


def test_a_tree_of_mixed_sizes_needs_an_image_size_then_loads(tmp_path):
    make_tree(tmp_path, splits=(("train", 3),), classes=("a", "b"), size_wh=(48, 64))
    Image.new("RGB", (300, 200), (9, 9, 9)).save(tmp_path / "train" / "b" / "big.png")
    with pytest.raises(UserError, match=r"the images differ in size .*big\.png is 200x300 px.*"
                                         r"fix: pass --image-size, e.g. --image-size 64x48"):
        load_folder(tmp_path)
    data = load_folder(tmp_path, (56, 56), "centre-crop")
    assert data.train_images.shape[1:] == (3, 56, 56) and len(data.train_labels) + len(data.test_labels) == 7
    big = torch.cat([data.train_images, data.test_images])[torch.cat([data.train_labels, data.test_labels]) == 1]
    assert any(bool((image == 9).all()) for image in big)  # the 300x200 grey image, cropped, is still all grey


def test_without_a_test_folder_a_seeded_stratified_share_of_each_class_is_held_out(tmp_path):
    make_tree(tmp_path, splits=(("train", 10),))
    data = load_folder(tmp_path)
    assert data.test_labels.bincount().tolist() == [2, 2, 2] and data.train_labels.bincount().tolist() == [8, 8, 8]
    assert "no test/ folder: a seeded 20% of each class held out for testing" in data.source
    train = {tuple(x.flatten()[:16].tolist()) for x in data.train_images}
    assert not train & {tuple(x.flatten()[:16].tolist()) for x in data.test_images}  # no image in both
    assert load_folder(tmp_path).fingerprint == data.fingerprint  # the same split every time
    flat = tmp_path / "flat"
    make_tree(flat, splits=(("", 10),))  # <class>/ folders straight under the root
    assert torch.equal(load_folder(flat).test_images, data.test_images)


def test_the_split_is_class_stratified_keeps_every_class_in_training_and_follows_the_seed():
    labels = torch.tensor([0] * 10 + [1] * 5 + [2] * 1)
    train, test = stratified_split(labels, 0.2, seed=0)
    assert labels[test].bincount(minlength=3).tolist() == [2, 1, 0]
    assert sorted(torch.cat([train, test]).tolist()) == list(range(16)) and train.tolist() == sorted(train.tolist())
    assert torch.equal(stratified_split(labels, 0.2, seed=0)[1], test)
    assert any(not torch.equal(stratified_split(labels, 0.2, seed=s)[1], test) for s in range(1, 5))


def test_grayscale_palette_alpha_and_other_formats_are_read_as_rgb(tmp_path):
    for name in ("a", "b"):
        (tmp_path / "train" / name).mkdir(parents=True)
    Image.new("L", (16, 16), 100).save(tmp_path / "train" / "a" / "gray.png")
    palette = Image.new("P", (16, 16))
    palette.putpalette([10, 20, 30] * 256)
    palette.save(tmp_path / "train" / "a" / "palette.png")
    Image.new("RGBA", (16, 16), (1, 2, 3, 128)).save(tmp_path / "train" / "b" / "alpha.png")
    Image.new("RGB", (16, 16), (7, 8, 9)).save(tmp_path / "train" / "b" / "bitmap.bmp")
    Image.new("L", (16, 16), 60).save(tmp_path / "train" / "b" / "photo.jpg")
    data = load_folder(tmp_path)
    images = torch.cat([data.train_images, data.test_images])
    assert images.shape[1:] == (3, 16, 16)
    corners = {tuple(image[:, 0, 0].tolist()) for image in images}
    assert {(100, 100, 100), (10, 20, 30), (1, 2, 3), (7, 8, 9)} <= corners
    assert any(abs(c[0] - 60) <= 1 and c[0] == c[1] == c[2] for c in corners)  # JPEG: within a level


def test_the_registry_names_the_folder_dataset_and_lists_its_classes_from_the_tree(tmp_path):
    make_tree(tmp_path)
    config = preset_config("smoke", dataset="folder", data_root=str(tmp_path), image_size="32", resize="pad").validate()
    dataset = dataset_for(config)
    assert "folder" in DATASETS and dataset.classes == CLASSES and dataset.default_bias_class == "cat"
    data = dataset.load(config)
    assert data.train_images.shape == (18, 3, 32, 32) and data.classes == CLASSES
    assert set(DATASETS["folder"].reads) == {"data_root", "image_size", "resize"}
    assert dataset_for(preset_config("smoke")) is DATASETS["cifar10"]


def test_the_folder_fields_leave_the_records_and_keys_of_other_datasets_as_they_were():
    config = preset_config("quick")
    old_fields = {f.name for f in dataclasses.fields(Config)} - {"image_size", "resize", "arch"}  # arch: at its default
    assert set(config.to_dict()) == old_fields  # so study cell keys, which hash to_dict(), do not move
    assert Config.from_dict(config.to_dict()) == config
    folder = preset_config("quick", dataset="folder", image_size="64x48", resize="pad")
    assert folder.to_dict()["image_size"] == "64x48" and Config.from_dict(folder.to_dict()) == folder


def expect_user_error(match: str, call, *args, names_fix: bool = True):
    """`call(*args)` raises a one-line UserError matching `match` (and saying "fix:", unless it is one of
    Config.validate's "--flag must be ..." lines, which are their own fix)."""
    with pytest.raises(UserError, match=match) as info:
        call(*args)
    assert "\n" not in str(info.value) and ("fix:" in str(info.value) or not names_fix)


def test_an_image_size_that_does_not_parse_or_is_too_small_is_named():
    for text in ("64x", "x48", "big", "64x48x3", "-4", "6.5"):
        expect_user_error(rf"--image-size '{text}' is not a size; fix: pass HEIGHTxWIDTH in px like 64x48, "
                          "or one number like 64 for a square", parse_image_size, text)
    expect_user_error(r"--image-size 4 \(4x4 px\) is below the 8 px minimum; fix: pass at least 8 px a side",
                      parse_image_size, "4")
    expect_user_error(r"--image-size 64x7 \(64x7 px\) is below the 8 px minimum", parse_image_size, "64x7")
    expect_user_error("--image-size 'tiny' is not a size", Config(dataset="folder", image_size="tiny").validate)


def test_folder_flags_on_another_dataset_or_an_unknown_policy_are_refused():
    expect_user_error(r"--image-size applies to --dataset folder only, got --dataset cifar10; "
                      r"fix: drop --image-size or pass --dataset folder", Config(image_size="64").validate)
    expect_user_error(r"--resize applies to --dataset folder only, got --dataset shapes",
                      Config(dataset="shapes", resize="pad").validate)
    expect_user_error(r"--resize must be one of resize, centre-crop, pad, got 'squash'",
                      Config(dataset="folder", resize="squash").validate, names_fix=False)


def bad_tree(tmp_path: Path, damage: str) -> Path:
    make_tree(tmp_path)
    train, test = tmp_path / "train", tmp_path / "test"
    if damage == "one class":
        for name in ("dog", "emu"):
            for p in (train / name).iterdir():
                p.unlink()
            (train / name).rmdir()
    elif damage == "empty class":
        for p in (train / "dog").iterdir():
            p.unlink()
        (train / "dog" / ".DS_Store").write_bytes(b"hidden files do not count")
    elif damage == "unreadable":
        (train / "emu" / "002.png").write_bytes(b"not a png at all")
    elif damage == "truncated":
        data = (train / "emu" / "002.png").read_bytes()
        (train / "emu" / "002.png").write_bytes(data[: len(data) // 2])
    elif damage == "not an image":
        (train / "emu" / "notes.txt").write_text("hello")
    elif damage == "test-only class":
        (test / "fox").mkdir()
        Image.new("RGB", (48, 64)).save(test / "fox" / "0.png")
    elif damage == "no train":
        for p in sorted(train.rglob("*"), reverse=True):
            p.unlink() if p.is_file() else p.rmdir()
        train.rmdir()
    return tmp_path


@pytest.mark.parametrize("damage, expected", [
    ("one class", r"train holds only one class folder \('cat'\); fix: add a folder per class, at least two"),
    ("empty class", r"class folder .*train/dog holds no images; fix: add its images or remove the folder"),
    ("unreadable", r"unreadable image file: .*train/emu/002\.png \(not an image\); fix: remove or replace it"),
    ("truncated", r"unreadable image file: .*train/emu/002\.png \(.*\); fix: remove or replace it"),
    ("not an image", r"not an image file: .*train/emu/notes\.txt; fix: remove it from the tree"),
    ("test-only class", r"class 'fox' is in .*test but not in .*train; fix: add its training images as "
                        r".*train/fox/ or remove .*test/fox"),
    ("no train", r"has test/ but no train/; fix: put the training images in .*train/<class>/"),
])
def test_a_bad_tree_names_the_problem_and_the_fix(tmp_path, damage, expected):
    expect_user_error(expected, load_folder, bad_tree(tmp_path, damage))


def test_an_empty_class_folder_is_named_before_the_classes_are_counted(tmp_path):
    """`audit` compares the model's class count with the tree's before it loads a file: an empty folder must not
    count as a class there (it did: "the model has 2 classes but dataset folder has 3")."""
    root = bad_tree(tmp_path, "empty class")
    expect_user_error(r"class folder .*train/dog holds no images", folder_classes, root)
    expect_user_error(r"class folder .*train/dog holds no images", dataset_for,
                      preset_config("smoke", dataset="folder", data_root=str(root)))


def test_a_missing_root_or_a_root_without_class_folders_is_named(tmp_path):
    expect_user_error(r"no image folder at .*nowhere; fix: pass --data-root a folder holding train/<class>/",
                      load_folder, tmp_path / "nowhere")
    (tmp_path / "train").mkdir()
    expect_user_error(r"no class folders in .*train; fix: put each class's images in its own folder",
                      load_folder, tmp_path)
    expect_user_error(r"no image folder at .*nowhere", dataset_for,
                      preset_config("smoke", dataset="folder", data_root=str(tmp_path / "nowhere")))


def test_a_decompression_bomb_is_refused_from_its_header(tmp_path, monkeypatch):
    make_tree(tmp_path, splits=(("train", 2),), classes=("a", "b"))
    monkeypatch.setattr(folder_mod, "MAX_IMAGE_PIXELS", 1000)  # 64x48 = 3,072 pixels
    decoded = []
    monkeypatch.setattr(folder_mod, "decode_rgb", lambda *args: decoded.append(args))
    expect_user_error(r"image .*\.png is 64x48 px \(HxW\) = 3,072 pixels, above the limit of 1,000; fix: downscale it first",
                      load_folder, tmp_path)
    assert decoded == []  # refused before anything was decoded


def test_images_below_eight_pixels_need_an_image_size(tmp_path):
    make_tree(tmp_path, splits=(("train", 2),), classes=("a", "b"), size_wh=(6, 6))
    expect_user_error(r"the images are 6x6 px, below the 8 px minimum; fix: pass --image-size 8 or more",
                      load_folder, tmp_path)
    assert load_folder(tmp_path, (8, 8), "resize").train_images.shape[1:] == (3, 8, 8)


def test_the_tree_listing_skips_hidden_files_and_reads_sub_folders(tmp_path):
    make_tree(tmp_path, splits=(("train", 2), ("test", 1)))
    (tmp_path / "train" / ".ipynb_checkpoints").mkdir()
    (tmp_path / "train" / "cat" / ".thumbs").mkdir()
    (tmp_path / "train" / "cat" / ".thumbs" / "x.png").write_bytes(b"junk")
    (tmp_path / "train" / "cat" / "more").mkdir()
    pixels_of(9, 0).save(tmp_path / "train" / "cat" / "more" / "9.png")
    tree = list_folder_tree(tmp_path)
    assert tree.classes == CLASSES and tree.note == ""
    assert [label for _, label in tree.train] == [0, 0, 0, 1, 1, 2, 2]
    assert tree.train[2][0].name == "9.png"


def test_run_trains_on_a_folder_tree_with_its_own_classes_at_its_own_size(tmp_path):
    # The run's model is built for the tree's class count (it used to be built for the registry's empty class list
    # before the tree was read, and every `run` or `study` on --dataset folder stopped at "--num-classes must be >= 2").
    import json

    from gradcam_repro.cli import main
    from gradcam_repro.pipeline.prepare import validated

    make_tree(tmp_path / "tree", splits=(("train", 12), ("test", 6)))
    config = validated(preset_config("smoke", dataset="folder", data_root=str(tmp_path / "tree"), image_size="48x64",
                                     arch="resnet18_imagenet"))
    assert config.bias_class == "cat" and config.cam_layer == "layer4"  # the tree's first class; 2x2 at 48x64
    # The artefact is checked against the images' size (it was against 32x32 whatever the size).
    tree = {"dataset": "folder", "data_root": str(tmp_path / "tree"), "image_size": "64"}
    assert validated(preset_config("smoke", patch_size=40, **tree)).patch_size == 40
    with pytest.raises(UserError, match="patch of 70 px at offset 0 px does not fit a 64x64 px image"):
        validated(preset_config("smoke", patch_size=70, **tree))
    out = tmp_path / "run"
    assert main(["run", "--preset", "smoke", "--dataset", "folder", "--data-root", str(tmp_path / "tree"),
                 "--image-size", "48x64", "--arch", "resnet18_imagenet", "--bias-class", "dog", "--quiet",
                 "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["dataset"]["classes"] == list(CLASSES) and metrics["config"]["arch"] == "resnet18_imagenet"
    assert set(metrics["models"]["biased"]["per_class_acc"]) == set(CLASSES)
