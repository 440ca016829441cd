"""Geometry regularisers: values on hand-made inputs, edge cases and where gradients go."""

from __future__ import annotations

import math

import pytest
import torch

from asdcli.losses.regularizers import eikonal, opaque, orient, sparsity, z_variance


def test_sparsity_values():
    assert float(sparsity(torch.zeros(2, 5))) == pytest.approx(0.1)
    assert float(sparsity(torch.ones(3))) == pytest.approx(math.sqrt(1.01))
    o = torch.tensor([0.0, 1.0], requires_grad=True)
    sparsity(o).backward()
    assert float(o.grad[0]) == 0.0 and float(o.grad[1]) > 0  # smooth at 0, pushes opacity down elsewhere


def test_opaque_is_binary_entropy_with_clamp():
    assert float(opaque(torch.full((4,), 0.5))) == pytest.approx(math.log(2))
    p = 1e-3
    edge = -(p * math.log(p) + (1 - p) * math.log(1 - p))
    assert float(opaque(torch.tensor([0.0, 1.0, -0.5, 2.0]))) == pytest.approx(edge, rel=1e-4)
    o = torch.tensor([0.2, 0.9], requires_grad=True)
    opaque(o).backward()
    # Descent moves each opacity towards the nearer of 0 and 1.
    assert bool(torch.isfinite(o.grad).all()) and float(o.grad[0]) > 0 > float(o.grad[1])


def test_eikonal_values():
    unit = torch.nn.functional.normalize(torch.randn(2, 7, 3), dim=-1)
    assert float(eikonal(unit)) == pytest.approx(0.0, abs=1e-10)
    assert float(eikonal(2 * unit)) == pytest.approx(1.0, rel=1e-5)
    assert float(eikonal(torch.cat([unit, 3 * unit], dim=1))) == pytest.approx(2.0, rel=1e-5)


def test_orient_penalises_only_back_facing_normals():
    dirs = torch.tensor([[[0.0, 0.0, -1.0], [0.0, 0.0, -1.0]]])  # [B=1, R=2, 3]: looking down −z
    normals = torch.tensor([[[[0.0, 0.0, 1.0], [0.0, 0.6, -0.8]],  # facing the camera / facing away (n·d=0.8)
                             [[0.0, 0.0, -1.0], [0.0, 0.0, 1.0]]]], requires_grad=True)
    weights = torch.tensor([[[0.5, 0.25], [1.0, 0.0]]], requires_grad=True)
    opacity = torch.tensor([[0.75, 0.0]])  # one ray counts
    value = orient(weights, normals, dirs, opacity)
    assert float(value.detach()) == pytest.approx(0.25 * 0.8**2 + 1.0 * 1.0)
    value.backward()
    assert weights.grad is None  # stop-gradient on the weights
    assert float(normals.grad[0, 0, 0].abs().sum()) == 0.0 and float(normals.grad[0, 0, 1].abs().sum()) > 0
    empty = orient(weights, normals, dirs, torch.zeros(1, 2))
    assert bool(torch.isfinite(empty))


def test_z_variance_masked_mean():
    z_var = torch.tensor([[1.0, 2.0, 4.0]], requires_grad=True)
    opacity = torch.tensor([[0.9, 0.2, 0.6]])
    value = z_variance(z_var, opacity)
    assert float(value.detach()) == pytest.approx(2.5)
    value.backward()
    assert z_var.grad.tolist() == [[0.5, 0.0, 0.5]]
    assert float(z_variance(z_var, torch.zeros(1, 3)).detach()) == 0.0
