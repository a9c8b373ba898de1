"""Helpers the GPU benchmarks share: timing with device synchronisation, FLOP counting, the chip's
peak rate, and a kernel breakdown from the torch profiler."""

from __future__ import annotations

import time
from contextlib import contextmanager
from pathlib import Path

import torch

DATASHEET_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}  # dense, SXM parts
CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"
T0 = time.perf_counter()


def log(message: str) -> None:
    print(f"[{time.perf_counter() - T0:6.1f}s] {message}", flush=True)


def sync() -> None:
    if CUDA:
        torch.cuda.synchronize()


@contextmanager
def timed(out: dict, key: str):
    sync()
    start = time.perf_counter()
    yield
    sync()
    out[key] = time.perf_counter() - start


class PeakMemory:
    """The GPU's peak memory over one stretch of work (torch.cuda.max_memory_allocated, reset at its start),
    keeping the process's peak over every stretch, which each reset would otherwise lose. Zeros on a CPU."""

    def __init__(self):
        self.before = 0  # the process's peak before the last reset

    def reset(self) -> int:
        """Start a stretch; returns the bytes allocated now (what the stretch finds resident)."""
        if not CUDA:
            return 0
        self.before = max(self.before, torch.cuda.max_memory_allocated())
        torch.cuda.reset_peak_memory_stats()
        return torch.cuda.memory_allocated()

    def peak(self) -> int:
        """The peak since the last reset."""
        return torch.cuda.max_memory_allocated() if CUDA else 0

    def process_peak(self) -> int:
        return max(self.before, self.peak())


def peak_tflops() -> float | None:
    if not CUDA:
        return None
    name = torch.cuda.get_device_name()
    return next((v for k, v in DATASHEET_BF16_TFLOPS.items() if k in name), None)


def measured_matmul_tflops() -> float:
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    out: dict = {}
    with timed(out, "t"):
        for _ in range(10):
            a @ b
    return 2 * 8192**3 * 10 / out["t"] / 1e12


def count_flops(fn) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return float(counter.get_total_flops())


def kernel_breakdown(fn, path: Path) -> dict:
    """Share of GPU time by kernel family over one call, from the torch profiler."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        fn()
        sync()
    events = [e for e in prof.key_averages()
              if e.device_time_total > 0 and getattr(getattr(e, "device_type", None), "name", "") == "CUDA"]
    total = sum(e.device_time_total for e in events) or 1
    families = {"gemm": ("gemm", "sm90", "cutlass", "xmma", "cublas", "matmul"),
                "attention": ("flash", "fmha", "attention", "cudnn_sdpa", "sdpa"),
                "convolution": ("conv", "implicit", "winograd", "dgrad", "wgrad", "cudnn"),
                "normalization": ("norm",), "triton (fused)": ("triton",)}
    shares: dict = {}
    for event in events:
        name = event.key.lower()
        family = next((f for f, keys in families.items() if any(k in name for k in keys)), "other elementwise")
        shares[family] = shares.get(family, 0) + event.device_time_total / total
    top = sorted(events, key=lambda e: -e.device_time_total)[:12]
    path.write_text(prof.key_averages().table(sort_by="device_time_total", row_limit=30))
    return {"shares": dict(sorted(shares.items(), key=lambda kv: -kv[1])),
            "top_kernels": [(e.key[:90], round(e.device_time_total / total, 4)) for e in top],
            "gpu_ms": total / 1e3}


