"""Bring your own model: models by --arch, input contracts, default layers, token CAMs and the Python API.

Every model is built here, randomly initialised (`pretrained=False`, weights=None): nothing downloads.
"""

from __future__ import annotations

import sys
import textwrap

import pytest
import timm  # noqa: F401  (a test extra: the ViT fixtures need it, and a missing install must fail, not skip)
import torch
import torch.nn.functional as F
from torch import nn

import gradcam_repro as gr
from gradcam_repro.api import as_images
from gradcam_repro.errors import UserError
from gradcam_repro.explain.cam import tokens_to_grid
from gradcam_repro.explain.layers import DefaultLayers, check_layer, default_layers
from gradcam_repro.measure.audit_results import AuditResult
from gradcam_repro.model.resnet import CIFAR10_MEAN, resnet18_cifar, save_model
from gradcam_repro.model.sources import IMAGENET_MEAN, ModelSource, contract_of, model_input


@pytest.fixture(scope="module")
def vit():
    """A ViT-tiny with 4 px patches on 32x32 inputs: 64 patch tokens and a class token."""
    torch.manual_seed(0)
    return gr.load_model("timm:vit_tiny_patch16_224", num_classes=10, image_size=(32, 32), patch_size=4, depth=2)


@pytest.fixture(scope="module")
def resnet50():
    torch.manual_seed(0)
    return gr.load_model("torchvision:resnet50", num_classes=4, image_size=(64, 48))


@pytest.fixture
def entry_point(tmp_path, monkeypatch):
    """A module `tiny_models` on sys.path whose `build()` returns a one-channel CNN: map = red channel."""
    (tmp_path / "tiny_models.py").write_text(textwrap.dedent('''
        import torch
        from torch import nn

        class Tiny(nn.Module):
            def __init__(self, num_classes):
                super().__init__()
                self.features = nn.Conv2d(3, 1, kernel_size=1, bias=False)
                self.head = nn.Linear(1, num_classes, bias=False)
                with torch.no_grad():
                    self.features.weight.copy_(torch.tensor([1.0, 0.0, 0.0]).view(1, 3, 1, 1))
                    self.head.weight.copy_(torch.linspace(1.0, -1.0, num_classes).view(num_classes, 1))

            def forward(self, x):
                return self.head(self.features(x).mean(dim=(2, 3)))

        def build(num_classes=2):
            return Tiny(num_classes)

        def not_a_model():
            return "hello"
    '''))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "tiny_models:build"
    sys.modules.pop("tiny_models", None)


def images(n: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (n, 3, h, w), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def manual_gradcam(model: nn.Module, layer: str, x: torch.Tensor, targets: torch.Tensor, size) -> torch.Tensor:
    """Grad-CAM computed here from scratch (hooks, autograd), tokens laid out by hand: the reference."""
    saved = {}
    handle = dict(model.named_modules())[layer].register_forward_hook(lambda m, i, o: saved.update(out=o))
    logits = model(x)
    handle.remove()
    act = saved["out"]
    grad, = torch.autograd.grad(logits.gather(1, targets[:, None]).sum(), act)
    if act.dim() == 3:  # (N, 1 + h*w, C): drop the class token, rows of the patch grid in order
        side = int((act.shape[1] - 1) ** 0.5)
        act, grad = (t[:, 1:].transpose(1, 2).reshape(len(t), -1, side, side) for t in (act, grad))
    cam = F.relu((grad.mean(dim=(2, 3), keepdim=True) * act).sum(1))
    up = F.interpolate(cam[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
    return up / up.amax(dim=(1, 2), keepdim=True).clamp_min(1e-30)


# ----- sources and contracts ----------------------------------------------------------------------------

def test_each_source_carries_its_input_contract(vit, resnet50):
    assert contract_of(resnet18_cifar()).mean == CIFAR10_MEAN  # a module built elsewhere: CIFAR-10's statistics
    assert contract_of(ModelSource().build()).mean == CIFAR10_MEAN
    assert contract_of(resnet50).mean == IMAGENET_MEAN and contract_of(resnet50).size == (64, 48)
    assert contract_of(vit).mean == tuple(vit.pretrained_cfg["mean"]) and contract_of(vit).size == (32, 32)
    x = torch.full((1, 3, 2, 2), 255, dtype=torch.uint8)
    expected = (1.0 - torch.tensor(IMAGENET_MEAN)) / torch.tensor((0.229, 0.224, 0.225))
    assert torch.allclose(model_input(resnet50, x)[0, :, 0, 0], expected)


def test_a_checkpoint_round_trips_and_a_wrong_one_is_one_line(tmp_path, resnet50):
    path = tmp_path / "r50.pt"
    torch.save(resnet50.state_dict(), path)
    again = gr.load_model("torchvision:resnet50", path, num_classes=4)
    assert all(torch.equal(a, b) for a, b in zip(resnet50.state_dict().values(), again.state_dict().values()))
    save_model(resnet18_cifar(), tmp_path / "r18.pt")
    with pytest.raises(UserError, match=r"does not fit --arch torchvision:resnet50 .*fix: pass the --arch") as info:
        gr.load_model("torchvision:resnet50", tmp_path / "r18.pt", num_classes=4)
    assert "\n" not in str(info.value)
    with pytest.raises(UserError, match="fix: pass the --arch and --num-classes"):
        gr.load_model("torchvision:resnet50", path, num_classes=10)  # the class count differs
    with pytest.raises(UserError, match="does not exist"):
        gr.load_model("torchvision:resnet50", tmp_path / "missing.pt", num_classes=4)


@pytest.mark.parametrize("arch, message", [
    ("torchvision:resnet5000", "unknown torchvision architecture 'resnet5000'"),
    ("timm:no_such_net", "unknown timm architecture 'no_such_net'"),
    ("no_such_module_xyz:build", "cannot import --arch no_such_module_xyz:build"),
    ("tiny_models:missing", "cannot import --arch tiny_models:missing"),
    ("tiny_models:not_a_model", "returned str, not a torch nn.Module"),
    ("resnet18", "is not a model name"),
])
def test_bad_model_sources_are_one_line_errors(entry_point, arch, message):
    with pytest.raises(UserError, match=message) as info:
        ModelSource(arch, 10).build()
    assert "fix:" in str(info.value) and "\n" not in str(info.value)


def test_an_entry_point_gets_the_class_count_and_constructor_options_reach_the_builder(entry_point):
    model = ModelSource(entry_point, 3).build()
    assert model.head.out_features == 3
    with pytest.raises(UserError, match="building --arch tiny_models:build failed .*unexpected keyword"):
        ModelSource(entry_point, 3, options=(("depth", 2),)).build()


# ----- layers ---------------------------------------------------------------------------------------------

def test_tokens_are_laid_out_row_by_row_after_the_class_token():
    tokens = torch.arange(1 + 4 * 3, dtype=torch.float32).view(1, 13, 1)  # class token 0, then 12 patches
    grid = tokens_to_grid(tokens, (64, 48), "blocks.0.norm1")  # 64x48 input, 16 px patches: 4 rows x 3 columns
    assert grid.shape == (1, 1, 4, 3)
    assert grid[0, 0].tolist() == [[1, 2, 3], [4, 5, 6], [7, 8, 9], [10, 11, 12]]
    assert tokens_to_grid(torch.zeros(2, 64, 5), (32, 32), "x").shape == (2, 5, 8, 8)  # no class token
    assert tokens_to_grid(torch.zeros(1, 14, 1), (64, 48), "x").shape == (1, 1, 4, 3)  # 2 prefix tokens (DeiT)
    with pytest.raises(UserError, match="layer 'blocks.0.norm1' has 10 tokens"):  # no 4:3 grid of 2-10 cells
        tokens_to_grid(torch.zeros(1, 10, 1), (64, 48), "blocks.0.norm1")


def test_default_layers_follow_the_written_rule(vit, resnet50, entry_point):
    assert default_layers(resnet18_cifar(), (32, 32)) == DefaultLayers("layer4.1.conv2", "layer2", "project")
    assert default_layers(resnet50, (64, 48)) == DefaultLayers("layer4", "layer1", "cnn")
    # The final norm feeds only the class token and the last MLP norm is token-wise: both give zero maps.
    assert default_layers(vit, (32, 32)) == DefaultLayers("blocks.1.norm1", "blocks.1.norm1", "transformer")
    vgg = gr.load_model("torchvision:vgg11_bn", num_classes=10)
    assert default_layers(vgg, (32, 32)).explain == "features.26"  # the last 2x2 map (the pool below is 1x1)


@pytest.mark.parametrize("layer, message", [
    ("norm", "layer 'norm' gets no gradient from the class score .*e.g. blocks.1.norm1"),
    ("blocks.1.norm2", "layer 'blocks.1.norm2' gets no gradient"),
    ("head", r"layer 'head' outputs \(2, 10\), not a feature map"),
    ("nope", "unknown layer 'nope'"),
])
def test_a_layer_that_cannot_be_explained_is_a_one_line_error(vit, layer, message):
    with pytest.raises(UserError, match=message) as info:
        check_layer(vit, layer, (32, 32))
    assert "fix:" in str(info.value)


def test_an_input_size_the_model_rejects_is_a_one_line_error(vit):
    with pytest.raises(UserError, match="rejects 64x64 inputs .*fix: pass the input size"):
        default_layers(vit, (64, 64))


# ----- the Python API: explain and audit on any model ----------------------------------------------------

def test_explain_a_vit_equals_gradcam_computed_by_hand(vit):
    x = images(3, 32, 32)
    result = gr.explain(vit, x)
    assert result.layer == "blocks.1.norm1" and result.maps.shape == (3, 32, 32)
    reference = manual_gradcam(vit, "blocks.1.norm1", model_input(vit, x), result.targets, (32, 32))
    assert torch.allclose(result.maps, reference, atol=1e-5)
    assert torch.equal(result.targets, result.predicted)


def test_explain_a_resnet50_at_64x48_equals_gradcam_computed_by_hand(resnet50):
    x = images(2, 64, 48, seed=1)
    result = gr.explain(resnet50, x, targets=[1, 3])
    assert result.layer == "layer4" and result.maps.shape == (2, 64, 48)
    reference = manual_gradcam(resnet50, "layer4", model_input(resnet50, x), torch.tensor([1, 3]), (64, 48))
    assert torch.allclose(result.maps, reference, atol=1e-5)
    pixels = gr.explain(resnet50, x, method="inputxgradient")
    assert pixels.layer == "input" and pixels.maps.shape == (2, 64, 48)


def test_explain_an_entry_point_model_maps_its_red_channel(entry_point):
    model = gr.with_contract(ModelSource(entry_point, 2).build(), mean=(0, 0, 0), std=(1, 1, 1))
    x = torch.zeros(1, 3, 5, 7, dtype=torch.uint8)
    x[0, 0] = torch.arange(35, dtype=torch.uint8).view(5, 7) * 7  # red rises left to right, row by row
    x[0, 1:] = 200  # green and blue do not reach the class score
    result = gr.explain(model, x, targets=[0])  # class 0's head weight is +1: its Grad-CAM is the red channel
    assert result.layer == "features"
    expected = x[0, 0].float() / x[0, 0].float().max()
    assert torch.allclose(result.maps[0], expected, atol=1e-6)
    assert torch.equal(gr.explain(model, x, targets=[1]).maps[0], torch.zeros(5, 7))  # weight -1: nothing


def test_explain_rejects_images_that_are_not_pixels(resnet50):
    with pytest.raises(UserError, match=r"images must be \(N, 3, H, W\)"):
        gr.explain(resnet50, torch.zeros(2, 1, 8, 8))
    with pytest.raises(UserError, match=r"float images must hold finite pixels in \[0, 1\]"):
        gr.explain(resnet50, torch.full((1, 3, 64, 48), 3.0))


@pytest.mark.parametrize("which", ["vit", "resnet50", "entry_point"])
def test_audit_runs_on_any_model_and_reports_in_the_images_pixels(which, vit, resnet50, entry_point, tmp_path):
    model = {"vit": vit, "resnet50": resnet50, "entry_point": ModelSource(entry_point, 3).build()}[which]
    h, w = {"vit": (32, 32), "resnet50": (64, 48), "entry_point": (40, 24)}[which]
    k = {"vit": 10, "resnet50": 4, "entry_point": 3}[which]
    labels = torch.arange(k).repeat_interleave(8)
    names = tuple("abcdefghij"[:k])
    with pytest.raises(UserError, match=f"the model has {k} classes but the dataset has 2"):
        gr.audit(model, (images(4, h, w), torch.tensor([0, 1, 0, 1]), ("a", "b")))
    result = gr.audit(model, (images(8 * k, h, w, seed=2), labels, names), out=tmp_path / which)
    assert isinstance(result, AuditResult)
    assert result.settings["layer"] == default_layers(model, (h, w)).audit
    assert (tmp_path / which / "audit.json").is_file() and (tmp_path / which / "AUDIT.md").is_file()
    for candidate in result.candidates:
        top, left, bottom, right = candidate.box_tlbr_px
        assert 0 <= top < bottom <= h and 0 <= left < right <= w


# ----- the CLI: explain and audit with --arch --------------------------------------------------------------

def test_cli_explain_any_architecture_at_its_input_size(tmp_path, capsys):
    from PIL import Image

    from gradcam_repro.cli import main

    Image.new("RGB", (30, 50), (200, 30, 30)).save(tmp_path / "red.png")
    torch.manual_seed(0)
    torch.save(ModelSource("torchvision:resnet18", 3).build().state_dict(), tmp_path / "r18.pt")
    out = tmp_path / "explained"
    argv = ["explain", str(tmp_path / "r18.pt"), str(tmp_path / "red.png"), "--arch", "torchvision:resnet18",
            "--num-classes", "3", "--out", str(out)]
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert (out / "red_gradcam.png").is_file()
    assert "resized from 30x50 to 32x32" in err  # no input size in its contract: this project's 32x32
    vit = ["explain", "random", str(tmp_path / "red.png"), "--arch", "timm:vit_tiny_patch16_224", "--num-classes", "3",
           "--arch-option", "img_size=32", "--arch-option", "patch_size=4", "--arch-option", "depth=1", "--out", str(out)]
    assert main(vit + ["--cam", "hirescam"]) == 0
    assert (out / "red_hirescam.png").is_file()


@pytest.mark.parametrize("flags, message", [
    (["--arch", "torchvision:resnet18", "--num-classes", "5"], "does not fit --arch torchvision:resnet18"),
    (["--arch", "torchvision:resnet50", "--num-classes", "3"], "does not fit --arch torchvision:resnet50"),
    (["--arch", "no_such_module_xyz:build"], "cannot import --arch no_such_module_xyz:build"),
    (["--num-classes", "3"], "--num-classes and --arch-option describe an --arch"),
    (["--arch", "torchvision:resnet18", "--num-classes", "3", "--arch-option", "depth"], "is not KEY=VALUE"),
    (["--arch", "torchvision:resnet18", "--num-classes", "3", "--cam-layer", "fc"], "layer 'fc' outputs"),
    (["--arch", "torchvision:resnet18", "--num-classes", "3", "--cam-layer", "layer3"],
     "the model has 3 classes but dataset cifar10 has 10"),  # explain has no data: it passes; audit refuses
])
def test_cli_bad_models_exit_2_with_one_line_and_write_nothing(tmp_path, capsys, flags, message):
    from gradcam_repro.cli import main

    torch.save(ModelSource("torchvision:resnet18", 3).build().state_dict(), tmp_path / "r18.pt")
    (tmp_path / "a.png").write_bytes(b"")  # never read: the model fails first
    out = tmp_path / "out"
    commands = [["explain", str(tmp_path / "r18.pt"), str(tmp_path / "a.png")], ["audit", str(tmp_path / "r18.pt")]]
    for command in commands[1:] if "dataset cifar10" in message else commands[:1] if "'fc'" in message else commands:
        given = [f.replace("--cam-layer", "--layer") for f in flags] if command[0] == "audit" else flags
        code = main([*command, *given, "--out", str(out)])
        err = capsys.readouterr().err
        assert code == 2 and message in err and err.count("\n") == 1, (command, err)
        assert not out.exists()


def test_cli_audit_any_model_on_an_image_folder_at_64x48(tmp_path, capsys):
    """`audit --arch ... --dataset folder`: the classes come from the folders, the boxes are in 64x48 pixels."""
    import json

    from PIL import Image

    from gradcam_repro.cli import main

    generator = torch.Generator().manual_seed(3)
    for split, n in (("train", 2), ("test", 30)):
        for name in ("cat", "dog", "eel"):
            (tmp_path / "tree" / split / name).mkdir(parents=True)
            for i in range(n):
                pixels = torch.randint(0, 256, (48, 64, 3), dtype=torch.uint8, generator=generator)  # 64 wide, 48 high
                Image.fromarray(pixels.numpy()).save(tmp_path / "tree" / split / name / f"{i}.png")
    torch.manual_seed(0)
    torch.save(ModelSource("torchvision:resnet18", 3).build().state_dict(), tmp_path / "r18.pt")
    out = tmp_path / "audit"
    argv = ["audit", str(tmp_path / "r18.pt"), "--arch", "torchvision:resnet18", "--num-classes", "3", "--dataset",
            "folder", "--data-root", str(tmp_path / "tree"), "--image-size", "48x64", "--out", str(out)]
    assert main(argv) == 0
    found = json.loads((out / "audit.json").read_text())
    assert found["dataset"]["classes"] == ["cat", "dog", "eel"] and found["dataset"]["n_test"] == 90
    assert found["settings"]["layer"] == "layer1" and found["settings"]["image_hw_px"] == [48, 64]
    for candidate in found["candidates"]:
        top, left, bottom, right = candidate["box_tlbr_px"]
        assert 0 <= top < bottom <= 48 and 0 <= left < right <= 64
    mismatch = ["audit", "random", *argv[2:-2], "--num-classes", "4", "--out", str(tmp_path / "no")]
    assert main(mismatch) == 2  # 4 outputs, 3 class folders
    assert "the model has 4 classes but dataset folder has 3" in capsys.readouterr().err
    assert not (tmp_path / "no").exists()


class RedCorner(torch.nn.Module):
    """Two classes: class 0's logit is 0.5, class 1's the red-minus-green-minus-blue sum over the bottom-right 8x8
    corner / 16 (pixels in [0, 1]: mean 0, std 1), so a red 8x8 square there makes an image class 1 and a yellow one
    (red - green = 0) does not."""

    def __init__(self):
        super().__init__()
        self.features = torch.nn.Conv2d(3, 2, 1)
        with torch.no_grad():
            self.features.weight.zero_()
            self.features.bias.copy_(torch.tensor([0.5, 0.0]))
            self.features.weight[1, 0] = 1.0
            self.features.weight[1, 1] = -1.0
            self.features.weight[1, 2] = -1.0

    def forward(self, x):
        maps = self.features(x)
        corner = torch.zeros_like(maps[:, 1])
        corner[:, -8:, -8:] = 1.0
        return torch.stack([maps[:, 0].mean((1, 2)), (maps[:, 1] * corner).sum((1, 2)) / 16], dim=1)


def red_corner() -> nn.Module:
    return gr.with_contract(RedCorner(), mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))


def test_measure_shortcut_on_any_model_follows_each_images_mask():
    """The Python API's shortcut measurement on a torchvision model at 48x64 px: a hand-checkable case where the
    model's logit for class 1 is the red share inside the bottom-right 8x8 corner, so pasting a red square there
    turns every image into class 1, a control colour does not, and the rates say so."""
    model = red_corner()
    images = torch.full((40, 3, 48, 64), 100, dtype=torch.uint8)
    labels = torch.arange(40) % 2
    result = gr.measure_shortcut(model, images, labels, {"kind": "square", "patch_size": 8, "color": (255, 0, 0),
                                                         "corner": "bottom-right"}, target=1, layers=["features"])
    measured = result.models["model"]
    assert measured.flip_to_target["patch"].mean == 1.0
    assert measured.flip_to_target["none"].mean == 0.0
    assert result.uniform["energy_in_box"] == pytest.approx(64 / (48 * 64))
    with pytest.raises(UserError, match="target 'cat' is not a class"):
        gr.measure_shortcut(model, images, labels, {"patch_size": 8}, target="cat", layers=["features"])


def test_an_artefact_dict_takes_the_seeds_square_for_what_it_leaves_out():
    """The documented dicts leave keys out (`{"kind": "text", "patch_size": 10, "corner": "bottom-right"}`): the rest
    is the seed's yellow square's. On the red-corner model a red 8 px square there (kind and offset left out, the
    colour by name) turns every image into class 1; the same square left yellow (colour left out) turns none."""
    model, images = red_corner(), torch.full((40, 3, 48, 64), 100, dtype=torch.uint8)
    labels = torch.arange(40) % 2
    red = gr.measure_shortcut(model, images, labels, {"patch_size": 8, "color": "red", "corner": "bottom-right"},
                              target=1, layers=["features"])
    yellow = gr.measure_shortcut(model, images, labels, {"patch_size": 8, "corner": "bottom-right"}, target=1,
                                 layers=["features"])
    assert red.models["model"].flip_to_target["patch"].mean == 1.0
    assert yellow.models["model"].flip_to_target["patch"].mean == 0.0
    text = gr.measure_shortcut(model, images, labels, {"kind": "text", "patch_size": 10, "corner": "bottom-right"},
                               target=1, layers=["features"])  # the docs' example: yellow text, no red, no flip
    assert text.models["model"].flip_to_target["patch"].mean == 0.0


@pytest.mark.parametrize("call, problem", [
    (lambda m, x, y: gr.measure_shortcut(m, x, y, {"colour": (255, 0, 0)}, target=1), "unknown artefact key"),
    (lambda m, x, y: gr.measure_shortcut(m, x, y, {"color": (300, 0, 0)}, target=1), "color must be three integers"),
    (lambda m, x, y: gr.measure_shortcut(m, x, y, {"color": "rouge"}, target=1), "color must be three integers"),
    (lambda m, x, y: gr.measure_shortcut(m, x, y, {"patch_size": 0}, target=1), "patch_size must be an integer >= 1"),
    (lambda m, x, y: gr.measure_shortcut(m, x, y, ["square"], target=1), "an artefact is a data.zoo.Planted or a dict"),
    (lambda m, x, y: gr.measure_shortcut(m, x, y + 2, {}, target=1), "labels go up to 3 but the model has 2 outputs"),
    (lambda m, x, y: gr.audit(m, (x, y - 1)), "labels must be class indices"),
    (lambda m, x, y: gr.repair(m, (x, y), {"size": 8}, target=1), "unknown artefact key"),
    (lambda m, x, y: gr.explain(m, x[:2], layer="features", targets=[2, 0]), "targets must be class indices in"),
    (lambda m, x, y: gr.explain(m, x[:0], layer="features"), "no images given"),
    (lambda m, x, y: gr.explain(m, torch.full((2, 3, 48, 64), float("nan")), layer="features"), "finite pixels"),
    (lambda m, x, y: gr.explain(m, x.long() * 3, layer="features"), "integer images must hold pixels in 0..255"),
    (lambda m, x, y: gr.explain(m, x > 0, layer="features"), "dtype torch.bool"),
    (lambda m, x, y: gr.audit(m, (x, y), seed=-1), "seed must be an integer in 0..4294967295"),
    (lambda m, x, y: gr.measure_shortcut(m, x, y, {}, target=1, seed=-1), "seed must be an integer in 0..4294967295"),
])
def test_the_python_api_refuses_bad_input_with_the_problem_and_the_fix(call, problem):
    """Bad artefacts, labels, targets and pixels are a `UserError` naming the problem and the fix (not a KeyError
    or an IndexError from deep inside, and not a silent wrong answer such as 15 classes for a 2-output model)."""
    images = torch.randint(0, 256, (20, 3, 48, 64), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    with pytest.raises(UserError, match=problem) as refused:
        call(red_corner(), images, torch.arange(20) % 2)
    assert "; fix: " in str(refused.value) and "\n" not in str(refused.value)


def test_integer_pixels_are_read_as_pixels():
    """int64 pixels (what `torch.tensor(numpy_image)` of an int array gives) are the same image as uint8 ones, not
    255 times brighter."""
    images = torch.randint(0, 256, (3, 3, 48, 64), generator=torch.Generator().manual_seed(1), dtype=torch.uint8)
    assert torch.equal(as_images(images.long()), images)
    as_uint8 = gr.explain(red_corner(), images, layer="features")
    as_int64 = gr.explain(red_corner(), images.long(), layer="features")
    assert torch.equal(as_uint8.logits, as_int64.logits) and torch.equal(as_uint8.maps, as_int64.maps)
