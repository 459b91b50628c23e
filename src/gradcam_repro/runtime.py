"""Device, precision and seeding choices, made once and recorded with the results."""

from __future__ import annotations

import contextlib
import random
from dataclasses import dataclass

import numpy as np
import torch

from gradcam_repro.errors import UserError


def choose_device(flag: str = "auto") -> torch.device:
    """'auto' picks CUDA when available, else CPU; 'cpu', 'cuda', 'cuda:N' are taken as given."""
    if flag == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(flag)
    except RuntimeError:
        raise UserError(f"unknown device {flag!r}; fix: pass --device auto, cpu or cuda") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda was asked for but no CUDA GPU is available; fix: pass --device cpu or auto")
    if device.type not in ("cpu", "cuda"):
        raise UserError(f"unsupported device {flag!r}; fix: pass --device auto, cpu or cuda")
    return device


def cpu_supports_bf16() -> bool:
    """True where oneDNN has native bf16 kernels (AVX512-BF16 or AMX); elsewhere bf16 is slower than fp32."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for `precision` ('auto' | 'bf16' | 'fp32') on `device`; None means fp32."""
    if precision == "fp32":
        return None
    if device.type == "cuda":
        supported = torch.cuda.is_bf16_supported()
    else:
        supported = cpu_supports_bf16()
    if precision == "bf16" and not supported:
        raise UserError(f"--precision bf16 is not supported on this {device.type}; fix: pass --precision fp32 or auto")
    return torch.bfloat16 if supported else None


def autocast(device: torch.device, dtype: torch.dtype | None):
    """An autocast context for `dtype` on `device`, or a no-op context when `dtype` is None."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@contextlib.contextmanager
def eval_mode(model: torch.nn.Module):
    """Put every submodule in eval mode, then restore each one's own mode (e.g. frozen BatchNorm)."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, training in modes:
            m.training = training


@dataclass(frozen=True)
class Runtime:
    """Where and in which precision models run: `amp_dtype` None is float32 throughout."""

    device: torch.device
    amp_dtype: torch.dtype | None = None

    @classmethod
    def choose(cls, device_flag: str = "auto", precision: str = "auto") -> Runtime:
        device = choose_device(device_flag)
        return cls(device, autocast_dtype(precision, device))

    @property
    def precision(self) -> str:
        """'bfloat16' or 'float32', as recorded next to results."""
        return str(self.amp_dtype or torch.float32).replace("torch.", "")
