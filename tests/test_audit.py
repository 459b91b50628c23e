"""The shortcut audit: SpRAy discovery finds an artefact nobody described, and the causal tests confirm it.

The discovery and confirmation claims are checked on a small CNN trained inside the test (seconds) on the
shapes set, with and without a planted patch; the command line is checked on CIFAR ResNet-18 checkpoints.
"""

import json

import numpy as np
import pytest
import torch
from cam_helpers import SmallCNN, seeded_resnet, train_small_cnn
from torch import nn

from gradcam_repro.cli import main
from gradcam_repro.config import Config
from gradcam_repro.data.artefact import fill_from_ring, median_pixels, paste_pixels
from gradcam_repro.data.bias import bias_dataset, inject_patch, patch_box, plant
from gradcam_repro.data.images import EvalSet, ImageData
from gradcam_repro.data.registry import Dataset
from gradcam_repro.data.shapes import SHAPES_CLASSES, make_shapes
from gradcam_repro.data.zoo import Planted
from gradcam_repro.measure import spray
from gradcam_repro.measure.predict import predict
from gradcam_repro.model.sources import InputContract, attach
from gradcam_repro.runtime import Runtime

CPU = Runtime(torch.device("cpu"))
PATCH = {"patch_size": 6, "color": (255, 255, 0), "corner": "top-left", "offset": 0}
BOX = patch_box(32, 6)
# The class a 3-epoch small CNN learns last: the yellow square is then by far the easier cue, as it is for
# frog in the CIFAR ResNet-18 (0% recall on clean frogs once trained with the patch).
SHORTCUT = "crescent"
TARGET = SHAPES_CLASSES.index(SHORTCUT)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def shapes():
    train_x, train_y, _ = make_shapes(2000, seed=1)
    test_x, test_y, _ = make_shapes(1000, seed=2)
    return train_x, train_y, test_x, test_y


def model_with_patch_on(shapes, fraction: float) -> nn.Module:
    train_x, train_y, _, _ = shapes
    if fraction > 0:
        train_x, _ = bias_dataset(train_x, train_y, TARGET, fraction, 0, **PATCH)
    return train_small_cnn(train_x, train_y)


def flip_rate(model, shapes) -> float:
    """Share of non-crescent test images the model calls crescent once the patch is pasted."""
    _, _, test_x, test_y = shapes
    others = test_y != TARGET
    return (predict(model, inject_patch(test_x[others], **PATCH), CPU) == TARGET).float().mean().item()


def audited(model, shapes, test_fraction: float) -> dict:
    """The audit (SpRAy at conv2 with HiResCAM) on the test set with `test_fraction` of crescents patched."""
    _, _, test_x, test_y = shapes
    images, patched = bias_dataset(test_x, test_y, TARGET, test_fraction, 0, **PATCH)
    data = EvalSet(images, test_y, tuple(SHAPES_CLASSES), patched=patched, planted_box=BOX)
    result, _ = spray.audit_model(model, data, spray.AuditSettings(layer="conv2"), CPU)
    return result


# ----- the claims, on models trained here --------------------------------------------------------------------

@pytest.mark.slow  # trains a small CNN on 2,000 images
def test_a_model_that_learnt_the_patch_is_caught_and_the_patch_is_found_without_being_told(shapes):
    model = model_with_patch_on(shapes, 1.0)
    assert flip_rate(model, shapes) >= 0.9  # it has learnt the shortcut: the test below has something to find
    result = audited(model, shapes, 1.0)
    assert result["ranking"][0]["class"] == SHORTCUT
    assert result["confirmed"] == [SHORTCUT]
    found = result["candidates"][0]
    assert found["class"] == SHORTCUT and found["kind"] == "constant pixels"
    assert found["iou_with_planted_box"] >= 0.5
    assert found["transplant_flip"]["low"] >= 0.5 and found["occluded_flip"]["high"] < 0.2
    assert found["mean_rgb"] == [255.0, 255.0, 0.0]


@pytest.mark.slow  # trains a small CNN on 2,000 images
def test_the_same_model_trained_without_the_patch_is_not_flagged(shapes):
    model = model_with_patch_on(shapes, 0.0)
    assert flip_rate(model, shapes) < 0.1  # the patch means nothing to it
    result = audited(model, shapes, 1.0)  # even though every test crescent carries the patch
    assert result["confirmed"] == []
    assert all(c["verdict"] != spray.CONFIRMED for c in result["candidates"])


@pytest.mark.slow  # trains a small CNN on 2,000 images
def test_when_half_the_class_carries_the_patch_the_clusters_separate_patched_from_unpatched(shapes):
    model = model_with_patch_on(shapes, 0.5)
    assert flip_rate(model, shapes) >= 0.7
    result = audited(model, shapes, 0.5)
    crescent = result["classes"][SHORTCUT]
    assert crescent["n_clusters"] >= 2
    assert crescent["adjusted_rand_index"] >= 0.8
    assert result["confirmed"] == [SHORTCUT]
    found = result["candidates"][0]
    assert found["cluster"] in found["artefact_clusters"]
    assert crescent["adjusted_rand_index_artefact"] >= 0.8


def test_clusters_that_carry_the_confirmed_artefact_form_its_sub_population():
    images = torch.zeros(9, 3, 8, 8, dtype=torch.uint8)
    images[:6, :, :2, :2] = 250  # clusters 0 and 1 carry the artefact (one of them a little darker)
    images[3:6, :, :2, :2] = 235
    ids = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 2])
    region = {"box": (0, 0, 2, 2), "kind": "constant pixels"}
    record = {"clusters": [{"cluster": 0, "region": region}, {"cluster": 1, "region": {**region, "box": (0, 0, 2, 3)}},
                           {"cluster": 2, "region": region}]}  # cluster 2: the same place, but black there
    pixels = torch.full((3, 2, 2), 250, dtype=torch.uint8)
    assert spray.artefact_clusters(record, images, ids, (0, 0, 2, 2), pixels) == [0, 1]
    record["clusters"][1]["region"] = {**region, "kind": "relevance only"}
    assert spray.artefact_clusters(record, images, ids, (0, 0, 2, 2), pixels) == [0]


class CodeOrRedCorner(nn.Module):
    """Calls an image class 0 where its bottom-right 4x4 corner is red, else the class coded in pixel (0, 0)'s green
    value (20 x class): a hand-built model that relies on the corner completely, for a hand-computable audit."""

    def __init__(self):
        super().__init__()
        attach(self, InputContract(mean=(0.0, 0.0, 0.0), std=(1 / 255, 1 / 255, 1 / 255)))  # the model sees 0-255

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        code = (x[:, 1, 0, 0] / 20).round().long().clamp(0, 2)
        logits = nn.functional.one_hot(code, 3).float()
        red = (x[:, 0, -4:, -4:].mean(dim=(1, 2)) > 200) & (x[:, 1, -4:, -4:].mean(dim=(1, 2)) < 50)
        return torch.where(red[:, None], torch.tensor([1.0, 0.0, 0.0]), logits)


def test_a_class_whose_artefact_sits_in_its_second_cluster_is_confirmed_by_that_clusters_constant_pixels():
    # Class 0's best-scored cluster (its unpatched half) points at the object in the middle; its second cluster
    # carries the red corner. Testing only the best cluster's region (the rule before) finds nothing.
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(60, 200, (120, 3, 16, 16), generator=gen, dtype=torch.uint8)
    labels = torch.arange(3).repeat_interleave(40)
    images[:, 1, 0, 0] = (labels * 20).to(torch.uint8)
    images[20:40, 0, -4:, -4:], images[20:40, 1:, -4:, -4:] = 255, 0
    data = EvalSet(images, labels, ("a", "b", "c"))
    predictions = predict(CodeOrRedCorner(), images, CPU)
    assert (predictions == labels).all()
    members = torch.arange(40)
    record = {"clusters": [
        {"cluster": 0, "n": 20, "score": 5.0, "region": {"box": (6, 6, 10, 10), "kind": "relevance only",
                                                         "relevance_box": (6, 6, 10, 10), "constant_px": 0}},
        {"cluster": 1, "n": 20, "score": 3.0, "region": {"box": (12, 12, 16, 16), "kind": "constant pixels",
                                                         "relevance_box": (11, 11, 16, 16), "constant_px": 16}}],
        "peak_clusters": []}
    examples = {"members": members, "cluster_ids": (members >= 20).long(), "peak_ids": torch.zeros(40, dtype=torch.long)}
    found = (predictions, torch.zeros(120, 16, 16))
    best, _ = spray.test_class(CodeOrRedCorner(), data, found, "a", record, examples, spray.AuditSettings(), CPU)
    assert (best["cluster"], best["verdict"], best["box_tlbr_px"]) == (1, spray.CONFIRMED, [12, 12, 16, 16])
    assert best["transplant_flip"]["mean"] == 1.0  # every other image with the corner pasted is called class 0
    # The shared-pixel test (rules 5) finds the same corner, carried by half the class, and confirms it too. The
    # shared-blur test (rules 8) finds it as well (a constant square has no fine detail), and blurring that corner on
    # other images moves none of them: no finding.
    assert [(t["test"], t["cluster"], t["verdict"]) for t in best["also_tested"]] == [
        (spray.SHARED_TEST, None, spray.CONFIRMED), (spray.FIXED_TEST, 0, spray.NONE), (spray.BLUR_TEST, None, spray.NONE)]
    blur = next(t for t in best["also_tested"] if t["test"] == spray.BLUR_TEST)
    assert blur["transplant_flip"]["mean"] == 0.0


# ----- the pieces, on hand-built inputs with known answers ---------------------------------------------------

def test_transplant_pastes_exactly_the_given_pixels_inside_the_box_and_nothing_else():
    images = torch.zeros(2, 3, 8, 8, dtype=torch.uint8)
    pixels = torch.arange(18, dtype=torch.uint8).view(3, 2, 3)
    out = paste_pixels(images, pixels, (1, 2, 3, 5))
    assert torch.equal(out[:, :, 1:3, 2:5], pixels.expand(2, 3, 2, 3))
    out[:, :, 1:3, 2:5] = 0
    assert not out.any() and not images.any()  # nothing else changed, the input untouched


def test_removal_fills_the_box_with_the_mean_colour_of_a_ring_around_it():
    image = torch.zeros(1, 3, 8, 8, dtype=torch.uint8)
    image[:, :, 2:4, 2:4] = 255  # the artefact
    image[:, 0, 0:2, :] = 90  # red in the top two rows: 2 x 6 = 12 of the ring's 32 pixels (rows 0-5, cols 0-5)
    out = fill_from_ring(image, (2, 2, 4, 4), ring_px=2)
    assert out[0, :, 2:4, 2:4].tolist() == [[[34, 34], [34, 34]], [[0, 0], [0, 0]], [[0, 0], [0, 0]]]  # 90 * 12 / 32
    assert torch.equal(out[:, :, :2], image[:, :, :2])
    whole = fill_from_ring(image, (0, 0, 8, 8))  # no ring left: the image's own mean
    assert whole[0, 1].unique().tolist() == [round(255 * 4 / 64)]


def test_the_pasted_pixels_are_the_per_pixel_median_of_the_cluster():
    images = torch.stack([torch.full((3, 4, 4), v, dtype=torch.uint8) for v in (0, 50, 200)])
    assert median_pixels(images, (1, 1, 3, 2)).unique().tolist() == [50]
    assert median_pixels(images, (1, 1, 3, 2)).shape == (3, 2, 1)


def _images_with_patch(n: int, contaminated: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g)
    images[contaminated:, :, 10:14, 20:25] = torch.tensor([200, 30, 30], dtype=torch.uint8).view(3, 1, 1)
    return images


def test_the_candidate_region_is_the_constant_patch_even_when_relevance_peaks_beside_it():
    images = _images_with_patch(40, contaminated=4)  # 4 of 40 images in the cluster lack the patch
    reference = spray.pixel_spread(torch.randint(0, 256, (200, 3, 32, 32), dtype=torch.uint8))
    mean = torch.zeros(32, 32)
    mean[9:15, 24:28] = 1.0  # the map lights up the patch's right edge and beyond, as mid-layer CAMs do
    region = spray.candidate_region(images, reference, mean)
    assert region["kind"] == "constant pixels" and region["box"] == (10, 20, 14, 25) and region["constant_px"] == 20
    assert region["relevance_box"] == (9, 24, 15, 28)


def test_a_watermarks_region_holds_every_glyph_not_only_the_largest():
    """The glyphs of '(c)' at scale 2 are separate constant areas 3-4 px apart: the region is the whole text (what
    the model relies on), even where the relevance covers only its middle glyph, not the largest glyph alone, as
    it was before (an audit of a text model, issue 23)."""
    planted = Planted(kind="text", size=10, color=(255, 255, 255), placement="bottom-right")
    clean = torch.randint(0, 256, (60, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(2))
    images, masks = planted.apply(clean)
    mean = torch.zeros(32, 32)
    mean[24:30, 18:24] = 1.0  # the map lights up the middle glyph only: the search window misses '(' and ')'
    region = spray.candidate_region(images, spray.pixel_spread(clean), mean)
    ink = masks[0] & (images[0] != clean[0]).any(dim=0)
    rows, cols = ink.nonzero(as_tuple=True)
    assert region["kind"] == "constant pixels"
    assert region["box"] == (int(rows.min()), int(cols.min()), int(rows.max()) + 1, int(cols.max()) + 1) == planted.box
    labelled = spray._component_box(ink.numpy(), np.ones((32, 32), dtype=bool))  # one glyph alone: what it was
    assert spray.box_iou(labelled, planted.box) < 0.5


def test_without_constant_pixels_the_candidate_region_is_where_relevance_concentrates():
    images = torch.randint(0, 256, (40, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    mean = torch.zeros(32, 32)
    mean[5:9, 5:12] = 1.0
    mean[20:22, 20:22] = 0.9  # a second bright area, not connected to the peak's
    region = spray.candidate_region(images, spray.pixel_spread(images), mean)
    assert region == {"box": (5, 5, 9, 12), "kind": "relevance only", "relevance_box": (5, 5, 9, 12), "constant_px": 0}


def _maps_at(places: list[tuple[int, int]], per_place: int, seed: int = 0) -> tuple[torch.Tensor, np.ndarray]:
    """Maps with an 8x8 blob at one of `places` each, plus noise; and which place each came from."""
    g = torch.Generator().manual_seed(seed)
    maps, truth = [], []
    for k, (row, col) in enumerate(places):
        m = 0.1 * torch.rand(per_place, 32, 32, generator=g)
        m[:, row:row + 8, col:col + 8] += 1.0
        maps.append(m)
        truth += [k] * per_place
    return torch.cat(maps), np.array(truth)


def test_spectral_clustering_separates_maps_by_where_their_relevance_sits_and_the_eigengap_counts_the_groups():
    maps, truth = _maps_at([(0, 0), (12, 12), (24, 0)], per_place=30)
    affinity = spray.knn_affinity(spray.embed_maps(maps))
    spectrum = spray.laplacian_spectrum(affinity)
    assert spectrum[0] == pytest.approx(0.0, abs=1e-9) and np.all(np.diff(spectrum) >= -1e-9)
    k, gap = spray.eigengap(spectrum)
    assert k == 3 and gap > 0.5
    assert spray.adjusted_rand(spray.spectral_clusters(affinity, k), truth) == pytest.approx(1.0)
    one_place, _ = _maps_at([(4, 4)], per_place=60)
    assert spray.eigengap(spray.laplacian_spectrum(spray.knn_affinity(spray.embed_maps(one_place))))[0] == 1


def test_fixed_place_energy_is_near_one_for_maps_at_one_place_and_uniform_for_flat_maps():
    maps, _ = _maps_at([(8, 16)], per_place=20)
    mask = spray.fixed_place_mask(spray.mean_map(maps))
    assert mask.sum() == spray.FIXED_PLACE_PX and mask[8:16, 16:24].all()
    # Blob 64 px x 1.05 on average against 960 px x 0.05 of noise: 67.2 / 115.2 of the mass.
    assert spray.fixed_place_energy(maps, mask).mean().item() == pytest.approx(67.2 / 115.2, abs=0.01)
    maps[:, :8] = 0
    maps[:, 16:] = 0
    maps[:, :, :16] = 0
    maps[:, :, 24:] = 0
    assert spray.fixed_place_energy(maps, mask).tolist() == pytest.approx([1.0] * 20)
    flat = torch.ones(5, 32, 32)
    assert spray.fixed_place_energy(flat, spray.fixed_place_mask(spray.mean_map(flat))).tolist() == [64 / 1024] * 5


def _rate(mean, low, high):
    return {"mean": mean, "low": low, "high": high, "n": 500}


@pytest.mark.parametrize("transplanted, occluded, removal, kind, expected", [
    (_rate(0.95, 0.93, 0.97), _rate(0.02, 0.01, 0.03), _rate(0.9, 0.8, 0.95), "constant pixels", spray.CONFIRMED),
    (_rate(0.95, 0.93, 0.97), _rate(0.02, 0.01, 0.03), _rate(0.0, 0.0, 0.0), "relevance only", spray.CONFIRMED),
    (_rate(0.95, 0.93, 0.97), _rate(0.95, 0.93, 0.97), _rate(0.9, 0.8, 0.95), "relevance only", spray.NONE),  # occlusion alone does it
    (_rate(0.52, 0.48, 0.56), _rate(0.02, 0.01, 0.03), _rate(0.1, 0.05, 0.15), "constant pixels", spray.CANDIDATE),
    (_rate(0.52, 0.48, 0.56), _rate(0.02, 0.01, 0.03), _rate(0.1, 0.05, 0.15), "relevance only", spray.NONE),
    (_rate(0.03, 0.01, 0.05), _rate(0.02, 0.01, 0.03), _rate(0.7, 0.6, 0.8), "constant pixels", spray.CANDIDATE),
    (_rate(0.03, 0.01, 0.05), _rate(0.02, 0.01, 0.03), _rate(0.7, 0.6, 0.8), "relevance only", spray.NONE),
])
def test_verdict_rules(transplanted, occluded, removal, kind, expected):
    untouched = _rate(0.02, 0.01, 0.03)
    assert spray.verdict(transplanted, occluded, untouched, removal, kind)[0] == expected


class _Bright(nn.Module):
    """Class 1 for images brighter than mid-grey, else class 0 (inputs normalised to about [-2, 2.5])."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = x.mean(dim=(1, 2, 3))
        return torch.stack([-m, m], dim=1)


def test_the_occluded_control_is_measured_only_where_the_transplant_reaches_the_candidate_bar():
    def never() -> torch.Tensor:
        raise AssertionError("the occluded images were made below the candidate bar")

    below = _rate(0.09, spray.CANDIDATE_FLIP_RATE - 0.01, 0.12)
    assert spray.occluded_control(_Bright(), below, 1, never, 0, CPU) is None
    # Without it, the verdict is still "none" below the bar, except by the removal rule of constant pixels, and
    # the test is ranked by its effect over the untouched control alone.
    untouched = _rate(0.02, 0.01, 0.03)
    assert spray.verdict(below, None, untouched, _rate(0.1, 0.05, 0.15), "relevance only")[0] == spray.NONE
    assert "occluded not measured" in spray.verdict(below, None, untouched, _rate(0.1, 0.05, 0.15), "relevance only")[1]
    assert spray.verdict(below, None, untouched, _rate(0.7, 0.6, 0.8), "constant pixels")[0] == spray.CANDIDATE
    record = {"transplant_flip": below, "occluded_flip": None, "untouched": untouched}
    assert spray.effect(record) == pytest.approx(below["low"] - untouched["high"])
    # At the bar it is measured: 3 of 4 occluded images are bright, so 75% are called class 1.
    occluded = torch.zeros(4, 3, 8, 8, dtype=torch.uint8)
    occluded[:3] = 255
    at_bar = _rate(0.2, spray.CANDIDATE_FLIP_RATE, 0.3)
    measured = spray.occluded_control(_Bright(), at_bar, 1, lambda: occluded, 0, CPU)
    assert measured["mean"] == pytest.approx(0.75) and measured["n"] == 4


def test_box_iou():
    assert spray.box_iou((0, 0, 6, 6), (0, 0, 6, 6)) == 1.0
    assert spray.box_iou((0, 0, 6, 6), (0, 3, 6, 9)) == pytest.approx(18 / 54)
    assert spray.box_iou((0, 0, 6, 6), (10, 10, 12, 12)) == 0.0


# ----- the command line on CIFAR ResNet-18 checkpoints --------------------------------------------------------

@pytest.fixture
def run_folder(tmp_path):
    """A run folder as `gradcam-repro run --dataset shapes` writes it, with an untrained ResNet-18 as "biased"."""
    run = tmp_path / "run"
    config = Config(preset="smoke", dataset="shapes", shapes_train=10, shapes_test=60, bias_class=SHORTCUT)
    for name, key in (("baseline", "0" * 16), ("biased", "1" * 16)):
        folder = run / "experiments" / key
        folder.mkdir(parents=True)
        torch.save(seeded_resnet().state_dict(), folder / "model.pt")
        (folder / "spec.json").write_text(json.dumps({"key": key, "name": name, "config": config.to_dict(),
                                                      "dataset": {"classes": list(SHAPES_CLASSES)}}))
    (run / "run.json").write_text(json.dumps({"config": config.to_dict(),
                                              "experiments": {"baseline": "0" * 16, "biased": "1" * 16}}))
    return run


def test_audit_command_writes_json_markdown_and_figures_for_a_run_folder(run_folder, capsys):
    code = main(["audit", str(run_folder), "--patch-test-fraction", "0.5", "--device", "cpu", "--json"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    out = run_folder / "audit"
    summary = json.loads(captured.out)  # --json: stdout is one JSON document, the final line went to stderr
    assert summary["audit_json"] == str(out / "audit.json") and summary["confirmed"] == []
    assert "see " in captured.err
    result = json.loads((out / "audit.json").read_text())
    assert result["experiment"] == "biased" and result["model"].endswith("1" * 16 + "/model.pt")
    assert (result["settings"]["method"], result["settings"]["layer"]) == (spray.AUDIT_METHOD, spray.AUDIT_LAYER)
    assert result["default_method_layer"] is True
    # The pasted share is recorded, and it is what was pasted: half of the test crescents.
    pasted = result["dataset"]["patched_test"]
    _, labels, _ = make_shapes(60, seed=2)  # the run's test split (seed 0 -> make_shapes seed 2)
    assert pasted["class"] == SHORTCUT and len(pasted["indices"]) == round(0.5 * int((labels == TARGET).sum()))
    assert all(labels[i] == TARGET for i in pasted["indices"]) and pasted["box_tlbr_px"] == list(BOX)
    discovered = [name for name, rec in result["classes"].items() if "eigenvalues" in rec]
    assert discovered and all(len(result["classes"][n]["eigenvalues"]) == spray.SPECTRUM_SIZE for n in discovered)
    # Every discovered class with a group big enough is tested (one finding per class), strongest first.
    tested = [c["class"] for c in result["candidates"]]
    assert len(tested) == len(set(tested)) and set(tested) <= set(discovered) and len(tested) >= 1
    assert [c["rank"] for c in result["candidates"]] == list(range(1, len(tested) + 1))
    effects = [spray.effect(c) for c in result["candidates"] if c["verdict"] == spray.NONE]
    assert effects == sorted(effects, reverse=True)
    for rel in result["figures"]:
        assert (out / rel).stat().st_size > 1000
    assert {"figures/audit_ranking.png", "figures/audit_prototypes.png"} <= set(result["figures"])
    report = (out / "AUDIT.md").read_text()
    assert "# Shortcut audit: biased" in report and "HiResCAM at `layer2`" in report and "figures/audit_ranking.png" in report
    # The colour-cast scan ran (3 classes, each re-measured on images the scan did not use) and is in the report.
    assert len(result["colour_casts"]) == 3 and result["settings"]["colour_casts"]["levels"] == 8
    assert all(c["flip"]["n"] > 0 for c in result["colour_casts"]) and "## Global colour casts" in report


def test_no_colour_casts_leaves_the_scan_out_and_says_so(run_folder, capsys):
    assert main(["audit", str(run_folder), "--device", "cpu", "--quiet", "--no-colour-casts"]) == 0, capsys.readouterr().err
    result = json.loads((run_folder / "audit" / "audit.json").read_text())
    assert "colour_casts" not in result and result["settings"]["colour_casts"] is None
    assert "## Global colour casts" not in (run_folder / "audit" / "AUDIT.md").read_text()


@pytest.mark.parametrize("flags, expected", [
    (["--experiment", "repaired"], "run {run} has no experiment 'repaired'; fix: pass --experiment as one of baseline, biased"),
    (["--layer", "layer9"], "unknown layer 'layer9'; fix: pass --layer as one of"),
    (["--patch-test-fraction", "1.5"], "--patch-test-fraction must be in [0, 1], got 1.5"),
    (["--seed", "-1"], "--seed must be in 0..4294967295, got -1"),  # it used to be numpy's traceback, mid-audit
    (["--classes", "toad"], "unknown class 'toad'; fix: pass --classes from circle"),
    # The untrained model calls every image "cross": a circle cluster would have no image.
    (["--classes", "circle"], "class 'circle' has 0 test image(s) predicted as it, fewer than the 20 needed"),
    (["--artefact", "text"], "the artefact flags (--artefact, --placement, ...) need --patch-test-fraction"),
    (["--patch-test-fraction", "0.5", "--artefact", "logo", "--opacity", "3"], "--opacity"),
    (["--patch-test-fraction", "0.5", "--artefact", "tint", "--placement", "random"], "--placement random"),
])
def test_bad_input_is_a_one_line_error_and_nothing_is_written(run_folder, capsys, flags, expected):
    code = main(["audit", str(run_folder), "--device", "cpu", *flags])
    err = capsys.readouterr().err
    assert code == 2 and expected.format(run=run_folder) in err, err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert not (run_folder / "audit" / "audit.json").exists()


def test_the_artefact_pasted_for_checking_can_be_any_kind_and_place(run_folder, capsys):
    code = main(["audit", str(run_folder), "--patch-test-fraction", "0.5", "--artefact", "text", "--placement", "random",
                 "--jpeg-quality", "75", "--device", "cpu", "--quiet"])
    assert code == 0, capsys.readouterr().err
    pasted = json.loads((run_folder / "audit" / "audit.json").read_text())["dataset"]["patched_test"]
    assert pasted["box_tlbr_px"] is None  # a new place on every image: no one box
    assert (pasted["patch"]["kind"], pasted["patch"]["corner"], pasted["patch"]["jpeg_quality"]) == ("text", "random", 75)


def test_a_checkpoint_of_another_architecture_is_refused(tmp_path, capsys):
    path = tmp_path / "small.pt"
    torch.save(SmallCNN().state_dict(), path)
    assert main(["audit", str(path), "--dataset", "shapes", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "does not match the CIFAR ResNet-18" in err and err.count("\n") == 1
    assert not (tmp_path / "out").exists()


def test_an_empty_dataset_is_refused(tmp_path, capsys, monkeypatch):
    from gradcam_repro.pipeline import audit as pipeline_audit

    empty = torch.empty(0, 3, 32, 32, dtype=torch.uint8), torch.empty(0, dtype=torch.int64)
    data = ImageData("shapes", tuple(SHAPES_CLASSES), *empty, *empty, fingerprint="0" * 64, source="an empty folder")
    monkeypatch.setattr(pipeline_audit, "dataset_for",
                        lambda config: Dataset(config.dataset, tuple(SHAPES_CLASSES), SHORTCUT, lambda cfg: data))
    path = tmp_path / "model.pt"
    torch.save(seeded_resnet().state_dict(), path)
    assert main(["audit", str(path), "--dataset", "shapes", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "dataset shapes from an empty folder has no test images; fix:" in err and err.count("\n") == 1
    assert not (tmp_path / "out" / "audit.json").exists()


# ----- an artefact that moves ----------------------------------------------------------------------------------

MOVING = Planted(kind="logo", size=5, color=(255, 0, 0), placement="random", image_size=32)


@pytest.mark.slow  # trains a small CNN on 2,000 images
def test_a_logo_at_a_new_place_on_every_image_is_found_by_the_per_image_test(shapes):
    train_x, train_y, test_x, test_y = shapes
    model = train_small_cnn(bias_dataset(train_x, train_y, TARGET, 1.0, 0, artefact=MOVING)[0], train_y)
    others = test_y != TARGET
    flip = (predict(model, MOVING.apply(test_x[others], seed=5)[0], CPU) == TARGET).float().mean().item()
    assert flip >= 0.7  # it relies on the moving logo, wherever it is
    images, patched, masks = plant(test_x, test_y, TARGET, 0.5, 0, MOVING)
    data = EvalSet(images, test_y, tuple(SHAPES_CLASSES), patched=patched, planted_masks=masks)
    result, _ = spray.audit_model(model, data, spray.AuditSettings(layer="conv2"), CPU)
    found = result["candidates"][0]  # the strongest finding of all classes
    assert (found["class"], found["verdict"], found["test"]) == (SHORTCUT, spray.MOVING, spray.PER_IMAGE_TEST), \
        [(c["class"], c["verdict"], c["test"]) for c in result["candidates"]]
    assert result["confirmed"] == [] and "pixels" not in found  # a moving region is a finding, not a fixed artefact
    # Its own regions are pasted where they were: the rate agrees with what the real logo does.
    assert found["transplant_flip"]["low"] >= 0.5 and found["occluded_flip"]["high"] < 0.2
    assert found["iou_with_planted_box"] > 0.2  # the regions hold the logo (an artefact-sized box around it)
    assert [t["test"] for t in found["also_tested"]] == [spray.FIXED_TEST]


class CodeOrRedMark(nn.Module):
    """Calls an image class 0 where it holds a red pixel anywhere, else the class coded in pixel (0, 0)'s green
    value (20 x class): a hand-built model that relies completely on a mark wherever it sits."""

    def __init__(self):
        super().__init__()
        attach(self, InputContract(mean=(0.0, 0.0, 0.0), std=(1 / 255, 1 / 255, 1 / 255)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        code = (x[:, 1, 0, 0] / 20).round().long().clamp(0, 2)
        red = ((x[:, 0] > 200) & (x[:, 1] < 50) & (x[:, 2] < 50)).flatten(1).any(dim=1)
        return torch.where(red[:, None], torch.tensor([1.0, 0.0, 0.0]), nn.functional.one_hot(code, 3).float())


def test_the_per_image_test_pastes_only_the_regions_that_decide_their_own_image():
    # Class 0's members: 20 of its own images (called 0 by their code; their regions hold nothing) and 20 class-1
    # images carrying a red 3x3 mark at a new place each (called 0 because of it). Pasting every member's region
    # moves half the other images; pasting the regions whose removal changes their own image's class moves all.
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(60, 200, (100, 3, 16, 16), generator=gen, dtype=torch.uint8)
    labels = torch.cat([torch.zeros(20), torch.ones(40), torch.full((40,), 2)]).long()
    images[:, 1, 0, 0] = (labels * 20).to(torch.uint8)
    maps = torch.zeros(100, 16, 16)
    for i in range(40):
        top, left = 5 + (i * 5) % 8, 5 + (i * 3) % 8  # away from the code pixel, margin included
        if i >= 20:  # images 20-39: class 1 with the mark, relevance on it
            images[i, 0, top:top + 3, left:left + 3], images[i, 1:, top:top + 3, left:left + 3] = 255, 0
        maps[i, top:top + 3, left:left + 3] = 1.0  # class 0's own images: relevance on a patch of nothing
    data = EvalSet(images, labels, ("a", "b", "c"))
    predictions = predict(CodeOrRedMark(), images, CPU)
    members = torch.arange(40)
    assert (predictions[members] == 0).all() and (predictions[40:] == labels[40:]).all()
    record, ex = spray.confirm_moving(CodeOrRedMark(), data, predictions, members, maps[members], spray.AuditSettings(), CPU)
    assert record["donors"] == 20 and record["removal_change"]["mean"] == 0.5
    # The classes the examples show after removal are those the region search saw, not a second prediction.
    assert torch.equal(ex["removed_after"], predict(CodeOrRedMark(), ex["removed"], CPU))
    assert record["transplant_flip"]["mean"] == 1.0 and record["verdict"] == spray.MOVING


def test_concentrated_relevance_that_no_test_explains_is_reported_not_dropped():
    def record(fixed: float, peak: float) -> dict:
        return {"clusters": [{"cluster": 0, "n": 50, "score": fixed}], "peak_clusters": [{"cluster": 0, "n": 50, "score": peak}]}

    classes = {"a": record(2.0, 3.0), "b": record(2.1, 3.1), "c": record(2.2, 2.9), "d": record(2.0, 6.0),
               "e": {"n_images": 3, "skipped": "too few"}}
    rates = {"transplant_flip": {"mean": 0.05, "low": 0.03, "high": 0.07}, "occluded_flip": {"mean": 0.05, "low": 0.03, "high": 0.07},
             "untouched": {"mean": 0.05, "low": 0.03, "high": 0.07}}
    none = {"verdict": spray.NONE, **rates}
    flagged = spray.unexplained_classes(classes, [{"class": n, **none} for n in "abcd"])
    assert [u["class"] for u in flagged] == ["d"] and flagged[0]["peak_ratio"] == pytest.approx(6.0 / 3.05)
    assert "moving or non-local artefact" in flagged[0]["reason"]
    # A class whose finding was confirmed is explained; nothing stands out in a flat model.
    assert spray.unexplained_classes(classes, [{"class": "d", **rates, "verdict": spray.CONFIRMED}]) == []
    flat = {n: record(2.0, 3.0) for n in "abc"}
    assert spray.unexplained_classes(flat, []) == []


def test_a_class_whose_regions_move_far_more_images_than_the_median_class_is_flagged_below_the_bar():
    def tested(name: str, mean: float, low: float) -> dict:
        return {"class": name, "verdict": spray.NONE, "transplant_flip": {"mean": mean, "low": low, "high": mean + 0.03},
                "occluded_flip": {"mean": 0.03, "low": 0.02, "high": 0.04}, "untouched": {"mean": 0.04, "low": 0.03, "high": 0.05}}

    same = {"clusters": [{"cluster": 0, "n": 50, "score": 2.0}], "peak_clusters": [{"cluster": 0, "n": 50, "score": 3.0}]}
    classes = {n: same for n in "abcde"}
    # A corner text a model relies on at 32%: its regions move 35%, the other classes' about 10%.
    candidates = [tested("a", 0.35, 0.32), tested("b", 0.14, 0.12), tested("c", 0.10, 0.08), tested("d", 0.11, 0.09),
                  tested("e", 0.07, 0.05)]
    (flag,) = spray.unexplained_classes(classes, candidates)
    assert flag["class"] == "a" and flag["effect_ratio"] == pytest.approx(0.35 / 0.11)
    assert "moves 35% of other images" in flag["reason"]
    # Below 10%, or within 1.5x of the median, nothing is flagged.
    assert spray.unexplained_classes(classes, [tested("a", 0.14, 0.12)] + candidates[1:]) == []
