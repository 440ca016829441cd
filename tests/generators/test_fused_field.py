"""The fused C++ triplane field (asdcli/generators/fused.py) against the eager path and a float64 reference.

Tolerances: both float32 paths are compared with the float64 eager path, relative to the largest magnitude of
each output or gradient. Measured on the 2-core CPU (2026-12-07): fused ≤ 1.5e-6, eager ≤ 1.2e-6; the tests
allow 2e-5 (other CPUs round the vectorised sums differently).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from asdcli.generators import fused
from asdcli.generators.triplane import TriplaneConfig, TriplaneGenerator
from asdcli.prompts import recipe_prompts
from asdcli.recipe import load_recipe

pytestmark = pytest.mark.skipif(shutil.which("c++") is None and shutil.which("g++") is None,
                                reason="no C++ compiler: the fused kernel cannot be built here")
TOL = 2e-5


@pytest.fixture(autouse=True)
def _kernel():
    assert fused.kernel() is not None  # built here (the tests' machine has a compiler) or loaded
RECIPE = Path(__file__).resolve().parents[2] / "recipes" / "shapes_asd.yaml"


def _problem(p: int = 2, n: int = 3000):
    torch.manual_seed(0)
    gen = TriplaneGenerator(TriplaneConfig(text_dim=16))
    planes = torch.randn(p, 3, 8, 16, 16) * 0.5
    points = torch.rand(p, n, 3) * 2 - 1
    points[0, :6] = torch.tensor([[1.0, -1.0, 0.0], [-1.0, 1.0, 1.0], [0.0, 0.0, 0.0],
                                  [1.0, 1.0, 1.0], [-1.0, -1.0, -1.0], [0.5, -0.25, 1.0]])  # faces, corners
    upstream = torch.randn(p, n), torch.randn(p, n, 3), torch.randn(p, n, 3)
    return gen, planes, points, upstream


def _field_and_grads(gen, planes, points, upstream, monkeypatch, fused_on: bool) -> list[torch.Tensor]:
    """value, features, d value / d point, then the gradients of planes and every weight of a fixed loss."""
    monkeypatch.setenv("ASD_FUSED", "1" if fused_on else "0")
    gen.zero_grad(set_to_none=True)
    state = planes.clone().requires_grad_(True)
    out, grad = gen.query_with_grad(state, points)
    g_value, g_feat, g_grad = (u.to(state.dtype) for u in upstream)
    ((out.value * g_value).sum() + (out.features * g_feat).sum() + (grad * g_grad).sum()).backward()
    weights = [p.grad for p in (gen.sdf_head.layers[0].weight, gen.sdf_head.layers[1].weight,
                                gen.feature_head.layers[0].weight, gen.feature_head.layers[1].weight)]
    return [out.value.detach(), out.features.detach(), grad.detach(), state.grad, *weights]


def test_fused_field_matches_the_float64_eager_field(monkeypatch):
    gen, planes, points, upstream = _problem()
    assert fused.usable(planes, points, (gen.sdf_head, gen.feature_head))
    fast = _field_and_grads(gen, planes, points, upstream, monkeypatch, fused_on=True)
    eager = _field_and_grads(gen, planes, points, upstream, monkeypatch, fused_on=False)
    ref = _field_and_grads(gen.double(), planes.double(), points.double(), upstream, monkeypatch, fused_on=False)
    names = ["value", "features", "d value/d point", "d planes", "sdf w1", "sdf w2", "colour w1", "colour w2"]
    for name, f, e, r in zip(names, fast, eager, ref, strict=True):
        scale = r.abs().max().item()
        assert scale > 0, name
        assert (f.double() - r).abs().max().item() <= TOL * scale, name
        assert (e.double() - r).abs().max().item() <= TOL * scale, name  # the reference is a fair one


def test_fused_field_is_taken_only_where_it_applies(monkeypatch):
    gen, planes, points, _ = _problem(n=16)
    heads = (gen.sdf_head, gen.feature_head)
    assert fused.usable(planes, points, heads)
    assert not fused.usable(planes.double(), points.double(), heads)  # float32 only
    assert not fused.usable(planes, points.requires_grad_(True), heads)  # no gradient to the points
    odd = TriplaneGenerator(TriplaneConfig(text_dim=16, hidden=48))  # sizes it was not instantiated for
    assert not fused.usable(planes, points.detach(), (odd.sdf_head, odd.feature_head))
    wide = TriplaneGenerator(TriplaneConfig(text_dim=16, plane_channels=4))
    assert not fused.usable(torch.zeros(1, 3, 4, 16, 16), points.detach(), (wide.sdf_head, wide.feature_head))
    monkeypatch.setenv("ASD_FUSED", "0")
    assert not fused.usable(planes, points.detach(), heads)


def test_renders_without_gradients_stay_on_the_eager_path(monkeypatch):
    """Evaluation renders (no_grad) give exactly what they gave before the kernel existed."""
    gen, planes, points, _ = _problem(n=500)
    with torch.no_grad():
        now = gen.query_with_grad(planes, points)
        monkeypatch.setenv("ASD_FUSED", "0")
        eager = gen.query_with_grad(planes, points)
    assert torch.equal(now[0].value, eager[0].value) and torch.equal(now[1], eager[1])


def test_training_steps_give_the_same_losses_and_weights_with_and_without_the_kernel(monkeypatch, tmp_path):
    """Three steps of a small ShapesWorld run (triplane, Lambertian shading, eikonal term), each path from the
    same seed: losses within 1e-4 relative, every generator weight within 1e-4 of its scale."""
    from asdcli.engine.trainer import Trainer

    results = []
    for on in (True, False):
        monkeypatch.setenv("ASD_FUSED", "1" if on else "0")
        cfg = load_recipe(RECIPE, ["render.resolution=16", "render.prompts_per_step=2",
                                                      "render.samples_per_ray=16", "train.val_every=0",
                                                      "train.checkpoint_every=1000"],
                          {"train.steps": 3, "output.dir": str(tmp_path / f"run-{on}")})
        trainer = Trainer(cfg, recipe_prompts(cfg)[0][:8], [], quiet=True)
        losses = [float(trainer.train_step()["loss"]) for _ in range(3)]
        weights = {k: v.detach().clone() for k, v in trainer.parts.generator.state_dict().items()}
        results.append((losses, weights))
    (fast_losses, fast_w), (eager_losses, eager_w) = results
    assert fast_losses == pytest.approx(eager_losses, rel=1e-4)
    for name, w in eager_w.items():
        assert (fast_w[name] - w).abs().max().item() <= 1e-4 * max(w.abs().max().item(), 1e-3), name


def test_package_data_ships_the_kernel_source():
    text = (RECIPE.parents[1] / "pyproject.toml").read_text()
    assert '"generators/csrc/*.cpp"' in text and fused.SOURCE.is_file()


def test_only_runs_long_enough_to_repay_the_build_build_it():
    """The tiny CPU recipe (the README's first training run) must not wait ~40 s for a compiler; the bundled
    ShapesWorld recipe saves far more than the build costs."""
    from asdcli.engine.trainer import field_queries

    root = RECIPE.parent
    tiny = load_recipe(root / "tiny_cpu.yaml", [], {})
    shapes = load_recipe(root / "shapes_generator.yaml", [], {})
    assert field_queries(shapes) == 10_000 * 16 * 1 * 32 * 32 * 48  # steps · prompts · views · pixels · samples
    assert not fused.worth_building(field_queries(tiny))
    assert fused.worth_building(field_queries(shapes))
    assert fused.worth_building(field_queries(load_recipe(root / "shapes_asd.yaml", [], {})))
