"""The artefact zoo through the pipeline: flags, spec keys, per-image masks in every score, and the audit's
per-image tests of an artefact that moves (`measure.moving`)."""

import hashlib
import json

import pytest
import torch
from torch import nn

from gradcam_repro.cli import build_parser, config_from_args, main
from gradcam_repro.config import Config
from gradcam_repro.data.artefact import Artefact
from gradcam_repro.data.bias import patch_artefact, plant
from gradcam_repro.data.images import EvalSet
from gradcam_repro.data.zoo import Planted, box_masks
from gradcam_repro.measure import moving, scores
from gradcam_repro.measure.shortcut import ShortcutProtocol, measure_shortcut, score_maps, uniform_share
from gradcam_repro.pipeline.spec import BiasSpec, ExperimentSpec
from gradcam_repro.runtime import Runtime


def snapshot(folder):
    return {p: p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("flags, expected", [
    (["--artefact", "sticker"], "unknown artefact kind 'sticker'"),
    (["--artefact", "text", "--artefact-text", "COPYRIGHT"], "px wide"),
    (["--artefact", "logo", "--opacity", "1.5"], "--opacity"),
    (["--artefact", "logo", "--opacity", "0"], "--opacity"),
    (["--artefact", "tint", "--strength", "500"], "--strength"),
    (["--artefact", "logo", "--jpeg-quality", "100"], "--jpeg-quality"),
    (["--artefact", "logo", "--jpeg-quality", "0"], "--jpeg-quality"),
    (["--artefact", "tint", "--placement", "random"], "--placement random"),
    (["--artefact", "frame", "--placement", "random"], "--placement random"),
])
def test_bad_artefact_options_are_one_line_exit_2_and_write_nothing(flags, expected, tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "summary.md").write_text("earlier results")
    before = snapshot(out)
    code = main(["run", "--preset", "smoke", "--dataset", "cifar10", "--out", str(out), *flags])
    err = capsys.readouterr().err
    assert code == 2 and expected in err, err
    assert err.count("\n") == 1 and "fix:" in err and "Traceback" not in err
    assert snapshot(out) == before


def test_the_flags_name_the_kind_and_placement():
    args = build_parser().parse_args(["run", "--artefact", "text", "--artefact-text", "(c)", "--placement", "random",
                                      "--jpeg-quality", "75", "--opacity", "0.8"])
    cfg = config_from_args(args)
    assert (cfg.artefact, cfg.artefact_text, cfg.patch_corner, cfg.jpeg_quality, cfg.opacity) == (
        "text", "(c)", "random", 75, 0.8)
    artefact = patch_artefact(BiasSpec.from_config(cfg).patch, 32)
    assert isinstance(artefact, Planted) and artefact.box is None and artefact.jpeg_quality == 75
    # --patch-corner still works, and the seed's square is the classic fixed-pixel artefact.
    square = config_from_args(build_parser().parse_args(["run", "--patch-corner", "bottom-right"]))
    assert isinstance(patch_artefact(BiasSpec.from_config(square).patch, 32), Artefact)


def _key_before_the_zoo(spec: ExperimentSpec) -> str:
    """How a spec's key was computed before artefact kinds existed: the bias as its six fields."""
    values = spec.to_dict()
    b = spec.bias
    values["bias"] = {"class_name": b.class_name, "patch_size": b.patch_size, "color": list(b.color), "corner": b.corner,
                      "offset": b.offset, "fraction": b.fraction}
    text = json.dumps({"version": 1, **values}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def test_square_keys_are_unchanged_and_every_other_option_is_in_the_key():
    cfg = Config(bias_class="frog")
    square = ExperimentSpec.from_config(cfg, "f" * 64, BiasSpec.from_config(cfg))
    assert square.key == _key_before_the_zoo(square)
    assert ExperimentSpec.from_dict(square.to_dict()).key == square.key
    # The text of a square changes nothing; every option of another kind changes the key, and reads back.
    assert ExperimentSpec.from_config(cfg, "f" * 64, BiasSpec.from_config(Config(bias_class="frog", artefact_text="X"))).key \
        == square.key
    keys = {square.key}
    for change in ({"artefact": "text"}, {"artefact": "text", "artefact_text": "AB"}, {"artefact": "logo"},
                   {"artefact": "logo", "jpeg_quality": 75}, {"artefact": "logo", "opacity": 0.5},
                   {"artefact": "tint", "strength": 4.0}, {"artefact": "text", "patch_corner": "random"}):
        spec = ExperimentSpec.from_config(cfg, "f" * 64, BiasSpec.from_config(Config(bias_class="frog", **change)))
        assert ExperimentSpec.from_dict(json.loads(json.dumps(spec.to_dict()))).key == spec.key
        keys.add(spec.key)
    assert len(keys) == 8


def test_a_random_artefacts_own_masks_drive_the_energy_and_the_uniform_reference():
    images = torch.randint(0, 256, (40, 3, 32, 32), dtype=torch.uint8)
    text = Planted(kind="text", placement="random", image_size=32)
    _, masks = text.apply(images, seed=3)
    assert len({tuple(moving.mask_boxes(masks[i:i + 1])[0].tolist()) for i in range(40)}) > 10  # it moves
    follows = masks.float()  # a hand-built map that lights up exactly the artefact, wherever it is
    scored = score_maps(follows, None, 0, masks=masks, tolerance=True)
    assert scored["energy"]["mean"] == 1.0 and scored["pointing"]["mean"] == 1.0
    elsewhere = masks.roll(16, dims=2).float() * ~masks  # the same shape somewhere the artefact is not
    assert score_maps(elsewhere, None, 0, masks=masks)["energy"]["mean"] == 0.0
    assert uniform_share(masks) == pytest.approx(masks.float().mean().item())
    assert scores.relevance_rank_accuracy(follows + 1e-3 * torch.rand(40, 32, 32), masks).min().item() == 1.0


def test_plant_returns_where_the_artefact_went_on_each_image():
    images = torch.zeros(30, 3, 32, 32, dtype=torch.uint8)
    labels = torch.arange(30) % 3
    logo = Planted(kind="logo", placement="random", size=5, image_size=32)
    out, patched, masks = plant(images, labels, 1, 0.5, 0, logo)
    assert int(patched.sum()) == 5 and not masks[~patched].any()
    assert torch.equal(masks.sum(dim=(1, 2))[patched], torch.full((5,), 25))
    assert torch.equal(out[~patched], images[~patched]) and (out[patched].flatten(1) != 0).any(dim=1).all()


class PatchDetector(nn.Module):
    """Class 1 when any pixel is bright yellow-ish (R and G high, B low), else class 0: relies on a yellow artefact."""

    def __init__(self):
        super().__init__()
        self.layer1 = nn.Conv2d(3, 2, 1)
        with torch.no_grad():
            self.layer1.weight.copy_(torch.tensor([[[[0.0]], [[0.0]], [[0.0]]], [[[1.0]], [[1.0]], [[-2.0]]]]))
            self.layer1.bias.copy_(torch.tensor([0.5, -2.5]))

    def forward(self, x):
        return torch.amax(self.layer1(x), dim=(2, 3))


def test_measure_shortcut_scores_a_moving_artefact_on_each_images_own_mask():
    gen = torch.Generator().manual_seed(0)
    images = (torch.rand(60, 3, 32, 32, generator=gen) * 100).to(torch.uint8)  # dark: nothing yellow
    labels = torch.arange(60) % 2
    patch = {"patch_size": 6, "color": (255, 255, 0), "corner": "random", "offset": 0, "kind": "logo"}
    protocol = ShortcutProtocol(1, patch, ("layer1",), "gradcam", seed=0)
    metrics, examples = measure_shortcut({"detector": PatchDetector()}, EvalSet(images, labels, ("a", "b")), protocol,
                                         Runtime.choose("cpu", "fp32"))
    m = metrics["models"]["detector"]
    assert m["flip_to_target"]["patch"]["mean"] == 1.0 and m["flip_to_target"]["none"]["mean"] == 0.0
    assert metrics["counterfactual_patches"]["patch"]["kind"] == "logo"
    assert metrics["uniform"]["energy_in_box"] == pytest.approx(36 / 1024)
    masks = examples["models"]["detector"]["patched_target_masks"]
    assert len({tuple(moving.mask_boxes(masks[i:i + 1])[0].tolist()) for i in range(len(masks))}) > 5


def test_shift_invariant_embedding_ignores_where_the_blob_is():
    maps = torch.zeros(3, 32, 32)
    maps[0, 4:8, 4:8] = 1
    maps[1, 20:24, 12:16] = 1  # the same blob elsewhere (on the 8x8 grid's cell boundaries)
    maps[2, 0:16, 0:32] = 1  # a different shape
    e = moving.shift_invariant_embedding(maps)
    assert abs(float(e[0] @ e[1]) - 1) < 1e-9 and float(e[0] @ e[2]) < 0.99


def test_peak_boxes_are_the_component_around_each_peak_capped_at_an_artefacts_size():
    maps = torch.zeros(2, 32, 32)
    maps[0, 10:15, 3:14] = 1.0
    maps[0, 12, 8] = 2.0  # the peak, inside a 5x11 component at >= half of it
    maps[1] = 1.0  # all relevant: the object, capped to a square of 1/8 of the image centred on the peak
    boxes = moving.peak_boxes(maps)
    assert boxes[0].tolist() == [10, 3, 15, 14]
    t, left, b, r = boxes[1].tolist()
    assert (b - t) == (r - left) == 11 and (b - t) * (r - left) <= 1024 / 8


def test_transplant_ring_fill_and_ious_per_image():
    sources = torch.full((2, 3, 8, 8), 200, dtype=torch.uint8)
    destinations = torch.zeros(3, 3, 8, 8, dtype=torch.uint8)
    boxes = torch.tensor([[0, 0, 2, 2], [4, 4, 8, 8]])
    masks = box_masks(boxes, 8, 8)
    pasted = moving.transplant(destinations, sources, masks)
    assert pasted[0, :, :2, :2].eq(200).all() and pasted[1, :, 4:, 4:].eq(200).all() and pasted[2, :, :2, :2].eq(200).all()
    assert int((pasted > 0).sum()) == 3 * (4 + 16 + 4)
    ramp = torch.arange(8, dtype=torch.uint8).view(1, 1, 1, 8).expand(2, 3, 8, 8) * 10
    filled = moving.ring_fill(ramp, masks, 1)
    assert torch.equal(filled[~masks[:, None].expand_as(filled)], ramp[~masks[:, None].expand_as(ramp)])
    assert filled[0, 0, 0, 0].item() == (20 + 20 + 0 + 10 + 20) / 5  # the ring: (0,2),(1,2),(2,0),(2,1),(2,2)
    assert torch.equal(moving.mask_boxes(masks), boxes)
    iou = moving.boxes_iou(boxes, torch.tensor([[0, 0, 2, 4], [0, 0, 1, 1]]))
    assert iou.tolist() == [0.5, 0.0]


@pytest.mark.slow  # trains two tiny shapes models
def test_a_run_with_a_moving_watermark_measures_and_reports_on_each_images_mask(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["run", "--preset", "smoke", "--dataset", "shapes", "--epochs", "1", "--train-subset", "300",
                 "--test-subset", "100", "--counterfactual-images", "40", "--cam-images", "16", "--figure-images", "2",
                 "--artefact", "text", "--placement", "random", "--jpeg-quality", "75", "--out", str(out), "--quiet"])
    assert code == 0, capsys.readouterr().err
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["box_tlbr_px"] is None  # a new place on every image
    pasted = metrics["counterfactual_patches"]
    assert (pasted["patch"]["kind"], pasted["patch"]["corner"], pasted["patch"]["jpeg_quality"]) == ("text", "random", 75)
    assert pasted["other_color"]["color"] == [0, 0, 255]  # the complement of the default yellow
    text_box = Planted(kind="text", placement="random").footprint()
    assert metrics["uniform"]["energy_in_box"] == pytest.approx(text_box[0] * text_box[1] / 1024)
    report = (out / "REPORT.md").read_text()
    assert "a text artefact '(c)'" in report and "at a random place on each image" in report
    assert "each image's artefact mask" in (out / "REPORT.html").read_text()
    assert (out / "figures" / "energy_distribution.png").is_file()
    assert main(["report", str(out)]) == 0  # rebuilt from metrics.json alone


def test_study_cells_keep_the_keys_they_had_before_the_zoo():
    from gradcam_repro.pipeline.grid import DEFAULT_METHODS, StudyGrid, plan_study

    grid = StudyGrid({"preset": "smoke", "dataset": "shapes"}, {"seed": (0,), "bias_fraction": (0.0, 1.0)}, DEFAULT_METHODS)
    keys = sorted(c.key for c in plan_study(grid, "unused", log=lambda line: None).cells)
    # Written by commit 193facf (before artefact kinds existed) for this grid: a study made then resumes as it is.
    assert keys == ["654f70f6e1a7fa42", "ddf4ec67aae72952"]
    text = StudyGrid({"preset": "smoke", "dataset": "shapes", "artefact": "text"}, {"seed": (0,), "bias_fraction": (1.0,)},
                     DEFAULT_METHODS)
    assert plan_study(text, "unused", log=lambda line: None).cells[0].key not in keys


def test_each_images_region_grows_through_the_ladder_until_its_removal_decides():
    maps = torch.zeros(3, 32, 32)
    maps[:, 10:20, 5:27] = 0.4  # a 10x22 mark: at >= 0.3 of the maximum, 220 px (more than 1/8, at most 1/4 of 1024)
    maps[:, 14:17, 10:13] = 1.0  # its 3x3 peak, alone at >= 0.5
    calls = []

    def decides(index: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        calls.append(index.tolist())
        covers = (boxes[:, 0] <= 10) & (boxes[:, 1] <= 5) & (boxes[:, 2] >= 20) & (boxes[:, 3] >= 27)
        return torch.where(index == 0, covers, index == 2)  # image 1 never decides, image 2 at once

    boxes, steps = moving.deciding_regions(maps, decides)
    assert steps.tolist() == [3, -1, 0]  # image 0 at (0.3, 1/4): the whole mark, not its 11x11 cap at 1/8
    assert boxes[0].tolist() == [10, 5, 20, 27] and boxes[1].tolist() == boxes[2].tolist() == [14, 10, 17, 13]
    # Step 0 tries all; (0.3, 1/8) the capped square; (0.5, 1/4) gives step 0's box again, so nobody is tried;
    # (0.3, 1/4) the whole mark; (0.5, 1/2) and (0.3, 1/2) give boxes image 1 was already tried with.
    assert calls == [[0, 1, 2], [0, 1], [0, 1]]
