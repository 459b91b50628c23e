"""Grad-CAM (Selvaraju et al., 2017) and its family, batched: one forward and one backward pass per batch.

For class c and a layer with activations A^k (k = channels), Grad-CAM weights
each channel by the spatial mean of the gradient of the class logit,
alpha_k = mean_ij dy^c / dA^k_ij, and the map is ReLU(sum_k alpha_k A^k).

One base class, `BaseCAM`, owns the hooks, the single forward/backward pass and
the scaling; each method only says how a map is formed from the layer's
activations and gradients (`cam_from`). Score-CAM replaces gradients by one
forward pass per channel (batched over channels), Eigen-CAM uses no gradients.

Works on any torch model whose target layer outputs an (N, K, h, w) tensor.
Inside a `with` block the forward hooks are registered once on entry and
removed on exit; a call outside one registers and removes its own. The
model's train/eval mode and `requires_grad` flags are restored after every
call, and several layers are explained from the same forward/backward pass.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from gradcam_repro.config import SEED_LAYER
from gradcam_repro.errors import UserError
from gradcam_repro.runtime import autocast, eval_mode


@dataclass
class CAMResult:
    """Maps for one layer and one batch.

    maps: (N, H, W) float32 in [0, 1], upsampled bilinearly to the input size and
        divided by each image's maximum (an all-zero map stays all zero);
    raw: (N, h, w) float32 >= 0, the map at the layer's own resolution before scaling;
    logits: (N, num_classes) float32; targets: (N,) int64, the explained classes.
    """

    maps: torch.Tensor
    raw: torch.Tensor
    logits: torch.Tensor
    targets: torch.Tensor


@dataclass
class LayerPass:
    """What one forward/backward pass recorded: (N, num_classes) float32 logits, (N,) explained classes, and per
    layer the activations and their gradients (None without a backward pass or where a layer was unused)."""

    logits: torch.Tensor
    targets: torch.Tensor
    activations: list[torch.Tensor]
    gradients: list[torch.Tensor | None]


def layer_names(model: nn.Module) -> list[str]:
    """Dotted names of every submodule, e.g. ['conv1', ..., 'layer4.1.conv2', 'fc']."""
    return [name for name, _ in model.named_modules() if name]


def get_layer(model: nn.Module, path: str, flag: str = "--cam-layer") -> nn.Module:
    """The submodule at dotted `path`; `UserError` listing valid paths if there is none."""
    modules = dict(model.named_modules())
    if not path or path not in modules:
        valid = [n for n in layer_names(model) if n.count(".") <= 2]
        raise UserError(
            f"unknown layer {path!r}; fix: pass {flag} as one of {', '.join(valid)}"
        )
    return modules[path]


def tokens_to_grid(tokens: torch.Tensor, size: tuple[int, int], layer: str) -> torch.Tensor:
    """(N, T, K) transformer tokens of an (H, W) input -> (N, K, h, w) feature map.

    The grid is the largest h x w = T - p with h / w = H / W (p prefix tokens: the class token, distillation or
    register tokens, in front as in timm and torchvision ViTs); `UserError` naming the layer when none fits.
    """
    n, t, k = tokens.shape
    height, width = size
    for prefix in range(0, min(t, 9)):
        cells = t - prefix
        h = round((cells * height / width) ** 0.5)
        if h > 0 and cells % h == 0 and h * width == (cells // h) * height:
            return tokens[:, prefix:].transpose(1, 2).reshape(n, k, h, cells // h)
    raise UserError(f"layer {layer!r} has {t} tokens, which no grid of a {height}x{width} input explains (after up to "
                    "8 class or register tokens); fix: pick a block of the ViT's encoder, e.g. blocks.N.norm1")


def _shape_text(output) -> str:
    return f"shape {tuple(output.shape)}" if torch.is_tensor(output) else type(output).__name__


def upsample_and_scale(raw: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(N, h, w) non-negative maps -> (N, H, W) bilinear-upsampled maps, each divided by its maximum."""
    up = F.interpolate(raw[:, None].float(), size=size, mode="bilinear", align_corners=False)[:, 0]
    peak = up.amax(dim=(1, 2), keepdim=True)
    return up / torch.where(peak > 0, peak, torch.ones_like(peak))


class BaseCAM:
    """Batched class activation maps at one or more layers of `model`.

    >>> with GradCAM(model, "layer4.1.conv2") as cam:   # hooks registered here ...
    ...     result = cam(images)            # explains the predicted classes
    ...     result = cam(images, targets)   # or one given class per image
    ... # ... and removed here

    `images`: (N, C, H, W) float, already normalised as the model expects.
    `targets`: None (predicted class), or N class indices (tensor or sequence).
    With several layers, `per_layer` returns {layer: CAMResult} from one pass.
    `autocast_dtype` (e.g. torch.bfloat16) runs the pass under autocast; the
    default float32 is the reference precision.
    Subclasses implement `cam_from`; `uses_gradients = False` skips the backward pass.
    """

    name = "base"
    display_name = "CAM"
    uses_gradients = True

    def __init__(self, model: nn.Module, layers: str | Sequence[str] = SEED_LAYER, autocast_dtype: torch.dtype | None = None):
        self.model = model
        self.layers = [layers] if isinstance(layers, str) else list(layers)
        if not self.layers:
            raise ValueError(f"{type(self).__name__} needs at least one layer")
        self.modules = {name: get_layer(model, name) for name in self.layers}
        self.autocast_dtype = autocast_dtype
        self._handles: list = []
        self._activations: dict[str, torch.Tensor] = {}

    def __enter__(self) -> BaseCAM:
        """Register the forward hooks once for the whole block (calls outside a block register their own)."""
        if self._handles:
            raise RuntimeError(f"this {type(self).__name__} is already in use as a context manager")
        self._handles = self._register_hooks()
        return self

    def __exit__(self, *exc) -> None:
        self._remove_hooks()

    def _register_hooks(self) -> list:
        return [module.register_forward_hook(self._make_hook(name)) for name, module in self.modules.items()]

    def _remove_hooks(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def _make_hook(self, name: str):
        def hook(module, inputs, output):
            if not torch.is_tensor(output) or output.dim() not in (3, 4):
                raise UserError(f"layer {name!r} outputs {_shape_text(output)}, not a feature map (N, K, h, w) or "
                                "tokens (N, T, K); fix: pick a convolutional stage or a transformer block's norm")
            if self.uses_gradients and not output.requires_grad:
                # Nothing upstream needs gradients: start the graph here, so
                # backward stops at the earliest explained layer.
                output = output.detach().requires_grad_(True)
            self._activations[name] = output if self.uses_gradients else output.detach()
            # Downstream in-place ops (e.g. the residual `out += identity`)
            # must not alter the stored activation.
            return output.clone()

        return hook

    def maps(self, images: torch.Tensor, targets) -> dict[str, torch.Tensor]:
        """The explainer protocol: {layer: (N, H, W) maps in [0, 1]} for normalised float `images`."""
        return {name: result.maps for name, result in self.per_layer(images, targets).items()}

    def __call__(self, images: torch.Tensor, targets=None) -> CAMResult:
        if len(self.layers) != 1:
            raise ValueError(f"this {type(self).__name__} has several layers; use per_layer()")
        return self.per_layer(images, targets)[self.layers[0]]

    def cam_from(self, activations: torch.Tensor, gradients: torch.Tensor | None) -> torch.Tensor:
        """(N, K, h, w) activations and gradients -> (N, h, w) map before ReLU. The method's seam."""
        raise NotImplementedError

    @classmethod
    def shares_pass(cls) -> bool:
        """Whether the method's maps come from the activations and gradients of one pass alone (the gradient CAMs),
        so that several such methods can share that pass (`shared_maps`)."""
        return cls.uses_gradients and cls.layer_map is BaseCAM.layer_map

    def layer_map(self, activations: torch.Tensor, gradients: torch.Tensor | None, images: torch.Tensor,
                  targets: torch.Tensor) -> torch.Tensor:
        """The map before ReLU for one layer; methods that need more than (A, dA) (Score-CAM) override this."""
        return self.cam_from(activations, gradients)

    def per_layer(self, images: torch.Tensor, targets=None) -> dict[str, CAMResult]:
        """{layer: CAMResult} for (N, C, H, W) normalised float `images` from one forward/backward pass."""
        return self.results(images, self.layer_pass(images, targets))

    def layer_pass(self, images: torch.Tensor, targets=None) -> LayerPass:
        """The forward (and, for gradient methods, backward) pass that `per_layer` reads its maps from."""
        if images.dim() != 4:
            raise ValueError(f"expected (N, C, H, W) images, got shape {tuple(images.shape)}")
        temporary = not self._handles
        if temporary:
            self._handles = self._register_hooks()
        try:
            return LayerPass(*self._forward_backward(images, targets))
        finally:
            self._activations = {}
            if temporary:
                self._remove_hooks()

    def results(self, images: torch.Tensor, passed: LayerPass) -> dict[str, CAMResult]:
        """{layer: CAMResult} by this method from a `layer_pass` over `images` (its own, or a `shared_maps` one)."""
        size = tuple(images.shape[-2:])
        results = {}
        for name, act, grad in zip(self.layers, passed.activations, passed.gradients):
            act = act.detach().float()
            if self.uses_gradients:
                grad = torch.zeros_like(act) if grad is None else grad.float()
            if act.dim() == 3:  # transformer tokens: drop the class (and other prefix) tokens, lay out the grid
                act, grad = tokens_to_grid(act, size, name), grad if grad is None else tokens_to_grid(grad, size, name)
            raw = F.relu(self.layer_map(act, grad, images, passed.targets))
            results[name] = CAMResult(upsample_and_scale(raw, size), raw, passed.logits.detach(), passed.targets)
        return results

    def _forward_backward(self, images: torch.Tensor, targets):
        """One forward pass (hooks record the activations) and, for gradient methods, one backward pass."""
        model = self.model
        grad_flags = [(p, p.requires_grad) for p in model.parameters()]
        try:
            with eval_mode(model):
                for p, _ in grad_flags:
                    p.requires_grad_(False)  # no weight gradients: only d(logit)/d(activation) is needed
                with torch.set_grad_enabled(self.uses_gradients), autocast(images.device, self.autocast_dtype):
                    logits = model(images)
                logits = logits.float()
                targets = self._check_targets(targets, logits)
                missing = [n for n in self.layers if n not in self._activations]
                if missing:
                    raise ValueError(f"layers {missing} were not used in the forward pass")
                acts = [self._activations[n] for n in self.layers]
                grads = [None] * len(acts)
                if self.uses_gradients:
                    score = logits.gather(1, targets[:, None]).sum()
                    grads = torch.autograd.grad(score, acts, allow_unused=True)
        finally:
            for p, flag in grad_flags:
                p.requires_grad_(flag)
        return logits, targets, acts, grads

    @staticmethod
    def _check_targets(targets, logits: torch.Tensor) -> torch.Tensor:
        n, num_classes = logits.shape
        if targets is None:
            return logits.argmax(dim=1)
        targets = torch.as_tensor(targets, device=logits.device).long().flatten()
        if len(targets) != n:
            raise ValueError(f"got {len(targets)} targets for {n} images; pass exactly one target class per image")
        if len(targets) and (targets.min() < 0 or targets.max() >= num_classes):
            raise ValueError(f"targets must be class indices in [0, {num_classes}), got {targets.tolist()[:10]}")
        return targets


def _spatial_sum(x: torch.Tensor) -> torch.Tensor:
    return x.sum(dim=(2, 3), keepdim=True)


class GradCAM(BaseCAM):
    """Grad-CAM (Selvaraju et al., 2017): channel weights = spatial mean of the gradient."""

    name = "gradcam"
    display_name = "Grad-CAM"

    def cam_from(self, activations, gradients):
        weights = gradients.mean(dim=(2, 3), keepdim=True)
        return (weights * activations).sum(dim=1)


class GradCAMPlusPlus(BaseCAM):
    """Grad-CAM++ (Chattopadhay et al., 2018), eq. 19 with the exponential-free closed form.

    alpha_kij = g^2 / (2 g^2 + sum_ab A^k_ab g^3), zero where the gradient is zero;
    weights w_k = sum_ij alpha_kij ReLU(g_kij).
    """

    name = "gradcam++"
    display_name = "Grad-CAM++"
    EPS = 1e-6  # keeps the denominator away from zero, as in the reference implementation

    def cam_from(self, activations, gradients):
        g2 = gradients.pow(2)
        alpha = g2 / (2 * g2 + _spatial_sum(activations) * g2 * gradients + self.EPS)
        alpha = torch.where(gradients != 0, alpha, torch.zeros_like(alpha))
        weights = _spatial_sum(alpha * F.relu(gradients))
        return (weights * activations).sum(dim=1)


class HiResCAM(BaseCAM):
    """HiResCAM (Draelos & Carin, 2020): element-wise gradient x activation, summed over channels."""

    name = "hirescam"
    display_name = "HiResCAM"

    def cam_from(self, activations, gradients):
        return (gradients * activations).sum(dim=1)


class XGradCAM(BaseCAM):
    """XGrad-CAM (Fu et al., 2020): weights = sum_ij g A / sum_ij A."""

    name = "xgradcam"
    display_name = "XGrad-CAM"
    EPS = 1e-7  # as in the reference implementation

    def cam_from(self, activations, gradients):
        weights = _spatial_sum(gradients * activations / (_spatial_sum(activations) + self.EPS))
        return (weights * activations).sum(dim=1)


class LayerCAM(BaseCAM):
    """LayerCAM (Jiang et al., 2021): element-wise ReLU(gradient) x activation, summed over channels."""

    name = "layercam"
    display_name = "LayerCAM"

    def cam_from(self, activations, gradients):
        return (F.relu(gradients) * activations).sum(dim=1)


class EigenCAM(BaseCAM):
    """Eigen-CAM (Muhammad & Yeasin, 2020): projection of the activations on their first principal component.

    Class-agnostic and gradient-free. The sign of a principal component is
    arbitrary; like the reference implementation we keep the SVD's sign, so a
    map can come out inverted (then ReLU leaves only the background).
    """

    name = "eigencam"
    display_name = "Eigen-CAM"
    uses_gradients = False

    def cam_from(self, activations, gradients):
        n, k, h, w = activations.shape
        x = activations.reshape(n, k, h * w).transpose(1, 2)  # (N, hw, K): one row per position
        x = x - x.mean(dim=1, keepdim=True)
        _, _, vh = torch.linalg.svd(x, full_matrices=False)
        return (x @ vh[:, 0, :, None]).reshape(n, h, w)


class ScoreCAM(BaseCAM):
    """Score-CAM (Wang et al., 2020): each channel weighted by the class score of the input masked by it.

    Each activation map is upsampled (bilinear, corners aligned as in the
    reference), min-max scaled to [0, 1] and multiplied into the normalised
    input; the target logits of those N*K masked inputs, softmaxed over the
    channels, are the weights. Forward passes only, `batch_size` masked images
    at a time: K times the cost of one prediction per image.
    """

    name = "scorecam"
    display_name = "Score-CAM"
    uses_gradients = False
    EPS = 1e-8  # as in the reference implementation

    def __init__(self, model, layers=SEED_LAYER, autocast_dtype=None, batch_size: int = 512):
        super().__init__(model, layers, autocast_dtype)
        self.batch_size = batch_size

    @torch.no_grad()
    def layer_map(self, activations, gradients, images, targets):
        n, k = activations.shape[:2]
        scores = torch.empty(n, k, device=activations.device)
        per_chunk = max(1, self.batch_size // k)  # images whose K masked copies go through together
        with eval_mode(self.model):
            for s in range(0, n, per_chunk):
                up = F.interpolate(activations[s:s + per_chunk], size=images.shape[-2:], mode="bilinear", align_corners=True)
                low, high = up.amin(dim=(2, 3), keepdim=True), up.amax(dim=(2, 3), keepdim=True)
                masks = (up - low) / (high - low + self.EPS)
                masked = (images[s:s + per_chunk, None] * masks[:, :, None].to(images.dtype)).flatten(0, 1)
                chunk_targets = targets[s:s + per_chunk].repeat_interleave(k)
                out = []
                for start in range(0, len(masked), self.batch_size):
                    x = masked[start:start + self.batch_size].contiguous(memory_format=torch.channels_last)
                    with autocast(images.device, self.autocast_dtype):
                        logits = self.model(x).float()
                    out.append(logits.gather(1, chunk_targets[start:start + self.batch_size, None])[:, 0])
                scores[s:s + per_chunk] = torch.cat(out).view(-1, k)
        weights = torch.softmax(scores, dim=1)[:, :, None, None]
        return (weights * activations).sum(dim=1)


# The CAM family, in the order reports list them (the registry in explain.registry names them).
CAM_FAMILY: tuple[type[BaseCAM], ...] = (GradCAM, GradCAMPlusPlus, HiResCAM, XGradCAM, LayerCAM, ScoreCAM, EigenCAM)


def shared_maps(cams: Sequence[BaseCAM], images: torch.Tensor, targets=None) -> list[dict[str, torch.Tensor]]:
    """Each of `cams`' {layer: maps} from one forward/backward pass over `images`.

    The methods must be gradient CAMs of one model at the same layers and precision: they read the same
    activations and gradients, so each gets the maps its own pass would give, for one pass instead of one each.
    """
    first = cams[0]
    for cam in cams:
        if not cam.shares_pass():
            raise ValueError(f"{type(cam).__name__} does not read its maps from one gradient pass; explain it alone")
        if cam.model is not first.model or cam.layers != first.layers or cam.autocast_dtype != first.autocast_dtype:
            raise ValueError("methods sharing a pass must explain the same model at the same layers and precision")
    passed = first.layer_pass(images, targets)
    return [{name: result.maps for name, result in cam.results(images, passed).items()} for cam in cams]
