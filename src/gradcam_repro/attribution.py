"""Pixel-space attributions through Captum: baselines that no layer's resolution limits.

Each method gives a (N, 3, H, W) attribution; we reduce it to one non-negative
map per image by summing the absolute values over the colour channels (the L1
norm of the pixel's attribution vector), then divide each map by its maximum,
so the maps are on the same [0, 1] scale as the CAMs and are scored the same way.
"""

from __future__ import annotations

import torch
from torch import nn

from gradcam_repro.errors import UserError
from gradcam_repro.runtime import autocast, eval_mode

# Integrated Gradients: the straight path from the mean colour (0 after
# normalisation) to the image, in this many steps (Riemann trapezoid rule).
IG_STEPS = 32

PIXEL_METHODS = ("saliency", "inputxgradient", "integratedgradients")
PIXEL_DISPLAY_NAMES = {"saliency": "Saliency", "inputxgradient": "Input x Gradient",
                       "integratedgradients": "Integrated Gradients"}


def reduce_to_map(attributions: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) attributions -> (N, H, W) maps in [0, 1]: sum of |a| over channels, divided by each map's max."""
    maps = attributions.detach().float().abs().sum(dim=1)
    peak = maps.amax(dim=(1, 2), keepdim=True)
    return maps / torch.where(peak > 0, peak, torch.ones_like(peak))


def pixel_attribution(
    model: nn.Module,
    images: torch.Tensor,
    targets: torch.Tensor,
    method: str,
    autocast_dtype: torch.dtype | None = None,
    ig_steps: int = IG_STEPS,
) -> torch.Tensor:
    """(N, 3, H, W) normalised float images, (N,) target classes -> (N, H, W) maps in [0, 1].

    `method`: saliency (|d logit / d x|, Simonyan et al. 2014), inputxgradient
    (x * d logit / d x) or integratedgradients (Sundararajan et al. 2017, baseline
    = the mean colour). The model is run in eval mode and left as it was.
    """
    from captum.attr import InputXGradient, IntegratedGradients, Saliency

    if method not in PIXEL_METHODS:
        raise UserError(f"unknown pixel attribution {method!r}; fix: use one of {', '.join(PIXEL_METHODS)}")

    def forward(x):
        with autocast(x.device, autocast_dtype):
            return model(x).float()

    targets = torch.as_tensor(targets, device=images.device).long()
    x = images.detach().clone().requires_grad_(True)
    with eval_mode(model):
        if method == "saliency":
            attributions = Saliency(forward).attribute(x, target=targets, abs=True)
        elif method == "inputxgradient":
            attributions = InputXGradient(forward).attribute(x, target=targets)
        else:
            attributions = IntegratedGradients(forward).attribute(
                x, baselines=torch.zeros_like(x), target=targets, n_steps=ig_steps,
                internal_batch_size=max(len(x), 1) * 4, method="riemann_trapezoid")
    return reduce_to_map(attributions)
