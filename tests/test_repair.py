"""`gradcam-repro repair`: the three strategies remove a learnt shortcut, on inputs with known answers and on a
small CNN trained here on shapes with a planted patch; bad inputs give one-line errors."""

import json
import shutil

import pytest
import torch
import torch.nn.functional as F
from audit_helpers import audit_json, candidate
from cam_helpers import train_small_cnn
from torch import nn

from gradcam_repro.cli import main
from gradcam_repro.config import Config
from gradcam_repro.data import artefact as artefacts
from gradcam_repro.data.bias import bias_dataset, inject_patch, patch_box
from gradcam_repro.data.images import ImageData
from gradcam_repro.data.shapes import SHAPES_CLASSES, make_shapes
from gradcam_repro.errors import UserError
from gradcam_repro.measure.predict import predict
from gradcam_repro.model.finetune import FinetuneSettings, penultimate_features, refit_last_layer, rrr_finetune, rrr_penalty
from gradcam_repro.pipeline.experiment import TrainingSet, training_images
from gradcam_repro.pipeline.repair import RepairOptions, artefact_from_audit, balanced_set, repair_spec
from gradcam_repro.pipeline.spec import BiasSpec, ExperimentSpec
from gradcam_repro.runtime import Runtime

CPU = Runtime(torch.device("cpu"))
PATCH = {"patch_size": 6, "color": (255, 255, 0), "corner": "top-left", "offset": 0}
BOX = patch_box(32, 6)
SHORTCUT = "crescent"  # learnt last by the small CNN, so the patch is the easier cue (see test_audit.py)
TARGET = SHAPES_CLASSES.index(SHORTCUT)
YELLOW = artefacts.solid(BOX, (255, 255, 0), SHORTCUT, "test patch")


pytestmark = pytest.mark.usefixtures("one_thread")


def flip_rate(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
    others = labels != TARGET
    return (predict(model, inject_patch(images[others], **PATCH), CPU) == TARGET).float().mean().item()


# ----- the strategies on a model trained here ------------------------------------------------------------------

def test_last_layer_refit_removes_a_shortcut_the_model_has_learnt():
    train_x, train_y, _ = make_shapes(2000, seed=1)
    test_x, test_y, _ = make_shapes(1000, seed=2)
    biased_x, _ = bias_dataset(train_x, train_y, TARGET, 1.0, 0, **PATCH)
    model = train_small_cnn(biased_x, train_y)
    before = flip_rate(model, test_x, test_y)
    assert before >= 0.5  # it has learnt the shortcut, so there is something to remove
    x, y = balanced_set(biased_x, train_y, YELLOW, per_class=100, seed=0)  # only what a user has: the biased set
    fc_before = model.fc.weight.detach().clone()
    conv_before = model.conv1[0].weight.detach().clone()
    refit_last_layer(model.fc, penultimate_features(model, x, torch.device("cpu")), y)
    after = flip_rate(model, test_x, test_y)
    assert after <= before / 2, (before, after)
    assert not torch.equal(model.fc.weight, fc_before) and torch.equal(model.conv1[0].weight, conv_before)
    accuracy = (predict(model, test_x, CPU) == test_y).float().mean().item()
    assert accuracy >= 0.5  # still a classifier, not a model that gave up


def test_the_balanced_set_shows_every_class_with_and_without_the_artefact():
    images = torch.randint(0, 200, (300, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    labels = torch.arange(300) % 10
    x, y = balanced_set(images, labels, YELLOW, per_class=5, seed=0)
    assert len(y) == 100 and torch.equal(torch.bincount(y), torch.full((10,), 10))
    carries = (x[:, :, :6, :6] == YELLOW.pixels).flatten(1).all(dim=1)
    for c in range(10):
        assert carries[y == c].sum() == 5  # half of each class with it, half without


def test_augment_decorrelates_the_artefact_from_every_class_never_only_the_target():
    images = torch.randint(0, 200, (2000, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    labels = torch.arange(2000) % 10
    biased, _ = bias_dataset(images, labels, TARGET, 1.0, 0, **PATCH)  # every crescent carries the patch
    out, pasted = artefacts.decorrelate(biased, YELLOW, 0.5, seed=0)
    carries = (out[:, :, :6, :6] == YELLOW.pixels).flatten(1).all(dim=1)
    assert torch.equal(carries, pasted)
    shares = torch.stack([carries[labels == c].float().mean() for c in range(10)])
    assert shares.min() >= 0.4 and shares.max() <= 0.6  # about half of every class, the target included
    box = out[~pasted][:, :, :6, :6].flatten(2)
    assert (box == box[:, :, :1]).all()  # the others: the box filled with one colour from the ring around it
    assert torch.equal(out[:, :, 6:], biased[:, :, 6:]) and torch.equal(out[:, :, :, 6:], biased[:, :, :, 6:])


def test_an_augment_repair_trains_on_the_decorrelated_images():
    g = torch.Generator().manual_seed(2)
    images = torch.randint(0, 200, (400, 3, 32, 32), dtype=torch.uint8, generator=g)
    labels = torch.arange(400) % 10
    data = ImageData("toy", tuple(SHAPES_CLASSES), images, labels, images[:10], labels[:10], "f" * 64, "memory")
    ts = TrainingSet(Config(), data, CPU, torch.arange(400), torch.arange(10))
    biased = ExperimentSpec.from_config(Config(), data.fingerprint, BiasSpec(SHORTCUT))
    spec = repair_spec(biased, YELLOW, RepairOptions("augment", share=0.3))
    planted_images, _, planted = training_images(spec, ts)
    carries = (planted_images[:, :, :6, :6] == YELLOW.pixels).flatten(1).all(dim=1)
    assert planted["artefact_pasted_train_images"] == int(carries.sum())
    assert all(carries[labels == c].any() for c in range(10))
    assert 0.2 <= carries[labels == TARGET].float().mean() <= 0.45  # the target lost the patch on most images
    assert spec.key != biased.key and ExperimentSpec.from_dict(spec.to_dict()).key == spec.key
    assert "repair" not in biased.to_dict()  # models trained before repairs keep their keys
    found_by_audit = artefacts.solid(BOX, (255, 255, 0), SHORTCUT, "audit candidate #1")
    assert repair_spec(biased, found_by_audit, RepairOptions("augment", share=0.3)).key == spec.key  # same model
    assert repair_spec(biased, artefacts.solid(BOX, (255, 0, 0), SHORTCUT, "test patch"),
                       RepairOptions("augment", share=0.3)).key != spec.key


def test_rrr_penalty_is_the_squared_input_gradient_inside_the_region_with_the_right_gradient():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 5)).double()
    x = torch.randn(6, 3, 4, 4, dtype=torch.float64)
    mask = torch.zeros(1, 1, 4, 4, dtype=torch.float64)
    mask[..., :2, :2] = 1
    logits, penalty = rrr_penalty(net, x, mask)
    p = F.softmax(logits, dim=1)
    analytic = ((1 - 5 * p) @ net[1].weight).view(6, 3, 4, 4)  # d sum_k log p_k / dx for a linear net
    assert torch.allclose(penalty, (analytic * mask).pow(2).sum() / 6)
    with torch.no_grad():  # a net that reads only pixels outside the region: nothing to penalise
        weight = net[1].weight.view(5, 3, 4, 4)
        weight[:, :, :2, :2] = 0
    assert rrr_penalty(net, x, mask)[1].item() == 0.0
    assert rrr_penalty(net, x, torch.zeros_like(mask))[1].item() == 0.0

    def penalty_of(w):
        return rrr_penalty(lambda inputs: inputs.flatten(1) @ w.T, x, mask)[1]

    w = torch.randn(5, 48, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(penalty_of, (w,))  # double backprop gives the true gradient



def test_rrr_finetune_hands_each_epoch_record_over_as_that_epoch_ends():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 3))
    images, labels = torch.randint(0, 256, (20, 3, 8, 8), dtype=torch.uint8), torch.arange(20) % 3
    mask = torch.zeros(8, 8, dtype=torch.bool)
    mask[:2, :2] = True
    events = []
    history = rrr_finetune(net, images, labels, mask, FinetuneSettings(epochs=3, batch_size=8), CPU,
                           progress=lambda epoch, done, total: events.append(("batch", epoch, done)),
                           on_epoch=lambda record: events.append(("epoch", record["epoch"], record["loss"])))
    assert [e[1] for e in events if e[0] == "epoch"] == [1, 2, 3]
    assert [e[2] for e in events if e[0] == "epoch"] == [r["loss"] for r in history]  # the records returned
    first_of_2, end_of_1 = events.index(("batch", 2, 8)), events.index(("epoch", 1, history[0]["loss"]))
    assert events[end_of_1 - 1] == ("batch", 1, 20) and end_of_1 < first_of_2  # after its last batch, before epoch 2
    assert not net.training

# ----- the artefact sources -------------------------------------------------------------------------------------

def test_the_artefact_comes_from_the_audits_top_confirmed_candidate(tmp_path):
    pixels = torch.full((3, 6, 6), 7, dtype=torch.uint8)
    candidates = [candidate(1, "deer", "none", box_tlbr_px=[0, 0, 2, 2], kind="relevance only"),
                  candidate(2, "frog", "confirmed shortcut", box_tlbr_px=[0, 0, 6, 6], kind="constant pixels",
                            pixels=pixels.tolist(), mean_rgb=[7, 7, 7])]
    (tmp_path / "audit.json").write_text(json.dumps(audit_json(candidates)))
    found = artefact_from_audit(tmp_path)
    assert found.class_name == "frog" and found.box == (0, 0, 6, 6) and torch.equal(found.pixels, pixels)
    assert found.keep is None  # an audit that pastes the whole box
    mask = ["110000"] * 5 + ["111111"]  # one that pasted its constant pixels only: repair removes those
    candidates[1]["constant_mask"] = mask
    (tmp_path / "audit.json").write_text(json.dumps(audit_json(candidates)))
    assert artefacts.mask_rows(artefact_from_audit(tmp_path).keep) == mask
    assert torch.equal(artefacts.from_images((0, 0, 2, 2), torch.stack([torch.full((3, 8, 8), v, dtype=torch.uint8)
                                                                         for v in (0, 9, 90)]), "frog", "box").pixels,
                       torch.full((3, 2, 2), 9, dtype=torch.uint8))


def test_a_pattern_confirmed_by_the_audit_is_no_artefact_to_cut_out(tmp_path):
    candidates = [candidate(1, "frog", "confirmed shortcut", box_tlbr_px=[0, 0, 32, 32], kind="shared pattern",
                            test="shared pattern", pattern_rms=21.4, mean_rgb=[0.1, 0.0, -0.1], pixels=None)]
    candidates[0] |= {"cluster": None, "occluded_flip": None}  # as audit.json holds them: no cluster, no occlusion
    (tmp_path / "audit.json").write_text(json.dumps(audit_json(candidates)))
    with pytest.raises(UserError, match="shared-pattern test .* fix: repair with the run's own artefact"):
        artefact_from_audit(tmp_path)



def test_a_blur_confirmed_by_the_audit_is_no_artefact_to_cut_out(tmp_path):
    candidates = [candidate(1, "frog", "confirmed shortcut", box_tlbr_px=[8, 8, 24, 24], kind="shared blur",
                            test="shared blur", blur_sigma=2.0, pixels=None)]
    candidates[0] |= {"cluster": None, "occluded_flip": None, "removal_change": None}  # no occlusion, no removal
    (tmp_path / "audit.json").write_text(json.dumps(audit_json(candidates)))
    with pytest.raises(UserError, match="shared-blur test .* fix: repair with the run's own artefact"):
        artefact_from_audit(tmp_path)

# ----- the command ----------------------------------------------------------------------------------------------

def _error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("gradcam-repro: error:"), err
    return err


def test_repair_adds_a_measured_column_to_the_run_and_refuses_bad_inputs(shapes_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(shapes_run, run)
    before = (run / "metrics.json").read_bytes()
    assert main(["repair", str(run), "--strategy", "mend"]) == 2
    assert "unknown strategy 'mend'" in _error(capsys)
    assert main(["repair", str(run), "--strategy", "last-layer", "--box", "30,30,40,40"]) == 2
    assert "lies outside the 32x32 px image" in _error(capsys)
    (tmp_path / "audit.json").write_text(json.dumps(audit_json([candidate(1, "frog", "none")])))
    assert main(["repair", str(run), "--strategy", "rrr", "--from-audit", str(tmp_path / "audit.json")]) == 2
    assert "confirmed no shortcut" in _error(capsys)
    assert (run / "metrics.json").read_bytes() == before  # a refused repair leaves the run as it was
    baseline_only = tmp_path / "baseline-only"
    baseline_only.mkdir()
    manifest = json.loads((run / "run.json").read_text())
    (baseline_only / "run.json").write_text(json.dumps({**manifest, "experiments": {"baseline": "0" * 16}}))
    assert main(["repair", str(baseline_only), "--strategy", "augment"]) == 2
    assert "has no biased model" in _error(capsys)

    assert main(["repair", str(run), "--strategy", "last-layer", "--per-class", "20", "--quiet"]) == 0
    final = capsys.readouterr().out
    assert "[repaired-last-layer] done" in final and "(baseline / biased / repaired)" in final
    metrics = json.loads((run / "metrics.json").read_text())
    assert list(metrics["models"]) == ["baseline", "biased", "repaired-last-layer"]
    record = metrics["repairs"]["repaired-last-layer"]
    assert record["strategy"] == "last-layer" and record["artefact"]["source"] == "the run's planted patch"
    assert record["seconds"] > 0 and record["params"] == {"per_class": 20}
    key = json.loads((run / "run.json").read_text())["experiments"]["repaired-last-layer"]
    assert (run / "experiments" / key / "model.pt").is_file()
    assert "## Repair: is the shortcut gone?" in (run / "REPORT.md").read_text()
    assert 'id="repair"' in (run / "REPORT.html").read_text()
    measured = (run / "metrics.json").read_bytes()
    assert main(["repair", str(run), "--strategy", "last-layer", "--per-class", "20"]) == 0
    log = capsys.readouterr().out
    assert "reusing the finished repair" in log and "not measured again" in log
    assert (run / "metrics.json").read_bytes() == measured  # the same models, measured once
    assert main(["repair", str(run), "--strategy", "rrr", "--repair-images", "200", "--quiet"]) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    (record,) = metrics["histories"]["repaired-rrr"]  # one fine-tuning epoch, with training's columns
    assert record["penalty"] >= 0 and 0 <= record["test_acc"] <= 1 and record["train_px"] == 32
    assert list(metrics["models"]) == ["baseline", "biased", "repaired-last-layer", "repaired-rrr"]
    assert "figures/repaired-rrr_training_curves.png" in metrics["figures"]
    # rerunning `run` into the folder keeps the repaired models in run.json and measures them again
    assert main(["run", "--preset", "smoke", "--dataset", "shapes", "--out", str(run), "--quiet"]) == 0
    kept = json.loads((run / "run.json").read_text())["experiments"]
    assert list(kept) == ["baseline", "biased", "repaired-last-layer", "repaired-rrr"] and kept["repaired-rrr"] == \
        json.loads((run / "experiments" / kept["repaired-rrr"] / "spec.json").read_text())["key"]
    assert list(json.loads((run / "metrics.json").read_text())["models"]) == list(kept)


# ----- the Python API ----------------------------------------------------------------------------------------

def test_the_python_api_repairs_a_copy_of_any_model_and_measures_it_before_and_after():
    import gradcam_repro as gr

    train_x, train_y, _ = make_shapes(2000, seed=1)
    test_x, test_y, _ = make_shapes(600, seed=2)
    biased_x, _ = bias_dataset(train_x, train_y, TARGET, 1.0, 0, **PATCH)
    model = train_small_cnn(biased_x, train_y)
    fc_before = model.fc.weight.detach().clone()
    artefact = {"patch_size": 6, "color": (255, 255, 0), "corner": "top-left"}
    fixed = gr.repair(model, (biased_x, train_y, SHAPES_CLASSES), artefact, SHORTCUT, strategy="last-layer",
                      test=(test_x, test_y, SHAPES_CLASSES), per_class=100)
    before = fixed.before.models["model"].flip_to_target["patch"].mean
    after = fixed.after.models["model"].flip_to_target["patch"].mean
    assert before == pytest.approx(flip_rate(model, test_x, test_y), abs=1e-6) and before >= 0.5
    assert after <= before / 2, (before, after)
    assert after == pytest.approx(flip_rate(fixed.model, test_x, test_y), abs=1e-6)
    assert fixed.model is not model and torch.equal(model.fc.weight, fc_before)  # the given model is left as it was
    assert fixed.strategy == "last-layer" and fixed.fit["balanced_images"] == 2 * 100 * len(SHAPES_CLASSES)


@pytest.mark.parametrize("kwargs, expected", [
    ({"strategy": "augment"}, "unknown repair strategy 'augment'"),
    ({"strategy": "rrr", "epochs": 1, "weight": 2.0}, "unknown repair option weight"),
    ({"artefact": {"patch_size": 6, "corner": "random"}}, "no one fixed box"),
])
def test_the_python_apis_bad_repairs_are_one_line_errors(kwargs, expected):
    import gradcam_repro as gr
    from gradcam_repro.errors import UserError

    images, labels, _ = make_shapes(40, seed=1)
    args = {"artefact": PATCH | {"corner": "top-left"}, "target": 0, **kwargs}
    with pytest.raises(UserError, match=expected) as error:
        gr.repair(nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 6)), (images, labels, SHAPES_CLASSES), **args)
    assert "\n" not in str(error.value) and "fix:" in str(error.value)


def test_the_classifier_refit_is_fc_timms_head_or_the_last_linear_layer():
    import timm

    from gradcam_repro.errors import UserError
    from gradcam_repro.model.finetune import classifier_of

    cnn = train_small_cnn(*make_shapes(64, seed=0)[:2], epochs=1)
    assert classifier_of(cnn) is cnn.fc
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=10, img_size=32, patch_size=8)
    assert classifier_of(vit) is vit.head
    plain = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4 * 30 * 30, 8), nn.ReLU(), nn.Linear(8, 10))
    assert classifier_of(plain) is plain[4]
    with pytest.raises(UserError, match="no nn.Linear classifier"):
        classifier_of(nn.Sequential(nn.Conv2d(3, 10, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten()))
