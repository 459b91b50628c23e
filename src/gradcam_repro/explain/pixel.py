"""Pixel-space attributions through Captum: baselines that no layer's resolution limits.

Each method gives a (N, 3, H, W) attribution; we reduce it to one non-negative
map per image by summing the absolute values over the colour channels (the L1
norm of the pixel's attribution vector), then divide each map by its maximum,
so the maps are on the same [0, 1] scale as the CAMs and are scored the same way.

Each method is a small `PixelMethod` subclass that only says how Captum
attributes (`attribute`); the base class runs the model in the right mode and
precision and follows the explainer protocol of `explain.registry`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from gradcam_repro.runtime import autocast, eval_mode

# The "layer" under which pixel-space maps are reported.
PIXEL_LAYER = "input"
# Integrated Gradients: the straight path from the mean colour (0 after
# normalisation) to the image, in this many steps (Riemann trapezoid rule).
IG_STEPS = 32


def reduce_to_map(attributions: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) attributions -> (N, H, W) maps in [0, 1]: sum of |a| over channels, divided by each map's max."""
    maps = attributions.detach().float().abs().sum(dim=1)
    peak = maps.amax(dim=(1, 2), keepdim=True)
    return maps / torch.where(peak > 0, peak, torch.ones_like(peak))


class PixelMethod:
    """A pixel-space attribution of `model`'s target logits; `layers` is ignored (maps are at the input)."""

    name = "pixel"
    display_name = "pixel attribution"

    def __init__(self, model: nn.Module, layers: str | Sequence[str] | None = None, autocast_dtype: torch.dtype | None = None):
        self.model = model
        self.layers = [PIXEL_LAYER]
        self.autocast_dtype = autocast_dtype

    def attribute(self, forward, x: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) attributions of `forward`'s target logits at `x`. The method's seam."""
        raise NotImplementedError

    def maps(self, images: torch.Tensor, targets) -> dict[str, torch.Tensor]:
        """(N, 3, H, W) normalised float images, (N,) target classes -> {"input": (N, H, W) maps in [0, 1]}.

        The model is run in eval mode (and the run's precision) and left as it was.
        """
        def forward(x):
            with autocast(x.device, self.autocast_dtype):
                return self.model(x).float()

        targets = torch.as_tensor(targets, device=images.device).long()
        x = images.detach().clone().requires_grad_(True)
        with eval_mode(self.model):
            attributions = self.attribute(forward, x, targets)
        return {PIXEL_LAYER: reduce_to_map(attributions)}


class Saliency(PixelMethod):
    """Saliency (Simonyan et al., 2014): |d logit / d x|."""

    name = "saliency"
    display_name = "Saliency"

    def attribute(self, forward, x, targets):
        from captum.attr import Saliency as CaptumSaliency

        return CaptumSaliency(forward).attribute(x, target=targets, abs=True)


class InputXGradient(PixelMethod):
    """Input x Gradient (Shrikumar et al., 2016): x * d logit / d x."""

    name = "inputxgradient"
    display_name = "Input x Gradient"

    def attribute(self, forward, x, targets):
        from captum.attr import InputXGradient as CaptumInputXGradient

        return CaptumInputXGradient(forward).attribute(x, target=targets)


class IntegratedGradients(PixelMethod):
    """Integrated Gradients (Sundararajan et al., 2017) from the mean colour, IG_STEPS trapezoid steps."""

    name = "integratedgradients"
    display_name = "Integrated Gradients"
    n_steps = IG_STEPS

    def attribute(self, forward, x, targets):
        from captum.attr import IntegratedGradients as CaptumIntegratedGradients

        return CaptumIntegratedGradients(forward).attribute(
            x, baselines=torch.zeros_like(x), target=targets, n_steps=self.n_steps,
            internal_batch_size=max(len(x), 1) * 4, method="riemann_trapezoid")


PIXEL_FAMILY: tuple[type[PixelMethod], ...] = (Saliency, InputXGradient, IntegratedGradients)
