"""The CIFAR ResNet-18 and its checkpoint contract: `model.pt` is a plain state_dict."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torchvision.models import resnet18

from gradcam_repro.errors import UserError
from gradcam_repro.model.resnet import CIFAR10_MEAN, CIFAR10_STD, load_model, normalize, resnet18_cifar, save_model


@pytest.fixture(scope="module")
def model() -> nn.Module:
    """Seeded model with non-default BN statistics (one train-mode forward), in eval mode."""
    torch.manual_seed(0)
    m = resnet18_cifar()
    with torch.no_grad():
        m.train()(torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1)) * 2 + 0.5)
    return m.eval()


@pytest.fixture(scope="module")
def x() -> torch.Tensor:
    return torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))


def test_stem_is_adapted_to_32px_inputs(model, x):
    assert isinstance(model.conv1, nn.Conv2d)
    assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1) and model.conv1.padding == (1, 1)
    assert model.conv1.in_channels == 3 and model.conv1.out_channels == 64 and model.conv1.bias is None
    assert isinstance(model.maxpool, nn.Identity)
    # Stages at 32, 16, 8 and 4 px; 10 logits.
    sizes = {}
    hooks = [getattr(model, n).register_forward_hook(lambda m, i, o, n=n: sizes.__setitem__(n, tuple(o.shape[-2:])))
             for n in ("layer1", "layer2", "layer3", "layer4")]
    with torch.no_grad():
        out = model(x)
    for h in hooks:
        h.remove()
    assert out.shape == (2, 10) and out.dtype == torch.float32
    assert sizes == {"layer1": (32, 32), "layer2": (16, 16), "layer3": (8, 8), "layer4": (4, 4)}


def test_num_classes():
    assert resnet18_cifar(num_classes=3).fc.out_features == 3


@pytest.fixture(scope="module")
def saved(model, tmp_path_factory):
    """`model` written once by save_model, channels-last as training leaves it."""
    path = tmp_path_factory.mktemp("run") / "model.pt"
    model.to(memory_format=torch.channels_last)
    try:
        save_model(model, path)
    finally:
        model.to(memory_format=torch.contiguous_format)
    return path


def test_save_load_round_trip_gives_identical_outputs(model, saved, x):
    loaded = load_model(saved)
    assert not loaded.training
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    for (k, a), (k2, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert k == k2 and torch.equal(a, b), k
    assert [p.name for p in saved.parent.iterdir()] == ["model.pt"], "no temporary files left"


def test_model_pt_is_a_plain_state_dict_of_exactly_that_module(saved):
    state = torch.load(saved, map_location="cpu", weights_only=True)
    assert isinstance(state, dict)
    assert list(state) == list(resnet18_cifar().state_dict())
    assert all(type(v) is torch.Tensor and v.device.type == "cpu" and not v.requires_grad for v in state.values())
    missing, unexpected = resnet18_cifar().load_state_dict(state, strict=True)
    assert not missing and not unexpected


def test_a_training_checkpoint_with_a_model_entry_loads(model, saved, x, tmp_path):
    path = tmp_path / "checkpoint.pt"
    state = torch.load(saved, weights_only=True)
    torch.save({"model": state, "epoch": 3}, path)
    with torch.no_grad():
        assert torch.equal(load_model(path)(x), model(x))


def _one_line_user_error(path):
    with pytest.raises(UserError) as info:
        load_model(path)
    message = str(info.value)
    assert "\n" not in message and str(path) in message and "fix:" in message
    return message


def test_loading_torchvision_resnet18_with_default_stem_raises(tmp_path):
    path = tmp_path / "imagenet_stem.pt"
    torch.save(resnet18(num_classes=10).state_dict(), path)
    message = _one_line_user_error(path)
    assert "does not match" in message


def test_loading_a_tiny_net_raises(tmp_path):
    path = tmp_path / "tiny.pt"
    torch.save(nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4, 10)).state_dict(), path)
    assert "does not match" in _one_line_user_error(path)


def test_loading_a_checkpoint_with_other_num_classes_raises(tmp_path):
    path = tmp_path / "hundred.pt"
    state = resnet18_cifar(num_classes=100).state_dict()
    torch.save({k: v for k, v in state.items() if k.startswith("fc.")}, path)  # the differing part is enough
    assert "does not match" in _one_line_user_error(path)


def test_loading_a_non_state_dict_raises(tmp_path):
    path = tmp_path / "tensor.pt"
    torch.save(torch.zeros(3), path)
    _one_line_user_error(path)


def test_loading_garbage_or_a_missing_file_raises(tmp_path):
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"this is not a checkpoint")
    _one_line_user_error(garbage)
    assert "does not exist" in _one_line_user_error(tmp_path / "nope" / "model.pt")


def test_normalize_known_values():
    images = torch.tensor([0, 255, 51, 128], dtype=torch.uint8).view(1, 1, 1, 4).repeat(1, 3, 1, 1)
    before = images.clone()
    out = normalize(images)
    assert torch.equal(images, before)
    assert out.dtype == torch.float32 and out.shape == (1, 3, 1, 4)
    for c in range(3):
        m, s = CIFAR10_MEAN[c], CIFAR10_STD[c]
        expected = torch.tensor([-m / s, (1 - m) / s, (0.2 - m) / s, (128 / 255 - m) / s])
        torch.testing.assert_close(out[0, c, 0], expected, atol=1e-6, rtol=0)
    # Pinned values for channel 0: (0 - 0.4914) / 0.2470 and (1 - 0.4914) / 0.2470.
    torch.testing.assert_close(out[0, 0, 0, :2], torch.tensor([-1.9894737, 2.0591093]), atol=1e-6, rtol=0)


def test_normalize_maps_the_dataset_mean_to_about_zero():
    # The uint8 pixel nearest each channel's mean, (125, 123, 114), lands within half a
    # uint8 step (0.5 / 255 / std) of zero, in the right channel order.
    pixel = torch.tensor([round(m * 255) for m in CIFAR10_MEAN], dtype=torch.uint8)
    assert pixel.tolist() == [125, 123, 114]
    out = normalize(pixel.view(1, 3, 1, 1).expand(1, 3, 2, 2))
    for c in range(3):
        assert out[0, c].abs().max() <= 0.5 / 255 / CIFAR10_STD[c]
    # The same pixel with its channels reversed is far from zero: the statistics are per channel.
    assert normalize(pixel.flip(0).view(1, 3, 1, 1)).abs().max() > 0.1
