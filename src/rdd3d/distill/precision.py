"""The precision a frozen teacher runs its forward in."""

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
