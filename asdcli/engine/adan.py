"""Adan (Xie et al., 2022), the optimizer of the paper's 3DConv-300k and Triplane-Transformer runs.

Written here because the PyPI package `adan-pytorch` uses a different β convention (1 − β) than the recipes,
which quote the paper's (0.98, 0.92, 0.99). Update per parameter, with g the gradient and k the step:
    m ← β1·m + (1−β1)·g;   v ← β2·v + (1−β2)·(g − g_prev);   n ← β3·n + (1−β3)·(g + β2·(g − g_prev))²
    p ← (p − lr·(m̂ + β2·v̂) / (√n̂ + eps)) / (1 + lr·wd)      with x̂ the bias-corrected moments.
On the first step g_prev = g (no difference term), as in the authors' code.
"""

from __future__ import annotations

import torch


class Adan(torch.optim.Optimizer):
    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float, float] = (0.98, 0.92, 0.99),
                 eps: float = 1e-8, weight_decay: float = 0.0):
        if len(betas) != 3 or not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"Adan betas: three values in [0, 1), got {betas}")
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            b1, b2, b3 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                self._update(p, p.grad, self.state[p], group, b1, b2, b3)
        return loss

    @staticmethod
    def _update(p, grad, state, group, b1, b2, b3) -> None:
        if not state:
            state["step"] = torch.zeros((), dtype=torch.float32)
            for name in ("exp_avg", "exp_avg_diff", "exp_avg_sq"):
                state[name] = torch.zeros_like(p)
            state["prev_grad"] = grad.clone()
        state["step"] += 1
        k = float(state["step"])
        diff = grad - state["prev_grad"]
        state["exp_avg"].mul_(b1).add_(grad, alpha=1 - b1)
        state["exp_avg_diff"].mul_(b2).add_(diff, alpha=1 - b2)
        state["exp_avg_sq"].mul_(b3).addcmul_(grad + b2 * diff, grad + b2 * diff, value=1 - b3)
        state["prev_grad"].copy_(grad)
        m_hat = state["exp_avg"] / (1 - b1 ** k)
        v_hat = state["exp_avg_diff"] / (1 - b2 ** k)
        denom = (state["exp_avg_sq"] / (1 - b3 ** k)).sqrt().add_(group["eps"])
        p.addcdiv_(m_hat + b2 * v_hat, denom, value=-group["lr"])
        p.div_(1 + group["lr"] * group["weight_decay"])
