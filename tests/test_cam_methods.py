"""The CAM method family and the pixel-space baselines, cross-checked against reference libraries.

Claim: every method here computes the same map as pytorch-grad-cam's class of the
same name (and Grad-CAM also as Captum's LayerGradCam), on the same model, layer,
inputs and targets; the pixel-space maps are Captum's attributions reduced as documented.

Tolerances (after per-image min-max scaling of both maps, which removes the
libraries' different final scaling, see test_gradcam.py):
- 1e-4 for the gradient methods: both sides compute the same float32 sums in a
  different order (torch vs numpy), errors are ~1e-6 of the map's range;
- 1e-3 for Eigen-CAM: two float32 SVDs (LAPACK through torch vs numpy) agree to
  ~1e-5 relative on the singular vector, amplified by the centring;
- 1e-4 for Score-CAM: the same masked forward passes, batched differently.
"""

from __future__ import annotations

import re

import pytest
import torch
import torch.nn.functional as F
from cam_helpers import all_hooks_empty, minmax

from gradcam_repro.errors import UserError
from gradcam_repro.explain.cam import GradCAM
from gradcam_repro.explain.pixel import reduce_to_map
from gradcam_repro.explain.registry import CAM_METHODS, EXPLAINERS, PIXEL_METHODS, make_explainer

TOLERANCE = {"gradcam": 1e-4, "gradcam++": 1e-4, "hirescam": 1e-4, "xgradcam": 1e-4, "layercam": 1e-4,
             "scorecam": 1e-4, "eigencam": 1e-3}


def pixel_attribution(model, x, targets, method, ig_steps=None):
    """A pixel method's maps through the explainer protocol (Integrated Gradients with `ig_steps` steps)."""
    explainer = make_explainer(method, model, [])
    if ig_steps is not None:
        explainer.n_steps = ig_steps
    return explainer.maps(x, targets)["input"]


def reference_class(method: str):
    import pytorch_grad_cam as pgc

    return {"gradcam": pgc.GradCAM, "gradcam++": pgc.GradCAMPlusPlus, "hirescam": pgc.HiResCAM,
            "xgradcam": pgc.XGradCAM, "layercam": pgc.LayerCAM, "scorecam": pgc.ScoreCAM,
            "eigencam": pgc.EigenCAM}[method]


@pytest.fixture(scope="module")
def inputs():
    """Three 32x32 inputs for the gradient methods, two 16x16 ones for Score-CAM (K forward passes each)."""
    g = torch.Generator().manual_seed(5)
    return {"full": torch.randn(3, 3, 32, 32, generator=g), "small": torch.randn(2, 3, 16, 16, generator=g)}


@pytest.mark.parametrize("layer", ["layer4.1.conv2", "layer2"])
@pytest.mark.parametrize("method", CAM_METHODS)
def test_each_method_equals_pytorch_grad_cam(resnet, inputs, method, layer):
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    x = inputs["small" if method == "scorecam" else "full"]
    targets = [3, 8, 1][:len(x)]
    ours = make_explainer(method, resnet, layer)(x, targets)
    assert torch.equal(ours.targets, torch.tensor(targets))
    with reference_class(method)(model=resnet, target_layers=[resnet.get_submodule(layer)]) as reference:
        if method == "scorecam":
            reference.batch_size = 128
        theirs = reference(input_tensor=x, targets=[ClassifierOutputTarget(t) for t in targets])
    resnet.zero_grad(set_to_none=True)  # the reference accumulates weight gradients
    assert all_hooks_empty(resnet)
    # Non-degenerate maps, or the comparison proves little.
    assert (ours.raw.flatten(1).amax(1) > 0).all(), method
    assert (ours.raw.flatten(1).std(1) > 0).all(), method
    diff = (minmax(theirs) - minmax(ours.maps)).abs().max().item()
    assert diff <= TOLERANCE[method], f"{method} at {layer}: max abs difference {diff}"


def test_methods_differ_from_each_other(resnet, inputs):
    # Equal-to-the-reference is only meaningful if the methods are not all the same map.
    x, t = inputs["full"], [3, 8, 1]
    maps = {m: make_explainer(m, resnet, "layer2")(x, t).maps for m in ("gradcam", "gradcam++", "hirescam", "layercam", "eigencam")}
    names = list(maps)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            assert (maps[a] - maps[b]).abs().max() > 0.05, (a, b)


@pytest.mark.parametrize("method", CAM_METHODS)
def test_batch_equals_per_image_for_every_method(resnet, inputs, method):
    x = inputs["small"]
    layer = "layer3.1.conv2" if method == "scorecam" else "layer4.1.conv2"
    targets = torch.tensor([7, 2])
    batch = make_explainer(method, resnet, layer)(x, targets)
    for i in range(len(x)):
        single = make_explainer(method, resnet, layer)(x[i:i + 1], targets[i:i + 1])
        # Compared on the [0, 1] maps: XGrad-CAM divides by sum_ij A, which is tiny for some
        # channels, so float32 rounding that differs between batch sizes moves the raw map
        # by ~1e-3 relative; 1e-3 of the map's range is still "the same map".
        torch.testing.assert_close(batch.maps[i], single.maps[0], atol=1e-3, rtol=0)


def test_score_cam_chunking_does_not_change_the_map(resnet, inputs):
    x, t = inputs["small"], [4, 4]
    whole = EXPLAINERS["scorecam"](resnet, "layer3.1.conv2", batch_size=512)(x, t)
    chunked = EXPLAINERS["scorecam"](resnet, "layer3.1.conv2", batch_size=100)(x, t)  # 256 channels in 3 chunks
    torch.testing.assert_close(whole.raw, chunked.raw, atol=1e-5, rtol=1e-5)


def test_gradient_free_methods_leave_the_model_as_it_was(resnet, inputs):
    flags = [p.requires_grad for p in resnet.parameters()]
    for method in ("scorecam", "eigencam"):
        make_explainer(method, resnet, "layer4")(inputs["small"], [0, 1])
    assert [p.requires_grad for p in resnet.parameters()] == flags
    assert all(p.grad is None for p in resnet.parameters())
    assert not resnet.training and all_hooks_empty(resnet)


def test_unknown_method_is_a_user_error(resnet):
    with pytest.raises(UserError, match=re.escape("unknown explanation method 'gradcam+'")):
        make_explainer("gradcam+", resnet, "layer4")


def test_grad_cam_equals_captum_layer_grad_cam(resnet, inputs):
    from captum.attr import LayerAttribution, LayerGradCam

    x, t = inputs["full"], torch.tensor([3, 8, 1])
    for layer in ("layer4.1.conv2", "layer3"):
        ours = GradCAM(resnet, layer)(x, t)
        attr = LayerGradCam(resnet, resnet.get_submodule(layer)).attribute(x, target=t, relu_attributions=True)
        up = LayerAttribution.interpolate(attr, x.shape[-2:], interpolate_mode="bilinear")[:, 0]
        torch.testing.assert_close(ours.raw, attr[:, 0].float(), atol=1e-5, rtol=1e-4)
        theirs = up / up.amax(dim=(1, 2), keepdim=True)
        torch.testing.assert_close(ours.maps, theirs, atol=1e-5, rtol=1e-4)
    resnet.zero_grad(set_to_none=True)


# --------------------------------------------------------------------------- pixel-space baselines (Captum)


def test_reduction_is_l1_over_channels_scaled_to_max():
    a = torch.zeros(1, 3, 2, 2)
    a[0, :, 0, 0] = torch.tensor([1.0, -2.0, 1.0])  # |.| sums to 4
    a[0, 0, 1, 1] = -2.0                          # sums to 2
    torch.testing.assert_close(reduce_to_map(a), torch.tensor([[[1.0, 0.0], [0.0, 0.5]]]))
    assert torch.equal(reduce_to_map(torch.zeros(2, 3, 4, 4)), torch.zeros(2, 4, 4))  # no division by zero


def test_saliency_is_the_input_gradient(resnet, inputs):
    x, t = inputs["full"][:2], torch.tensor([5, 0])
    xg = x.clone().requires_grad_(True)
    logits = resnet(xg)
    (grad,) = torch.autograd.grad(logits.gather(1, t[:, None]).sum(), xg)
    torch.testing.assert_close(pixel_attribution(resnet, x, t, "saliency"), reduce_to_map(grad), atol=1e-6, rtol=1e-5)


def test_input_x_gradient_and_integrated_gradients_follow_their_definitions(resnet, inputs):
    x, t = inputs["full"][:2], torch.tensor([5, 0])
    xg = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(resnet(xg).gather(1, t[:, None]).sum(), xg)
    torch.testing.assert_close(pixel_attribution(resnet, x, t, "inputxgradient"), reduce_to_map(x * grad), atol=1e-6, rtol=1e-5)
    # IG from the zero baseline: the attributions sum (over pixels, before |.|) to
    # logit(x) - logit(0) up to the Riemann error; check on Captum's raw output.
    from captum.attr import IntegratedGradients

    attr = IntegratedGradients(resnet).attribute(x, baselines=torch.zeros_like(x), target=t, n_steps=64)
    with torch.no_grad():
        gap = resnet(x).gather(1, t[:, None])[:, 0] - resnet(torch.zeros_like(x)).gather(1, t[:, None])[:, 0]
    torch.testing.assert_close(attr.sum(dim=(1, 2, 3)), gap, atol=0.05 * gap.abs().max().item(), rtol=0)
    ig = pixel_attribution(resnet, x, t, "integratedgradients")
    assert ig.shape == (2, 32, 32) and ig.min() >= 0 and torch.allclose(ig.flatten(1).amax(1), torch.ones(2))


@pytest.mark.parametrize("method", PIXEL_METHODS)
def test_pixel_maps_are_per_image_and_leave_no_gradients(resnet, inputs, method):
    x, t = inputs["small"], torch.tensor([1, 6])
    maps = pixel_attribution(resnet, x, t, method, ig_steps=8)
    single = pixel_attribution(resnet, x[1:], t[1:], method, ig_steps=8)
    torch.testing.assert_close(maps[1], single[0], atol=1e-5, rtol=1e-4)
    assert all(p.grad is None for p in resnet.parameters())
    assert not resnet.training
    # Different targets explain different things.
    other = pixel_attribution(resnet, x[1:], torch.tensor([2]), method, ig_steps=8)
    assert (other[0] - single[0]).abs().max() > 1e-3


def test_unknown_pixel_method_is_a_user_error(resnet, inputs):
    with pytest.raises(UserError, match="unknown explanation method 'gradient'"):
        pixel_attribution(resnet, inputs["small"], torch.tensor([0, 0]), "gradient")


def test_upsampling_matches_bilinear_definition(resnet, inputs):
    # The maps every method returns are the raw maps, bilinearly upsampled and divided by their max.
    r = make_explainer("layercam", resnet, "layer4.1.conv2")(inputs["full"], [1, 2, 3])
    up = F.interpolate(r.raw[:, None], size=(32, 32), mode="bilinear", align_corners=False)[:, 0]
    torch.testing.assert_close(r.maps, up / up.amax(dim=(1, 2), keepdim=True))
