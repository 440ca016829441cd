"""Optimizers by name, and our Adan against its update rule written out by hand."""

import pytest
import torch

from asdcli.config import TrainConfig
from asdcli.engine.adan import Adan
from asdcli.engine.optim import build_optimizer
from asdcli.errors import UserError


def test_adan_matches_the_update_rule():
    b1, b2, b3, lr, eps, wd = 0.98, 0.92, 0.99, 0.1, 1e-8, 0.01
    p = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
    opt = Adan([p], lr=lr, betas=(b1, b2, b3), eps=eps, weight_decay=wd)
    x = p.detach().clone()
    m = v = n = torch.zeros(2)
    prev = None
    for k in range(1, 4):
        g = 2 * x * torch.tensor([1.0, 3.0])  # gradient of x0² + 3·x1²
        diff = torch.zeros(2) if prev is None else g - prev
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * diff
        n = b3 * n + (1 - b3) * (g + b2 * diff) ** 2
        step = (m / (1 - b1 ** k) + b2 * v / (1 - b2 ** k)) / ((n / (1 - b3 ** k)).sqrt() + eps)
        x = (x - lr * step) / (1 + lr * wd)
        prev = g
        opt.zero_grad()
        (p[0] ** 2 + 3 * p[1] ** 2).backward()
        opt.step()
        torch.testing.assert_close(p.detach(), x)


def test_adan_rejects_two_betas_and_build_names_it():
    with pytest.raises(UserError, match="adan takes three betas"):
        build_optimizer(TrainConfig(optimizer="adan", betas=(0.9, 0.99)), [{"params": [torch.nn.Parameter(
            torch.zeros(1))], "lr": 1.0}])
    opt = build_optimizer(TrainConfig(optimizer="adan", betas=(0.98, 0.92, 0.99)),
                          [{"params": [torch.nn.Parameter(torch.zeros(1))], "lr": 1.0}])
    assert isinstance(opt, Adan)


@pytest.mark.parametrize("name, cls", [("adam", torch.optim.Adam), ("adamw", torch.optim.AdamW)])
def test_adam_family_and_groups(name, cls):
    a, b = torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))
    opt = build_optimizer(TrainConfig(optimizer=name), [{"params": [a], "lr": 0.1}, {"params": [b], "lr": 0.01},
                                                        {"params": [], "lr": 5.0}])
    assert isinstance(opt, cls) and [g["lr"] for g in opt.param_groups] == [0.1, 0.01]
