"""Geometry of the unit sphere, row-wise: the maths DTI's optimizer and interpolation share.

Pure torch, no diffusers, so it is cheap to import and to test. Every function treats the last
dimension as the vector and works on any leading batch shape.
"""

from __future__ import annotations

import torch

_TINY = 1e-12  # guards divisions by a norm that can be exactly zero


def normalize(x: torch.Tensor) -> torch.Tensor:
    """Scale each row to unit L2 norm (the retraction onto the sphere)."""
    return x / x.norm(dim=-1, keepdim=True).clamp_min(_TINY)


retract = normalize


def tangent_project(grad: torch.Tensor, point: torch.Tensor) -> torch.Tensor:
    """Remove from `grad` its component along the unit vector `point`: g - (g.v) v."""
    return grad - (grad * point).sum(dim=-1, keepdim=True) * point


def vmf_prior_grad(mu: torch.Tensor, kappa: float) -> torch.Tensor:
    """Gradient of the negative log vMF prior, -kappa * mu^T v, with respect to v: a constant -kappa * mu."""
    return -kappa * mu


def angle(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Angle in radians between the rows of `a` and `b` (any norms)."""
    cos = (normalize(a) * normalize(b)).sum(dim=-1)
    return torch.arccos(cos.clamp(-1.0, 1.0))


def slerp(a: torch.Tensor, b: torch.Tensor, t: float) -> torch.Tensor:
    """Spherical interpolation between the DIRECTIONS of `a` and `b` (unit result, row-wise).

    t = 0 gives a/|a|, t = 1 gives b/|b|. Nearly parallel rows fall back to normalized lerp, where the
    sin(Omega) denominator would lose all precision.
    """
    u, w = normalize(a), normalize(b)
    omega = angle(u, w).unsqueeze(-1)
    sin_omega = torch.sin(omega)
    parallel = sin_omega.abs() < 1e-6
    safe = torch.where(parallel, torch.ones_like(sin_omega), sin_omega)
    out = (torch.sin((1 - t) * omega) * u + torch.sin(t * omega) * w) / safe
    out = torch.where(parallel, (1 - t) * u + t * w, out)
    return normalize(out)


def lerp(a: torch.Tensor, b: torch.Tensor, t: float) -> torch.Tensor:
    """Plain linear interpolation of raw vectors (the TI baseline for interpolation)."""
    return (1 - t) * a + t * b
