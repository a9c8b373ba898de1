"""GPU speed switches shared by sampling and training: each one changes how the frozen denoiser runs,
never what it computes (beyond floating-point rounding), and each can be turned off on its own.

- `compile`: regional torch.compile of the denoiser's repeated transformer block (the class the model
  names in diffusers' `_repeated_blocks`, or the one its backbone names): one compilation serves every
  block of the same shape, so compile time stays in seconds instead of the minutes a whole-model compile
  takes.
- `channels_last`: NHWC memory layout for the denoiser's and the VAE's convolutions.
- `fuse_qkv`: one matrix product for the query, key and value projections of self-attention (key and
  value of cross-attention) instead of three.
- `attention`: which scaled-dot-product-attention kernel torch may use ("auto" lets torch choose).

A switch left at None takes the device's default: what bench/sample_throughput.py measured to win on a
GPU, and off on a CPU (compiling costs more there than it saves on the tiny models).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, fields

import torch

from dti.errors import DtiError

ATTENTION_BACKENDS = ("auto", "flash", "efficient", "cudnn", "math")


@dataclass(frozen=True)
class Speedups:
    compile: bool | None = None
    channels_last: bool | None = None
    fuse_qkv: bool | None = None
    attention: str = "auto"

    def __post_init__(self):
        if self.attention not in ATTENTION_BACKENDS:
            raise DtiError(f"attention must be one of {ATTENTION_BACKENDS}, got {self.attention!r}")

    def resolved(self, device: torch.device | str) -> Speedups:
        """Every None replaced by the device's default."""
        defaults = gpu_defaults() if torch.device(device).type == "cuda" else CPU_DEFAULTS
        return Speedups(**{f.name: getattr(defaults, f.name) if getattr(self, f.name) is None else getattr(self, f.name)
                           for f in fields(self)})


CPU_DEFAULTS = Speedups(compile=False, channels_last=False, fuse_qkv=False, attention="auto")


def gpu_defaults() -> Speedups:
    """The switches a CUDA job uses unless told otherwise: what bench/sample_throughput.py measured to win
    on SDXL sampling, side by side (figures in bench/README.md). Compile and fused QKV on; channels_last off
    (GroupNorm is slow in NHWC); the SDPA kernel left to torch, since the backends measured alike."""
    return Speedups(compile=True, channels_last=False, fuse_qkv=True, attention="auto")


def compile_blocks(module: torch.nn.Module, class_names, **options) -> int:
    """torch.compile every submodule of the named classes in place; returns how many."""
    count = 0
    for sub in module.modules():
        if type(sub).__name__ in class_names:
            sub.compile(fullgraph=True, **options)
            count += 1
    return count


def apply_to_modules(denoiser: torch.nn.Module, vae: torch.nn.Module | None, speedups: Speedups,
                     blocks: tuple[str, ...] | None = None) -> list[str]:
    """Apply the module-level switches in place, once per module; returns what was applied now. `blocks`:
    the class names to compile (None: the denoiser's `_repeated_blocks`); a backbone names its own
    (Backbone.apply_speedups), and says which switches its modules support.

    Order matters: fusing replaces the attention processors, so it must come before compiling them.
    """
    applied = getattr(denoiser, "_dti_speedups", set())
    done = []
    if speedups.channels_last and "channels_last" not in applied:
        for module in (denoiser, vae):
            if module is not None:
                module.to(memory_format=torch.channels_last)
        done.append("channels_last")
    if speedups.fuse_qkv and "fuse_qkv" not in applied:
        denoiser.fuse_qkv_projections()
        done.append("fuse_qkv")
    if speedups.compile and "compile" not in applied:
        if blocks is None:
            blocks = tuple(getattr(denoiser, "_repeated_blocks", ()))
        if not compile_blocks(denoiser, blocks):
            raise DtiError(f"{type(denoiser).__name__} has no blocks {list(blocks)} to compile; set compile: false")
        done.append("compile")
    denoiser._dti_speedups = applied | set(done)
    return done


def applied_speedups(denoiser: torch.nn.Module) -> set[str]:
    return set(getattr(denoiser, "_dti_speedups", set()))


@contextlib.contextmanager
def attention_backend(name: str):
    """Restrict scaled-dot-product attention to one kernel family ("auto": torch's own choice)."""
    if name == "auto":
        yield
        return
    from torch.nn.attention import SDPBackend, sdpa_kernel

    backend = {"flash": SDPBackend.FLASH_ATTENTION, "efficient": SDPBackend.EFFICIENT_ATTENTION,
               "cudnn": SDPBackend.CUDNN_ATTENTION, "math": SDPBackend.MATH}[name]
    with sdpa_kernel([backend]):
        yield
