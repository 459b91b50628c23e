"""The architectures this project trains (`run --arch NAME`, and `study --archs` as a grid axis).

Each is built randomly initialised for `num_classes` classes and trained on CIFAR-10-normalised inputs, as the
seed's ResNet-18 is. Every one accepts the 16 px epochs of progressive resizing as well as the full size:
- `resnet18_cifar`: the seed's network (`model.resnet`), layer4 at 4x4 on 32 px inputs;
- `resnet18_imagenet`: torchvision's ResNet-18 with its ImageNet stem (a 7x7 stride-2 convolution and a
  max-pool), so layer4 is 1x1 on 32 px inputs and 2x2 on 64 px;
- `vgg11_cifar`: torchvision's VGG-11 with batch norm, without skip connections, adapted to 32 px (below);
- `vit_tiny_p4`: timm's ViT-Tiny (12 blocks, width 192) with 4 px patches, an 8x8 token grid at 32 px.
"""

from __future__ import annotations

import torchvision
from torch import nn

from gradcam_repro.errors import UserError
from gradcam_repro.model.resnet import resnet18_cifar

# The ViT is built for this input size; other sizes (the 16 px epochs, 64 px inputs) interpolate its position
# embedding (timm's dynamic_img_size), so a checkpoint loads whatever size it is used at.
VIT_BUILT_PX = 32
VIT_PATCH_PX = 4


def resnet18_imagenet(num_classes: int = 10) -> nn.Module:
    """torchvision's ResNet-18 unchanged (ImageNet stem): stages at 1/4 .. 1/32 of the input side."""
    return torchvision.models.resnet18(weights=None, num_classes=num_classes)


def vgg11_cifar(num_classes: int = 10) -> nn.Module:
    """torchvision's `vgg11_bn` for 32 px inputs: its last max-pool is dropped (so the last stage's maps are 2x2
    at 32 px and 1x1 at 16 px rather than 1x1 and nothing), then global average pooling and one linear layer
    (512 -> classes) replace the 7x7 pooling and the 4096-wide ImageNet classifier."""
    model = torchvision.models.vgg11_bn(weights=None, num_classes=num_classes)
    model.features = model.features[:-1]
    model.avgpool = nn.AdaptiveAvgPool2d(1)
    model.classifier = nn.Linear(512, num_classes)
    return model


def vit_tiny_p4(num_classes: int = 10) -> nn.Module:
    """timm's `vit_tiny_patch16_224` with 4 px patches built for 32 px inputs, any input size accepted."""
    try:
        import timm
    except ImportError:
        raise UserError("--arch vit_tiny_p4 needs timm; fix: pip install timm (or pip install 'gradcam-repro[timm]')") from None
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=num_classes, img_size=VIT_BUILT_PX,
                             patch_size=VIT_PATCH_PX, dynamic_img_size=True)


# Every architecture by its --arch name; the seed's first (the default).
TRAINABLE = {"resnet18_cifar": resnet18_cifar, "resnet18_imagenet": resnet18_imagenet, "vgg11_cifar": vgg11_cifar,
             "vit_tiny_p4": vit_tiny_p4}
