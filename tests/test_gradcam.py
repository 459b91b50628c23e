"""Grad-CAM (Selvaraju et al., 2017) as implemented in gradcam_repro.gradcam.

The method's claim: for class c and layer activations A^k,
    alpha_k^c = (1 / Z) sum_ij dy^c / dA^k_ij,      L^c = ReLU(sum_k alpha_k^c A^k).
These tests check that formula against hand-computed numbers, against the
reference implementation pytorch-grad-cam, and check the engineering promises of
the module (batching, several layers from one pass, no side effects on the model).
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from cam_helpers import all_hooks_empty, minmax
from torch import nn

from gradcam_repro.errors import UserError
from gradcam_repro.explain.cam import GradCAM, upsample_and_scale

# --------------------------------------------------------------------------- helpers


class TinyNet(nn.Module):
    """conv(1->2, k=2, s=2) -> ReLU -> global average pool -> linear(2->2), fixed weights.

    Channel 0 of the conv is the 2x2 block mean m, channel 1 is 3 - m, so on the
    input below (block means [[1, 2], [3, 4]]) every number can be worked out by hand.
    """

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 2, kernel_size=2, stride=2)
        self.act = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2, 2)
        with torch.no_grad():
            self.conv.weight.copy_(torch.stack([torch.full((1, 2, 2), 0.25), torch.full((1, 2, 2), -0.25)]))
            self.conv.bias.copy_(torch.tensor([0.0, 3.0]))
            self.fc.weight.copy_(torch.tensor([[1.0, 2.0], [-1.0, 1.0]]))
            self.fc.bias.zero_()

    def forward(self, x):
        return self.fc(self.pool(self.act(self.conv(x))).flatten(1))


def tiny_input(n: int = 1) -> torch.Tensor:
    """(n, 1, 4, 4) input whose 2x2 block means are [[1, 2], [3, 4]] (a zero-mean
    checkerboard is added inside each block; the averaging conv cancels it)."""
    means = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    x = torch.kron(means, torch.ones(2, 2)) + 0.5 * torch.tensor([[1.0, -1.0], [-1.0, 1.0]]).repeat(2, 2)
    return x.expand(n, 1, 4, 4).clone()


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(2))


@pytest.fixture(scope="module")
def small_images() -> torch.Tensor:
    """Six 16x16 images: the CIFAR ResNet is fully convolutional, and these are 4x cheaper."""
    return torch.randn(6, 3, 16, 16, generator=torch.Generator().manual_seed(3))


# --------------------------------------------------------------------------- the formula, by hand


def test_tiny_net_forward_is_what_the_hand_computation_assumes():
    # A_0 = [[1,2],[3,4]], relu(A_1) = [[2,1],[0,0]]; GAP -> (2.5, 0.75);
    # logits = W @ (2.5, 0.75) = (2.5 + 1.5, -2.5 + 0.75) = (4.0, -1.75).
    logits = TinyNet()(tiny_input())
    torch.testing.assert_close(logits, torch.tensor([[4.0, -1.75]]), atol=1e-6, rtol=0)


def test_gradcam_after_relu_equals_hand_computed_map():
    # Layer "act": A_0 = [[1,2],[3,4]], A_1 = [[2,1],[0,0]], h*w = 4.
    # With GAP + linear, dy_c/dA_k_ij = W[c,k] / 4 everywhere, so alpha_k^c = W[c,k] / 4.
    # class 0: alpha = (0.25, 0.5):   0.25*A_0 + 0.5*A_1  = [[1.25, 1.0], [0.75, 1.0]]
    # class 1: alpha = (-0.25, 0.25): -0.25*A_0 + 0.25*A_1 = [[0.25, -0.25], [-0.75, -1.0]] -> ReLU
    model = TinyNet()
    result = GradCAM(model, "act")(tiny_input(2), [0, 1])
    expected_raw = torch.tensor([[[1.25, 1.0], [0.75, 1.0]], [[0.25, 0.0], [0.0, 0.0]]])
    torch.testing.assert_close(result.raw, expected_raw, atol=1e-6, rtol=0)
    assert result.raw.dtype == torch.float32
    assert result.targets.tolist() == [0, 1] and result.targets.dtype == torch.int64
    torch.testing.assert_close(result.logits, torch.tensor([[4.0, -1.75]] * 2), atol=1e-6, rtol=0)

    # Upsampled maps: bilinear (align_corners=False) to the 4x4 input, divided by the maximum.
    reference = F.interpolate(expected_raw[:, None], size=(4, 4), mode="bilinear", align_corners=False)[:, 0]
    reference = reference / reference.amax(dim=(1, 2), keepdim=True)
    torch.testing.assert_close(result.maps, reference, atol=1e-6, rtol=0)
    # ... which by hand (1-D weights [1, .75/.25, .25/.75, 1] along each axis) is, for class 0:
    expected_class0 = torch.tensor([
        [1.0, 0.95, 0.85, 0.8],
        [0.9, 0.875, 0.825, 0.8],
        [0.7, 0.725, 0.775, 0.8],
        [0.6, 0.65, 0.75, 0.8],
    ])
    torch.testing.assert_close(result.maps[0], expected_class0, atol=1e-6, rtol=0)
    # class 1: only the top-left cell is positive; corners of the output hit cells exactly.
    assert result.maps[1, 0, 0].item() == 1.0
    assert result.maps[1, -1, -1].item() == 0.0


def test_gradcam_before_relu_includes_the_relu_mask():
    # Layer "conv" (pre-ReLU): A_1 = [[2,1],[0,-1]]; dy/dA_1 is zero where A_1 <= 0, so
    # alpha_1 = W[c,1] * (2 positive cells / 4) / 4 = W[c,1] / 8, alpha_0 = W[c,0] / 4.
    # class 0: 0.25*A_0 + 0.25*A_1 = 0.75 everywhere -> a constant map, maps all ones.
    # class 1: -0.25*A_0 + 0.125*A_1 = [[0, -0.375], [-0.75, -1.125]] -> ReLU -> all zero.
    model = TinyNet()
    result = GradCAM(model, "conv")(tiny_input(2), torch.tensor([0, 1]))
    torch.testing.assert_close(result.raw[0], torch.full((2, 2), 0.75), atol=1e-6, rtol=0)
    assert torch.equal(result.raw[1], torch.zeros(2, 2))
    assert torch.equal(result.maps[0], torch.ones(4, 4))
    # An all-zero map stays all zero, without NaN.
    assert torch.equal(result.maps[1], torch.zeros(4, 4))


def test_default_target_is_the_predicted_class():
    result = GradCAM(TinyNet(), "act")(tiny_input(1))
    assert result.targets.tolist() == [0]  # logits (4.0, -1.75)
    torch.testing.assert_close(result.raw[0], torch.tensor([[1.25, 1.0], [0.75, 1.0]]), atol=1e-6, rtol=0)


def test_explicit_targets_accept_a_list_a_tuple_and_a_tensor():
    model, x = TinyNet(), tiny_input(2)
    a = GradCAM(model, "act")(x, [1, 0])
    b = GradCAM(model, "act")(x, (1, 0))
    c = GradCAM(model, "act")(x, torch.tensor([1, 0]))
    assert torch.equal(a.raw, b.raw) and torch.equal(a.raw, c.raw)
    assert torch.equal(a.raw[0], torch.tensor([[0.25, 0.0], [0.0, 0.0]]))


# --------------------------------------------------------------------------- reference implementation


@pytest.mark.parametrize(
    "layers, targets",
    [
        (["layer4.1.conv2", "layer3.1.conv2", "layer4"], [3, 1, 7, 0]),
        (["layer4.1.conv2"], None),  # the predicted class
    ],
    ids=["given-targets", "predicted-class"],
)
def test_matches_pytorch_grad_cam_on_cifar_resnet18(resnet, images, layers, targets):
    from pytorch_grad_cam import GradCAM as ReferenceGradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    x = images[:4]
    ours = GradCAM(resnet, layers).per_layer(x, targets)
    expected_targets = torch.tensor(targets) if targets is not None else ours[layers[0]].logits.argmax(1)

    for name in layers:
        assert torch.equal(ours[name].targets, expected_targets)
        ref_targets = None if targets is None else [ClassifierOutputTarget(t) for t in targets]
        # The reference puts the model in eval mode (it already is) and keeps its hooks
        # until released: the context manager releases them.
        with ReferenceGradCAM(model=resnet, target_layers=[resnet.get_submodule(name)]) as reference:
            theirs = reference(input_tensor=x, targets=ref_targets)
        resnet.zero_grad(set_to_none=True)  # the reference accumulates weight gradients
        assert all_hooks_empty(resnet)
        assert theirs.shape == (4, 32, 32)
        # The maps must not be degenerate, or the comparison proves little.
        assert (ours[name].raw.amax(dim=(1, 2)) > 0).sum() >= 2, name
        # pytorch-grad-cam min-max scales the map and then resizes it; ours upsamples and
        # divides by the maximum. Min-max scaling of both gives the same map.
        diff = (minmax(theirs) - minmax(ours[name].maps)).abs().max().item()
        assert diff <= 1e-4, f"{name}: max abs difference {diff}"


# --------------------------------------------------------------------------- batching and several layers


def test_batch_equals_per_image(resnet, small_images):
    # 16x16 inputs keep this cheap on CPU: layer3 gives 4x4 maps, layer4 2x2.
    layers, targets = ["layer3.1.conv2", "layer4.1.conv2"], torch.tensor([0, 9, 4, 4, 2, 7])
    batch = GradCAM(resnet, layers).per_layer(small_images, targets)
    for i in range(len(small_images)):
        single = GradCAM(resnet, layers).per_layer(small_images[i:i + 1], targets[i:i + 1])
        for name in layers:
            torch.testing.assert_close(batch[name].maps[i], single[name].maps[0], atol=1e-5, rtol=0)
            torch.testing.assert_close(batch[name].raw[i], single[name].raw[0], atol=1e-5, rtol=0)
            torch.testing.assert_close(batch[name].logits[i], single[name].logits[0], atol=1e-5, rtol=0)
            assert batch[name].targets[i] == single[name].targets[0] == targets[i]
    # Different targets give different maps: the comparison above is per image, not trivially equal.
    assert not torch.allclose(batch["layer3.1.conv2"].raw[2], GradCAM(resnet, "layer3.1.conv2")(small_images[2:3], [5]).raw[0])


def test_several_layers_equal_each_layer_alone(resnet, small_images):
    x, targets = small_images[:3], [5, 2, 8]
    layers = ["layer3.1.conv2", "layer4.1.conv2"]
    together = GradCAM(resnet, layers).per_layer(x, targets)
    assert list(together) == layers
    for name in layers:
        alone = GradCAM(resnet, name)(x, targets)
        torch.testing.assert_close(together[name].raw, alone.raw, atol=1e-6, rtol=0)
        torch.testing.assert_close(together[name].maps, alone.maps, atol=1e-6, rtol=0)
        assert torch.equal(together[name].targets, alone.targets)


def test_several_layers_need_per_layer(resnet, images):
    with pytest.raises(ValueError, match="per_layer"):
        GradCAM(resnet, ["layer3", "layer4"])(images[:1])


# --------------------------------------------------------------------------- no side effects on the model


def test_no_hooks_left_after_a_call_or_a_with_block(resnet, small_images):
    GradCAM(resnet, ["layer3.1.conv2", "layer4"]).per_layer(small_images[:2])
    assert all_hooks_empty(resnet)
    with GradCAM(resnet, ["layer3.1.conv2", "layer4"]) as cam:
        cam.per_layer(small_images[:2])
        assert not all_hooks_empty(resnet)  # the block holds its hooks until it exits
    assert all_hooks_empty(resnet)


@pytest.mark.parametrize(
    "layers, call",
    [
        (["layer4.1.conv2"], lambda cam, x: cam(x, [1])),                   # wrong target count
        (["layer4.1.conv2"], lambda cam, x: cam(x, [1, 2, 3, 99])),         # target out of range
        (["layer4.1.conv2"], lambda cam, x: cam(x[:, :1])),                 # fails inside forward()
        (["layer4", "fc"], lambda cam, x: cam.per_layer(x)),                # layer output is not 4-D
    ],
    ids=["target-count", "target-range", "forward-error", "non-4d-layer"],
)
def test_no_hooks_left_and_model_restored_after_an_exception(resnet, small_images, layers, call):
    model = copy.deepcopy(resnet).train()
    model.conv1.weight.requires_grad_(False)
    flags = [p.requires_grad for p in model.parameters()]
    with pytest.raises((ValueError, RuntimeError, UserError)):  # UserError: a layer that is not a feature map
        call(GradCAM(model, layers), small_images[:4])
    assert all_hooks_empty(model)
    assert model.training
    assert [p.requires_grad for p in model.parameters()] == flags


def test_train_mode_requires_grad_and_bn_stats_are_restored(resnet, small_images):
    model = copy.deepcopy(resnet).train()
    frozen = {"conv1.weight", "bn1.weight", "bn1.bias", "layer1.0.conv1.weight"}
    for name, p in model.named_parameters():
        p.requires_grad_(name not in frozen)
    model.fc.weight.grad = torch.full_like(model.fc.weight, 7.0)  # an accumulated gradient of the caller
    buffers = {k: v.clone() for k, v in model.state_dict().items()}

    result = GradCAM(model, "layer4.1.conv2")(small_images[:2], [1, 2])

    assert model.training and all(m.training for m in model.modules())
    assert {n for n, p in model.named_parameters() if not p.requires_grad} == frozen
    # BN running statistics (and every other tensor of the state) are untouched: the pass runs in eval mode.
    for k, v in model.state_dict().items():
        assert torch.equal(v, buffers[k]), k
    # Parameter gradients are neither computed nor altered.
    assert torch.equal(model.fc.weight.grad, torch.full_like(model.fc.weight, 7.0))
    assert all(p.grad is None for n, p in model.named_parameters() if n != "fc.weight")
    # ... and the map is the eval-mode map.
    expected = GradCAM(resnet, "layer4.1.conv2")(small_images[:2], [1, 2])
    torch.testing.assert_close(result.raw, expected.raw, atol=1e-6, rtol=0)


def test_eval_mode_is_restored(resnet, small_images):
    model = copy.deepcopy(resnet).eval()
    GradCAM(model, "layer4")(small_images[:1])
    assert not any(m.training for m in model.modules())


def test_mixed_submodule_modes_are_restored(resnet, small_images):
    # Common fine-tuning setup: the model trains but its BatchNorm layers are frozen in eval mode.
    model = copy.deepcopy(resnet).train()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.eval()
    before = {name: m.training for name, m in model.named_modules()}
    GradCAM(model, "layer4")(small_images[:1])
    after = {name: m.training for name, m in model.named_modules()}
    assert after == before


# --------------------------------------------------------------------------- map range and degenerate maps


def test_maps_are_in_unit_range_with_max_exactly_one(resnet, small_images):
    result = GradCAM(resnet, ["layer3.1.conv2", "layer4"]).per_layer(small_images, list(range(6)))
    for r in result.values():
        assert not torch.isnan(r.maps).any() and not torch.isnan(r.raw).any()
        assert r.maps.dtype == torch.float32 and r.maps.shape == (6, 16, 16)
        assert r.maps.min() >= 0 and r.maps.max() <= 1
        assert (r.raw >= 0).all()
        peaks = r.maps.amax(dim=(1, 2))
        nonzero = r.raw.amax(dim=(1, 2)) > 0
        assert nonzero.any()
        assert torch.equal(peaks[nonzero], torch.ones(int(nonzero.sum())))
        assert torch.equal(peaks[~nonzero], torch.zeros(int((~nonzero).sum())))


class DeadNet(nn.Module):
    """The explained layer's activations are all zero (a conv with zero weights and bias)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.head = nn.Linear(4, 3)
        nn.init.zeros_(self.conv.weight)
        nn.init.zeros_(self.conv.bias)

    def forward(self, x):
        return self.head(self.conv(x).mean(dim=(2, 3)))


class BlockedNet(nn.Module):
    """The explained layer has non-zero activations but zero gradients (a ReLU after a negative shift)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.head = nn.Linear(4, 3)

    def forward(self, x):
        return self.head(F.relu(self.conv(x) - 1e3).mean(dim=(2, 3)))


@pytest.mark.parametrize("net", [DeadNet, BlockedNet])
def test_all_zero_map_stays_zero_without_nan(net):
    torch.manual_seed(0)
    x = torch.randn(2, 3, 8, 8)
    result = GradCAM(net(), "conv")(x, [0, 2])
    assert torch.equal(result.raw, torch.zeros(2, 8, 8))
    assert torch.equal(result.maps, torch.zeros(2, 8, 8))


def test_upsample_and_scale_divides_by_the_peak_and_keeps_zero_maps_zero():
    raw = torch.tensor([[[0.0, 0.0], [0.0, 0.0]], [[2.0, 4.0], [0.0, 1.0]], [[3e-30, 0.0], [0.0, 0.0]]])
    maps = upsample_and_scale(raw, (4, 4))
    assert torch.isfinite(maps).all()
    assert torch.equal(maps[0], torch.zeros(4, 4))
    # Output corners sit on input cells (align_corners=False clamps at the border).
    assert maps[1, 0, -1].item() == 1.0 and maps[1, -1, 0].item() == 0.0
    assert maps[1, 0, 0].item() == 0.5 and maps[1, -1, -1].item() == 0.25
    assert maps[2].max().item() == 1.0 and maps[2, 0, 0].item() == 1.0


def test_upsample_and_scale_max_is_one_even_for_a_subnormal_peak():
    raw = torch.tensor([[[1e-38, 0.0], [0.0, 0.0]]])
    maps = upsample_and_scale(raw, (4, 4))
    assert maps.max().item() == 1.0


# --------------------------------------------------------------------------- input errors


@pytest.mark.parametrize("n_targets", [3, 5])
def test_wrong_number_of_targets_raises_with_the_count(resnet, small_images, n_targets):
    with pytest.raises(ValueError, match=rf"{n_targets} targets for 4 images"):
        GradCAM(resnet, "layer4")(small_images[:4], list(range(n_targets)))


@pytest.mark.parametrize("bad", [10, -1])
def test_out_of_range_target_raises(bad):
    with pytest.raises(ValueError, match=r"\[0, 2\)"):
        GradCAM(TinyNet(), "act")(tiny_input(2), [0, bad])


def test_images_must_be_4d():
    with pytest.raises(ValueError, match="N, C, H, W"):
        GradCAM(TinyNet(), "act")(tiny_input(1)[0])


@pytest.mark.parametrize("path", ["layer5", "layer4.1.conv3", ""])
def test_unknown_layer_raises_user_error_listing_valid_layers(resnet, path):
    with pytest.raises(UserError) as info:
        GradCAM(resnet, path)
    message = str(info.value)
    assert repr(path) in message
    for valid in ("layer4.1.conv2", "layer3.1.conv2", "layer4", "conv1", "fc"):
        assert valid in message


def test_no_layers_raises():
    with pytest.raises(ValueError, match="at least one layer"):
        GradCAM(TinyNet(), [])


def test_layer_unused_in_forward_raises():
    model = TinyNet()
    model.spare = nn.Conv2d(1, 1, 1)
    with pytest.raises(ValueError, match="not used"):
        GradCAM(model, ["act", "spare"]).per_layer(tiny_input(1))
    assert all_hooks_empty(model)


# --------------------------------------------------------------------------- reduced precision


def test_bf16_autocast_is_close_to_fp32(resnet, images):
    # bfloat16 keeps 8 significand bits (unit roundoff 2^-8 ~ 0.4 %); through ~18 conv/BN
    # layers the relative error of activations and gradients grows to a few percent (here
    # ~1.6 % of the map's peak). We therefore ask for: raw maps within 5 % of the fp32 peak,
    # upsampled maps within 0.15 absolute (peak-normalised maps amplify errors where the map
    # is flat), and a per-image correlation above 0.99. A wrong implementation (e.g. weights
    # from another class, or no ReLU) fails these by a wide margin.
    x, targets = images[:4], [3, 1, 7, 0]
    fp32 = GradCAM(resnet, "layer4.1.conv2")(x, targets)
    bf16 = GradCAM(resnet, "layer4.1.conv2", autocast_dtype=torch.bfloat16)(x, targets)
    assert bf16.maps.dtype == torch.float32 and bf16.raw.dtype == torch.float32
    assert bf16.logits.dtype == torch.float32
    assert torch.equal(bf16.targets, fp32.targets)
    torch.testing.assert_close(bf16.logits, fp32.logits, atol=0.05, rtol=0.05)
    peak = fp32.raw.amax()
    assert peak > 0
    assert (bf16.raw - fp32.raw).abs().max() <= 0.05 * peak
    assert (bf16.maps - fp32.maps).abs().max() <= 0.15
    for i in range(len(x)):
        if fp32.raw[i].max() > 0.1 * peak:
            corr = np.corrcoef(bf16.maps[i].flatten().numpy(), fp32.maps[i].flatten().numpy())[0, 1]
            assert corr > 0.99, (i, corr)
    assert all_hooks_empty(resnet)
