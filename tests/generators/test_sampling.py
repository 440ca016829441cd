"""The gather-based grid_sample (used on CUDA, whose grid_sample has no second derivative) against F.grid_sample."""

import pytest
import torch
import torch.nn.functional as F

from asdcli.generators.sampling import gather_sample, grid_sample


def _inputs(dims: int, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    spatial = (5, 6, 7)[-dims:]
    inp = torch.randn(2, 3, *spatial, generator=gen, dtype=torch.float64)
    # 1.3: some points outside [-1, 1] exercise the zero padding
    grid = (torch.rand(2, *(1,) * (dims - 1), 40, dims, generator=gen, dtype=torch.float64) * 2 - 1) * 1.3
    return inp.requires_grad_(), grid.requires_grad_()


def _reference(inp, grid):
    return F.grid_sample(inp, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


@pytest.mark.parametrize("dims", [2, 3])
def test_gather_sample_matches_grid_sample_and_its_gradients(dims):
    inp, grid = _inputs(dims)
    ours, ref = gather_sample(inp, grid), _reference(inp, grid)
    torch.testing.assert_close(ours, ref)
    w = torch.randn_like(ref)
    g_ours = torch.autograd.grad((ours * w).sum(), (inp, grid))
    g_ref = torch.autograd.grad((ref * w).sum(), (inp, grid))
    for a, b in zip(g_ours, g_ref, strict=True):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("dims", [2, 3])
def test_gather_sample_second_derivative_matches_cpu_grid_sample(dims):
    """What the eikonal loss needs: d/d(inp) of the coordinate gradient (CPU grid_sample has it, CUDA's not)."""
    inp, grid = _inputs(dims, seed=1)
    results = []
    for fn in (gather_sample, _reference):
        (g_grid,) = torch.autograd.grad(fn(inp, grid).square().sum(), grid, create_graph=True)
        try:
            results.append(torch.autograd.grad(g_grid.sin().sum(), inp))
        except RuntimeError as exc:  # e.g. torch 2.11's CPU grid_sampler_3d has no double backward
            assert fn is _reference, exc
            pytest.skip(f"this torch's grid_sample has no second derivative here: {exc}")
    torch.testing.assert_close(results[0], results[1])


def test_gather_sample_gradgradcheck():
    inp, grid = _inputs(2, seed=2)
    assert torch.autograd.gradgradcheck(lambda a, b: gather_sample(a, b), (inp[:1, :1], grid[:1, :, :6]))


def test_grid_sample_uses_the_fused_kernel_only_without_coordinate_gradients():
    inp, grid = _inputs(2)
    with torch.no_grad():
        assert torch.equal(grid_sample(inp, grid), _reference(inp, grid))
    fixed = grid.detach()
    assert grid_sample(inp, fixed).grad_fn.name().startswith("GridSampler")
    assert not grid_sample(inp, grid).grad_fn.name().startswith("GridSampler")  # gathers: twice differentiable


@pytest.mark.gpu
def test_cuda_sampling_supports_the_eikonal_second_derivative():
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    inp, grid = (t.detach().float().cuda().requires_grad_() for t in _inputs(3))
    (g_grid,) = torch.autograd.grad(grid_sample(inp, grid).square().sum(), grid, create_graph=True)
    (g_inp,) = torch.autograd.grad(g_grid.sin().sum(), inp)
    cpu_inp, cpu_grid = (t.detach().cpu().double().requires_grad_() for t in (inp, grid))
    (c_grid,) = torch.autograd.grad(gather_sample(cpu_inp, cpu_grid).square().sum(), cpu_grid, create_graph=True)
    (c_inp,) = torch.autograd.grad(c_grid.sin().sum(), cpu_inp)
    torch.testing.assert_close(g_inp.cpu().double(), c_inp, atol=1e-4, rtol=1e-4)
