"""One explainer protocol: every method, CAM or pixel-space, is reached the same way, and a new one is one class."""

import pytest
import torch
import torch.nn.functional as F
from cam_helpers import all_hooks_empty

from gradcam_repro.explain import registry
from gradcam_repro.explain.cam import BaseCAM, GradCAM, shared_maps
from gradcam_repro.explain.registry import EXPLAINERS, explain_images, explain_images_by_method, make_explainer, map_layers
from gradcam_repro.model.resnet import normalize
from gradcam_repro.runtime import Runtime

CPU = Runtime(torch.device("cpu"))


@pytest.fixture(scope="module")
def images():
    return torch.randint(0, 256, (5, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(3))


@pytest.mark.parametrize("method", list(EXPLAINERS))
def test_every_registered_method_returns_maps_in_unit_range_under_its_layers(resnet, images, method):
    targets = torch.tensor([0, 1, 2, 3, 4])
    maps = explain_images(method, resnet, images[:2] if method == "scorecam" else images,
                          targets[:2] if method == "scorecam" else targets, ["layer4"], CPU)
    assert list(maps) == map_layers(method, ["layer4"])
    m = maps[list(maps)[0]]
    assert m.shape == (2 if method == "scorecam" else 5, 32, 32) and m.min() >= 0 and m.max() <= 1
    assert (m.flatten(1).amax(1) > 0).any()
    assert all_hooks_empty(resnet)


def test_batched_driver_equals_one_call_on_the_whole_batch(resnet, images):
    targets = torch.tensor([9, 8, 7, 6, 5])
    batched = explain_images("gradcam", resnet, images, targets, ["layer3", "layer4"], CPU, batch_size=2)
    whole = make_explainer("gradcam", resnet, ["layer3", "layer4"]).maps(normalize(images), targets)
    for layer in ("layer3", "layer4"):
        torch.testing.assert_close(batched[layer], whole[layer], atol=1e-5, rtol=1e-5)


def test_adding_a_method_is_one_class_and_one_registry_line(resnet, images, monkeypatch):
    class GradientNormCAM(BaseCAM):
        """A toy method: the L2 norm of the gradient over channels."""

        name = "gradnorm"
        display_name = "Gradient norm"

        def cam_from(self, activations, gradients):
            return gradients.norm(dim=1)

    monkeypatch.setitem(EXPLAINERS, GradientNormCAM.name, GradientNormCAM)
    maps = explain_images("gradnorm", resnet, images, torch.zeros(5, dtype=torch.int64), ["layer4"], CPU)["layer4"]
    assert maps.shape == (5, 32, 32) and registry.display_name("gradnorm") == "Gradient norm"
    # The same map by hand: one forward/backward, gradient norm at layer4, upsampled and scaled.
    acts = {}
    handle = resnet.layer4.register_forward_hook(lambda m, i, o: acts.setdefault("a", o))
    x = normalize(images).requires_grad_(True)
    logits = resnet(x)
    handle.remove()
    grad = torch.autograd.grad(logits[:, 0].sum(), acts["a"])[0]
    raw = grad.norm(dim=1)
    up = F.interpolate(raw[:, None], size=(32, 32), mode="bilinear", align_corners=False)[:, 0]
    expected = up / up.amax(dim=(1, 2), keepdim=True)
    torch.testing.assert_close(maps, expected, atol=1e-4, rtol=1e-4)


def test_a_with_block_registers_hooks_on_entry_and_removes_them_on_exit(resnet, images):
    cam = GradCAM(resnet, "layer4")
    assert all_hooks_empty(resnet)
    with cam:
        assert resnet.layer4._forward_hooks, "no hook registered on entry"
        first = cam(normalize(images), [1] * 5).maps
        second = cam(normalize(images), [1] * 5).maps
        assert len(resnet.layer4._forward_hooks) == 1  # calls inside the block reuse the block's hooks
    assert all_hooks_empty(resnet)
    torch.testing.assert_close(first, second)
    torch.testing.assert_close(first, GradCAM(resnet, "layer4")(normalize(images), [1] * 5).maps)
    assert all_hooks_empty(resnet)


def test_gradient_cams_share_one_pass_per_batch_and_each_gets_its_own_maps(resnet, images):
    methods = ["gradcam", "hirescam", "layercam", "gradcam++", "xgradcam", "eigencam", "inputxgradient"]
    targets = torch.tensor([9, 8, 7, 6, 5])
    passes = []
    handle = resnet.register_forward_hook(lambda module, inputs, output: passes.append(len(inputs[0])))
    try:
        together = explain_images_by_method(methods, resnet, images, targets, ["layer2", "layer4"], CPU, batch_size=2)
        shared_passes, passes[:] = list(passes), []
        alone = {method: explain_images(method, resnet, images, targets, ["layer2", "layer4"], CPU, batch_size=2)
                 for method in methods}
    finally:
        handle.remove()
    for method in methods:
        assert list(together[method]) == list(alone[method]) == map_layers(method, ["layer2", "layer4"])
        for key in together[method]:
            assert torch.equal(together[method][key], alone[method][key]), (method, key)
    # Three batches: one shared pass each for the five gradient CAMs, plus Eigen-CAM's and Input x Gradient's own.
    assert sum(shared_passes) == 3 * len(images) and len(passes) == 7 * 3
    assert all_hooks_empty(resnet)


def test_only_gradient_cams_of_one_model_and_layers_can_share_a_pass(resnet, images):
    x = normalize(images)
    for method in ("eigencam", "scorecam"):
        with pytest.raises(ValueError, match="explain it alone"):
            shared_maps([make_explainer("gradcam", resnet, ["layer4"]), make_explainer(method, resnet, ["layer4"])], x)
    with pytest.raises(ValueError, match="same layers"):
        shared_maps([make_explainer("gradcam", resnet, ["layer4"]), make_explainer("hirescam", resnet, ["layer3"])], x)
    assert all_hooks_empty(resnet)
