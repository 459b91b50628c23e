"""The model parameter randomisation test (Adebayo et al., 2018) in gradcam_repro.sanity.

The paper's claim: an explanation of what a model learned must change when the
model's weights are replaced by random ones, from the top layer down; an
explanation that stays the same explains the input, not the model. These tests
check that the test tells the two kinds apart, and its engineering promises:
the caller's model is untouched, randomisation is cumulative and seeded, and
undefined correlations are counted rather than hidden.
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import pytest
import torch
from scipy.stats import spearmanr
from torch import nn

from gradcam_repro.explain.cam import GradCAM
from gradcam_repro.measure.sanity import (
    SANITY_MAX_SPEARMAN,
    cascade_steps,
    cascading_randomisation,
    sanity_verdict,
    spearman_per_image,
    ssim_per_image,
)
from gradcam_repro.model.resnet import resnet18_cifar
from gradcam_repro.report import figures

# --------------------------------------------------------------------------- helpers


def brightness(model, images, targets):
    """An explainer that ignores the model: the image's brightness, scaled to [0, 1]."""
    b = images.mean(dim=1)
    low = b.amin(dim=(1, 2), keepdim=True)
    return (b - low) / (b.amax(dim=(1, 2), keepdim=True) - low)


def grad_cam_layer4(model, images, targets):
    return GradCAM(model, "layer4.1.conv2")(images, targets).maps


class SmallNet(nn.Module):
    """conv -> bn -> relu -> pool -> fc: four parameterised top-level children and one without parameters."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.act = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.fc = nn.Linear(16, 3)

    def forward(self, x):
        return self.fc(self.pool(self.act(self.bn(self.conv(x)))).flatten(1))


def trained_looking_small_net() -> SmallNet:
    """A SmallNet whose BatchNorm holds non-default statistics and affine parameters, as after training."""
    torch.manual_seed(1)
    net = SmallNet().eval()
    with torch.no_grad():
        net.bn.weight.uniform_(0.5, 1.5)
        net.bn.bias.uniform_(-0.5, 0.5)
        net.bn.running_mean.uniform_(-1, 1)
        net.bn.running_var.uniform_(0.5, 2)
    return net


def images_and_targets(n: int = 6, size: int = 32, num_classes: int = 10):
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, 3, size, size, generator=g), torch.arange(n) % num_classes


def fake_result(names_and_modules, high=0.2):
    ci = {"mean": high - 0.1, "low": high - 0.2, "high": high, "n": 8}
    return {"steps": [{"name": n, "modules": m, "spearman": ci, "ssim": ci} for n, m in names_and_modules]}


# --------------------------------------------------------------------------- the order of the cascade


def test_resnet_cascade_goes_from_the_logits_down_block_by_block_to_the_stem():
    steps = cascade_steps(resnet18_cifar())
    assert [name for name, _ in steps] == [
        "fc", "layer4.1", "layer4.0", "layer3.1", "layer3.0", "layer2.1", "layer2.0", "layer1.1", "layer1.0", "stem",
    ]
    assert dict(steps)["stem"] == ["conv1", "bn1"]
    assert dict(steps)["layer3.0"] == ["layer3.0"]


def test_other_models_randomise_their_parameterised_children_in_reverse_order():
    assert cascade_steps(SmallNet()) == [("fc", ["fc"]), ("bn", ["bn"]), ("conv", ["conv"])]


# --------------------------------------------------------------------------- the claims of the paper


def test_an_explainer_that_ignores_the_model_stays_identical_and_fails():
    model = resnet18_cifar().eval()
    images, targets = images_and_targets()
    result = cascading_randomisation(model, images, targets, brightness)
    assert len(result["steps"]) == 10
    for step in result["steps"]:
        assert step["spearman"]["mean"] == pytest.approx(1.0)
        assert step["ssim"]["mean"] == pytest.approx(1.0)
        assert step["undefined_spearman"] == 0
    verdict = sanity_verdict(result, "layer4.1.conv2")
    assert verdict["step"] == "layer4.1"
    assert not verdict["passes"]
    assert verdict["threshold"] == SANITY_MAX_SPEARMAN


def test_grad_cam_loses_its_rank_agreement_once_its_block_is_random_and_passes():
    torch.manual_seed(0)
    model = resnet18_cifar().eval()
    images, targets = images_and_targets()
    result = cascading_randomisation(model, images, targets, grad_cam_layer4, steps=cascade_steps(model)[:2])
    at_layer = result["steps"][1]
    assert at_layer["name"] == "layer4.1"
    # The brightness explainer scores exactly 1 here; Grad-CAM must be far below it.
    assert at_layer["spearman"]["mean"] < 0.5
    assert at_layer["ssim"]["mean"] < 0.5
    assert sanity_verdict(result, "layer4.1.conv2")["passes"]


# --------------------------------------------------------------------------- engineering promises


def test_the_callers_model_keeps_its_weights_and_mode():
    model = trained_looking_small_net()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    images, targets = images_and_targets(n=3, num_classes=3)
    cascading_randomisation(model, images, targets, lambda m, x, t: GradCAM(m, "conv")(x, t).maps)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not model.training


def test_randomisation_is_cumulative_from_the_top():
    model = trained_looking_small_net()
    original = {k: v.clone() for k, v in model.state_dict().items()}
    snapshots = []

    def spy(m, x, t):
        snapshots.append({k: v.clone() for k, v in m.state_dict().items()})
        return brightness(m, x, t)

    images, targets = images_and_targets(n=2, num_classes=3)
    steps = cascade_steps(model)
    cascading_randomisation(model, images, targets, spy)
    assert len(snapshots) == 1 + len(steps)
    assert all(torch.equal(snapshots[0][k], original[k]) for k in original)
    for k, state in enumerate(snapshots[1:]):
        for j, (_, modules) in enumerate(steps):
            for key in original:
                if key.split(".")[0] not in modules or key.endswith("num_batches_tracked"):
                    continue
                changed = not torch.equal(state[key], original[key])
                assert changed == (j <= k), f"after step {steps[k][0]}, {key} changed={changed}"


def test_batchnorm_loses_its_running_statistics_and_affine_parameters():
    model = trained_looking_small_net()
    seen = []
    cascading_randomisation(model, *images_and_targets(n=2, num_classes=3),
                            lambda m, x, t: seen.append(m.bn) or brightness(m, x, t))
    bn = seen[-1]
    assert torch.equal(bn.running_mean, torch.zeros(4)) and torch.equal(bn.running_var, torch.ones(4))
    assert torch.equal(bn.weight, torch.ones(4)) and torch.equal(bn.bias, torch.zeros(4))


def test_the_same_seed_gives_the_same_random_weights_and_leaves_the_global_rng_alone():
    model = trained_looking_small_net()
    images, targets = images_and_targets(n=3, num_classes=3)
    explain = lambda m, x, t: GradCAM(m, "conv")(x, t).maps  # noqa: E731
    torch.manual_seed(123)
    a = cascading_randomisation(model, images, targets, explain, seed=5)
    after_first = torch.rand(1)
    torch.manual_seed(123)
    b = cascading_randomisation(model, images, targets, explain, seed=5)
    assert torch.equal(after_first, torch.rand(1))
    assert all(torch.equal(a["maps"][k], b["maps"][k]) for k in a["maps"])
    c = cascading_randomisation(model, images, targets, explain, seed=6)
    assert not torch.equal(a["maps"]["conv"], c["maps"]["conv"])


def test_maps_of_the_first_images_are_kept_for_every_step_in_cascade_order():
    model = trained_looking_small_net()
    images, targets = images_and_targets(n=6, num_classes=3)
    result = cascading_randomisation(model, images, targets, brightness, keep_images=4)
    assert list(result["maps"]) == ["original", "fc", "bn", "conv"]
    assert all(m.shape == (4, 32, 32) and m.device.type == "cpu" for m in result["maps"].values())
    assert torch.allclose(result["maps"]["original"], brightness(None, images[:4], None))


# --------------------------------------------------------------------------- similarity scores


def test_spearman_matches_scipy_and_is_undefined_for_constant_maps():
    g = torch.Generator().manual_seed(0)
    a, b = torch.rand(3, 8, 8, generator=g), torch.rand(3, 8, 8, generator=g)
    b[1] = 0.0  # an all-zero map
    a[2] = b[2] = 0.5  # both constant
    rho, undefined = spearman_per_image(a, b)
    assert undefined.tolist() == [False, True, True]
    assert rho[1] == 0.0 and rho[2] == 0.0
    assert rho[0].item() == pytest.approx(spearmanr(a[0].flatten(), b[0].flatten()).statistic)
    assert spearman_per_image(a[:1], 1 - a[:1])[0].item() == pytest.approx(-1.0)


def test_constant_maps_are_counted_as_undefined_and_scored_zero():
    model = trained_looking_small_net()
    images, targets = images_and_targets(n=3, num_classes=3)
    result = cascading_randomisation(model, images, targets, lambda m, x, t: torch.zeros(len(x), 32, 32))
    for step in result["steps"]:
        assert step["undefined_spearman"] == 3
        assert step["spearman"]["mean"] == 0.0
        assert step["ssim"]["mean"] == pytest.approx(1.0)  # identical maps are structurally identical


def test_ssim_is_one_for_identical_maps_and_lower_for_unrelated_ones():
    g = torch.Generator().manual_seed(0)
    a, b = torch.rand(2, 32, 32, generator=g), torch.rand(2, 32, 32, generator=g)
    assert ssim_per_image(a, a).tolist() == pytest.approx([1.0, 1.0])
    assert (ssim_per_image(a, b) < 0.2).all()


# --------------------------------------------------------------------------- the verdict


RESNET_STEPS = cascade_steps(resnet18_cifar())


@pytest.mark.parametrize(("layer", "step"), [
    ("layer4.1.conv2", "layer4.1"), ("layer4", "layer4.1"), ("layer3", "layer3.1"), ("layer2.0.bn1", "layer2.0"),
    ("fc", "fc"), ("conv1", "stem"), ("bn1", "stem"),
])
def test_the_verdict_is_read_where_the_explained_layer_becomes_random(layer, step):
    assert sanity_verdict(fake_result(RESNET_STEPS), layer)["step"] == step


def test_the_verdict_needs_the_upper_bound_below_the_threshold():
    assert sanity_verdict(fake_result(RESNET_STEPS, high=SANITY_MAX_SPEARMAN - 0.01), "fc")["passes"]
    assert not sanity_verdict(fake_result(RESNET_STEPS, high=SANITY_MAX_SPEARMAN), "fc")["passes"]
    assert not sanity_verdict(fake_result(RESNET_STEPS, high=float("nan")), "fc")["passes"]


def test_a_layer_the_cascade_never_randomises_is_an_error():
    with pytest.raises(ValueError, match="layer5"):
        sanity_verdict(fake_result(RESNET_STEPS), "layer5")
    with pytest.raises(ValueError, match="layer1"):
        sanity_verdict(fake_result([("layer10", ["layer10"])]), "layer1")


# --------------------------------------------------------------------------- the figure


def test_the_cascade_figure_shows_the_input_then_one_panel_per_step():
    image = torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8)
    maps = {name: torch.rand(32, 32) for name in ["original", "fc", "layer4.1"]}
    fig = figures.sanity_cascade(image, maps, "cascade")
    try:
        assert [ax.get_title() for ax in fig.axes] == ["input", "original", "fc", "layer4.1"]
    finally:
        figures.close(fig)
