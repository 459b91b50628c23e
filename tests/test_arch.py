"""Training other architectures (`run --arch`, `study --archs`): the builders, their layers, the spec keys, the
checkpoints, and a smoke run of each family end to end."""

from __future__ import annotations

import json

import pytest
import torch

from gradcam_repro.config import SEED_LAYER, Config
from gradcam_repro.errors import UserError
from gradcam_repro.explain.cam import get_layer
from gradcam_repro.explain.layers import default_layers, stage_layers
from gradcam_repro.model.arch import TRAINABLE, vgg11_cifar
from gradcam_repro.model.resnet import save_model
from gradcam_repro.pipeline.experiment import architecture, load_trained
from gradcam_repro.pipeline.prepare import validated
from gradcam_repro.pipeline.run import SWEEP_LAYERS, sweep_layers
from gradcam_repro.pipeline.spec import ExperimentSpec


def _shape_at(model: torch.nn.Module, layer: str, side: int) -> tuple[int, ...]:
    seen = {}
    handle = get_layer(model, layer).register_forward_hook(lambda m, i, o: seen.update(shape=tuple(o.shape)))
    with torch.no_grad():
        model.eval()(torch.zeros(1, 3, side, side))
    handle.remove()
    return seen["shape"]


@pytest.mark.parametrize("arch", list(TRAINABLE))
@pytest.mark.parametrize("side", [16, 32, 64])
def test_every_architecture_takes_every_training_size(arch, side):
    """Progressive resizing trains at 16 px, evaluation at 32 px, the resolution study at 64 px."""
    model = architecture(arch, 7)
    with torch.no_grad():
        assert model.eval()(torch.zeros(2, 3, side, side)).shape == (2, 7)


def test_the_map_sizes_each_architecture_was_chosen_for():
    """The ImageNet stem halves twice, so layer4 is 1x1 at 32 px and 2x2 at 64 px; the VGG without its last pool
    ends at 2x2 at 32 px; the ViT's 4 px patches give 64 tokens and a class token at 32 px."""
    imagenet = architecture("resnet18_imagenet", 10)
    assert _shape_at(imagenet, "layer4", 32)[-2:] == (1, 1)
    assert _shape_at(imagenet, "layer4", 64)[-2:] == (2, 2)
    assert _shape_at(architecture("resnet18_cifar", 10), SEED_LAYER, 32)[-2:] == (4, 4)
    assert _shape_at(architecture("vgg11_cifar", 10), "features", 32)[-2:] == (2, 2)
    assert _shape_at(architecture("vit_tiny_p4", 10), "blocks.11.norm1", 32) == (1, 65, 192)


def test_stage_layers_and_defaults_per_family():
    assert stage_layers(architecture("resnet18_cifar", 10), (32, 32)) == list(SWEEP_LAYERS)
    assert stage_layers(architecture("resnet18_imagenet", 10), (64, 64)) == ["bn1", "layer1", "layer2", "layer3", "layer4"]
    assert default_layers(architecture("resnet18_imagenet", 10), (64, 64)).explain == "layer4"
    assert default_layers(architecture("resnet18_imagenet", 10), (32, 32)).explain == "layer3"  # layer4 is 1x1 there
    vgg = architecture("vgg11_cifar", 10)
    assert stage_layers(vgg, (32, 32)) == ["features.1", "features.5", "features.12", "features.19", "features"]
    assert default_layers(vgg, (32, 32)).explain == "features"
    assert stage_layers(architecture("vit_tiny_p4", 10), (32, 32)) == [f"blocks.{i}.norm1" for i in range(12)]


def test_the_seeds_config_and_keys_do_not_change():
    """--arch at its default is left out of config.json and of the spec, so every earlier key stays."""
    config = Config()
    assert "arch" not in config.to_dict()
    spec = ExperimentSpec.from_config(config, "f" * 64)
    assert "arch" not in spec.to_dict()
    other = ExperimentSpec.from_config(Config(arch="vgg11_cifar"), "f" * 64)
    assert other.to_dict()["arch"] == "vgg11_cifar" and other.key != spec.key
    assert ExperimentSpec.from_dict(json.loads(json.dumps(other.to_dict()))) == other
    assert Config.from_dict(Config(arch="vit_tiny_p4").to_dict()).arch == "vit_tiny_p4"


def test_another_architecture_explains_the_rules_layer_and_sweeps_its_stages():
    config = validated(Config(arch="resnet18_imagenet", dataset="cifar10"))
    assert config.cam_layer == "layer3"  # the seed's layer4.1.conv2 is the CIFAR ResNet's; the rule's at 32 px
    assert sweep_layers(config) == ["bn1", "layer1", "layer2", "layer3", "layer4"]
    assert sweep_layers(validated(Config())) == list(SWEEP_LAYERS)
    assert validated(Config()).cam_layer == "layer4.1.conv2"
    # A layer the user names is kept, the seed's included: only a layer left out takes the architecture's rule.
    assert validated(Config(arch="resnet18_imagenet", cam_layer="layer4.1.conv2")).cam_layer == "layer4.1.conv2"
    with pytest.raises(UserError, match="unknown --arch 'resnet50'"):
        validated(Config(arch="resnet50"))
    with pytest.raises(UserError, match="layer4"):  # a ResNet's layer: not in a VGG
        validated(Config(arch="vgg11_cifar", cam_layer="layer4"))


def test_a_trained_checkpoint_loads_back_into_its_architecture(tmp_path):
    torch.manual_seed(0)
    model = vgg11_cifar(10).eval()
    save_model(model, tmp_path / "model.pt")
    loaded = load_trained(tmp_path / "model.pt", 10, "cpu", "vgg11_cifar")
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(loaded(x), model(x))
    with pytest.raises(UserError, match="does not fit --arch resnet18_imagenet"):
        load_trained(tmp_path / "model.pt", 10, "cpu", "resnet18_imagenet")
