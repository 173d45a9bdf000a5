"""Mixed precision for the forward pass: autocast to the spec's 16-bit type, or nothing for fp32."""

from __future__ import annotations

import contextlib

import torch

from llmspec.errors import LLMSpecError


def autocast(precision: str, device: str):
    if precision == "fp32":
        return contextlib.nullcontext()
    if precision == "fp16" and device == "cpu":
        raise LLMSpecError("training.precision: fp16 needs a GPU (loss scaling); use bf16 or fp32 on the CPU")
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.split(":")[0], dtype=dtype)
