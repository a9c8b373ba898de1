"""Where models run and in which precision: one rule for the command line, the workflow's jobs and the
analyses. A CUDA device when there is one, else the CPU; frozen weights in bf16 on CUDA and fp32 on the
CPU (whose bf16 kernels are slow), unless a dtype is named. Trainable rows and optimizer math stay fp32
whatever the weights' dtype (dti.tokens, dti.optim)."""

from __future__ import annotations

DTYPE_NAMES = ("auto", "fp32", "bf16", "fp16")


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def weights_dtype(device: str, name: str = "auto"):
    """The torch dtype of frozen weights on `device`: `name` (one of DTYPE_NAMES), auto as above."""
    import torch

    if name == "auto":
        return torch.bfloat16 if str(device).startswith("cuda") else torch.float32
    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[name]
