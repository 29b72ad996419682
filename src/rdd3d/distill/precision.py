"""The precision a frozen teacher runs its forward in, and that of a distillation adapter's matrix product."""

from __future__ import annotations

import torch

#: ``auto``: bf16 where the device computes it natively (CUDA with bf16, a CPU with AVX-512 BF16 or AMX), fp16
#: on older CUDA devices, fp32 elsewhere.
TEACHER_PRECISIONS = ("auto", "fp32", "bf16", "fp16")
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def teacher_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of a teacher forward at ``precision`` on ``device`` (``None``: plain fp32)."""
    if precision not in TEACHER_PRECISIONS:
        raise ValueError(f"teacher_precision must be one of {TEACHER_PRECISIONS}, got {precision!r}")
    if precision == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        native_bf16 = device.type == "cpu" and (torch.cpu._is_avx512_bf16_supported()
                                                or torch.cpu._is_amx_tile_supported())
        return torch.bfloat16 if native_bf16 else None
    return _DTYPES.get(precision)


#: ``auto``: bf16 on a CPU that computes it natively; elsewhere the adapter follows the training loop (fp32, or
#: CUDA's automatic mixed precision when the run uses it).
ADAPTER_PRECISIONS = ("auto", "fp32", "bf16")


def adapter_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of an adapter's convolution at ``precision`` on ``device`` (``None``: as the loop runs)."""
    if precision not in ADAPTER_PRECISIONS:
        raise ValueError(f"adapter_precision must be one of {ADAPTER_PRECISIONS}, got {precision!r}")
    if precision == "auto":
        return teacher_dtype("auto", device) if device.type == "cpu" else None
    return _DTYPES.get(precision)
