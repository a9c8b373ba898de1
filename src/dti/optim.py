"""DTI's optimizers (docs/method.md): Riemannian SGD on the unit sphere with a von Mises-Fisher prior, and
AdamW retracted to the sphere (an ablation); `Optimizers` steps a token's and an adapter's as one."""

from __future__ import annotations

import torch

from dti.sphere import retract, tangent_project, vmf_prior_grad


class RiemannianSGD(torch.optim.Optimizer):
    """Optimizes parameters whose rows are unit vectors.

    Per row v with Euclidean gradient g:
        g   <- g - kappa * mu                      (MAP with a vMF prior centred on mu)
        g_t <- g - (g.v) v                          (tangent space at v)
        s   <- beta s + (1 - beta) |g_t|^2;  s_hat = s / (1 - beta^t)
        v   <- retract(v - lr * g_t / (sqrt(s_hat) + eps))
    With beta = 0 (all published runs) each step has length lr. Optimizer math runs in fp32 whatever the
    parameter's dtype, and the state is fp32.

    A parameter group with `sphere: False` (a trained norm m) takes the same normalized step in flat space:
    no prior, no tangent projection, no retraction (the product manifold sphere x R).
    """

    def __init__(self, params, lr: float, *, beta: float = 0.0, eps: float = 1e-8, kappa: float = 0.0,
                 prior_mu: list[torch.Tensor] | None = None):
        if lr <= 0:
            raise ValueError(f"lr must be positive, got {lr}")
        if not 0.0 <= beta < 1.0:
            raise ValueError(f"beta must be in [0, 1), got {beta}")
        if kappa < 0:
            raise ValueError(f"kappa must be >= 0, got {kappa}")
        super().__init__(params, dict(lr=lr, beta=beta, eps=eps, kappa=kappa, sphere=True))
        params_flat = [p for group in self.param_groups for p in group["params"]]
        if prior_mu is None:
            prior_mu = [None] * len(params_flat)
        if len(prior_mu) != len(params_flat):
            raise ValueError("prior_mu needs one tensor per parameter")
        for p, mu in zip(params_flat, prior_mu, strict=True):
            self.state[p]["mu"] = None if mu is None else retract(mu.detach().float().clone())

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                v = p.float()
                g = p.grad.float()
                on_sphere = group["sphere"]
                if on_sphere and state["mu"] is not None and group["kappa"] > 0:
                    g = g + vmf_prior_grad(state["mu"].to(g.device), group["kappa"])
                g_t = tangent_project(g, v) if on_sphere else g
                sq = g_t.pow(2).sum(dim=-1, keepdim=True)
                if "sq_avg" not in state:
                    state["sq_avg"] = torch.zeros_like(sq)
                    state["step"] = 0
                state["step"] += 1
                beta = group["beta"]
                state["sq_avg"].mul_(beta).add_(sq, alpha=1 - beta)
                s_hat = state["sq_avg"] / (1 - beta ** state["step"])
                update = g_t / (s_hat.sqrt() + group["eps"])
                moved = v - group["lr"] * update
                p.copy_(retract(moved) if on_sphere else moved)
        return loss


class RetractedAdamW(torch.optim.AdamW):
    """AdamW whose parameters' rows are put back on the unit sphere after every step (projected AdamW)."""

    @torch.no_grad()
    def step(self, closure=None):
        loss = super().step(closure)
        for group in self.param_groups:
            for p in group["params"]:
                p.copy_(retract(p.float()))
        return loss


class Optimizers:
    """Several optimizers stepped as one (a token's and an adapter's). Its state_dict numbers the parameters
    across them in order, as one optimizer over all of them would, so a saved state (dti.state) and its
    checks need nothing of their own."""

    def __init__(self, optimizers: list[torch.optim.Optimizer]):
        self.optimizers = list(optimizers)

    @property
    def param_groups(self) -> list[dict]:
        return [group for optimizer in self.optimizers for group in optimizer.param_groups]

    def zero_grad(self, set_to_none: bool = True) -> None:
        for optimizer in self.optimizers:
            optimizer.zero_grad(set_to_none=set_to_none)

    def step(self) -> None:
        for optimizer in self.optimizers:
            optimizer.step()

    @staticmethod
    def _size(optimizer: torch.optim.Optimizer) -> int:
        return sum(len(group["params"]) for group in optimizer.param_groups)

    def state_dict(self) -> dict:
        state, offset = {}, 0
        for optimizer in self.optimizers:
            state.update({offset + index: entries for index, entries in optimizer.state_dict()["state"].items()})
            offset += self._size(optimizer)
        return {"state": state, "param_groups": [o.state_dict()["param_groups"] for o in self.optimizers]}

    def load_state_dict(self, state_dict: dict) -> None:
        offset = 0
        for optimizer in self.optimizers:
            size = self._size(optimizer)
            own = {index - offset: entries for index, entries in state_dict["state"].items()
                   if offset <= index < offset + size}
            optimizer.load_state_dict({**optimizer.state_dict(), "state": own})
            offset += size
