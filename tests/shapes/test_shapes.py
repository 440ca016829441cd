"""ShapesWorld: grammar, splits, analytic scenes, ground-truth renders, metrics and prompt libraries."""

import json
import math

import pytest
import torch

from asdcli.render.cameras import CameraBatch, cameras_from_angles, orbit_cameras
from asdcli.shapes.gt_render import render_scene, render_scenes
from asdcli.shapes.world import grammar, metrics
from asdcli.shapes.world.grammar import COLORS, ObjectSpec, PromptError, SceneSpec, parse_prompt
from asdcli.shapes.world.library import write_library
from asdcli.shapes.world.scenes import (
    FIT_RADIUS,
    SceneBatch,
    grid_points,
    place,
    scene_field,
    scene_radius,
    scene_volume,
)


def _cams(n: int, elevation: float, azimuth: float, distance: float, fovy: float) -> CameraBatch:
    full = torch.ones(n)
    return cameras_from_angles(full * elevation, full * azimuth, full * distance, full * fovy)


# --- grammar -------------------------------------------------------------------------------------------------

def test_every_prompt_parses_back_to_its_spec():
    specs = grammar.all_specs()
    assert len(specs) == len(set(grammar.all_prompts())) > 5000
    for spec in specs:
        assert parse_prompt(spec.text) == spec
    assert parse_prompt("An ORANGE cone on top of a blue cube.") == SceneSpec(
        (ObjectSpec("cone", "orange"), ObjectSpec("cube", "blue")), "on top of")
    assert parse_prompt("a large red sphere, side view").objects == (ObjectSpec("sphere", "red", "large"),)


def test_unknown_words_are_named():
    assert grammar.unknown_words("a shiny red cube beside a dog, red") == ["shiny", "beside", "dog"]
    with pytest.raises(PromptError, match="shiny, dog"):
        parse_prompt("a shiny red cube next to a dog")
    with pytest.raises(PromptError, match="cannot parse"):
        parse_prompt("a cube red")
    with pytest.raises(PromptError, match="at most one relation"):
        parse_prompt("a red cube on top of a blue cube next to a red cone")


def test_splits_hold_out_combinations_of_seen_words():
    sp = grammar.splits(0)
    train, val, test = (set(sp[k]) for k in ("train", "val", "test"))
    assert not (train & val or train & test or val & test)
    assert train | val | test == set(grammar.all_prompts())
    assert sp == grammar.splits(0) and sp["test"] != grammar.splits(1)["test"]
    held = grammar.held_out_combinations(0)
    assert len({c for _, c in held}) == len(held) == len(grammar.SHAPES)

    def combos(prompts):
        return {(o.shape, o.color) for p in prompts for o in parse_prompt(p).objects}

    assert not combos(train | val) & held
    assert all(combos([p]) & held for p in test)
    train_words = {w for p in train for w in p.split()}
    assert {w for p in test for w in p.split()} <= train_words


def test_corpora_are_nested():
    small, mid, big = (grammar.corpus(n, seed=0) for n in (16, 256, 4096))
    assert (len(small), len(mid), len(big)) == (16, 256, 4096)
    assert small == mid[:16] and mid == big[:256] and len(set(big)) == 4096
    assert set(big) <= set(grammar.splits(0)["train"])
    assert 2 <= sum(len(parse_prompt(p).objects) == 1 for p in small) <= 8  # small corpora still hold singles
    with pytest.raises(PromptError):
        grammar.corpus(10**6)


# --- scenes --------------------------------------------------------------------------------------------------

def test_sdf_exact_at_known_points():
    sphere, cube = scene_field("a red sphere"), scene_field("a blue cube")
    pts = torch.tensor([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, -0.3, 0.0], [0.0, 0.0, 2.0]])
    assert torch.allclose(sphere.sdf(pts), torch.tensor([-0.6, 0.4, -0.3, 1.4]), atol=1e-6)
    assert torch.allclose(cube.sdf(pts), torch.tensor([-0.45, 0.55, -0.15, 1.55]), atol=1e-6)
    big = scene_field("a large red sphere")
    assert big.sdf(torch.zeros(1, 3)).item() == pytest.approx(-0.75)
    assert torch.allclose(sphere.color(pts), torch.tensor(COLORS["red"]).expand(4, 3))


@pytest.mark.parametrize("shape", grammar.SHAPES)
def test_sdf_is_a_distance_bound(shape):
    pts = (torch.rand(4096, 3, generator=torch.Generator().manual_seed(0)) * 2 - 1).requires_grad_(True)
    (grad,) = torch.autograd.grad(scene_field(f"a red {shape}").sdf(pts).sum(), pts)
    assert grad.norm(dim=-1).max() <= 1.0 + 1e-4  # 1-Lipschitz: safe for sphere tracing


def test_relations_and_fit():
    top = parse_prompt("a red cube on top of a blue sphere")
    a, b = place(top)
    assert a.center[2] > b.center[2] and a.center[:2] == b.center[:2]
    field = scene_field(top)
    lo_z, hi_z = a.center[2] - 0.3 * a.scale, b.center[2]
    cols = field.color(torch.tensor([[0.0, 0.0, 0.95], [0.0, 0.0, -0.95], [0, 0, lo_z], [0, 0, hi_z]]))
    assert torch.allclose(cols, torch.tensor([COLORS["red"], COLORS["blue"], COLORS["red"], COLORS["blue"]]))
    a, b = place(parse_prompt("a yellow cone next to a blue cylinder"))
    assert a.center[1] < 0 < b.center[1] and a.center[2] == b.center[2] == 0
    for spec in grammar.all_specs()[::37]:
        if spec.relation:
            assert scene_radius(spec) <= FIT_RADIUS + 1e-9
        lo, hi = SceneBatch([spec]).lo[0], SceneBatch([spec]).hi[0]
        assert torch.allclose(lo + hi, torch.zeros(3), atol=1e-6) and hi.max() < 1.0


def test_batched_sdf_matches_single_scenes():
    specs = [parse_prompt(t) for t in ("a red sphere", "a blue cube on top of a green torus", "a pink cone",
                                         "a small cyan pyramid", "a red capsule next to a blue cylinder")]
    batch = SceneBatch(specs)
    pts = torch.rand(500, 3, generator=torch.Generator().manual_seed(0)) * 2 - 1
    scene = torch.arange(500) % len(specs)  # mixed shapes in every slot: the masking path
    d, col = batch.sdf_and_color(pts, scene)
    for i, spec in enumerate(specs):
        f = scene_field(spec)
        assert torch.allclose(d[scene == i], f.sdf(pts[scene == i]), atol=1e-6)
        assert torch.equal(col[scene == i], f.color(pts[scene == i]))


def test_volume_and_radius_match_the_grid():
    voxel = (2.0 / 96) ** 3
    for text in ("a large green cone", "a red cube on top of a blue sphere", "a pink torus next to a cyan pyramid"):
        spec = parse_prompt(text)
        occ = scene_field(spec).occupancy_grid(96)
        assert occ.sum().item() * voxel == pytest.approx(scene_volume(spec), rel=0.04)
        far = grid_points(96)[occ].norm(dim=-1).max().item()
        assert far <= scene_radius(spec) + 1e-6 and far > scene_radius(spec) - 0.03


# --- ground-truth renders ------------------------------------------------------------------------------------

def test_sphere_render_matches_projection_and_colour():
    d, fovy, res = 2.0, 50.0, 64
    out = render_scene("a blue sphere", _cams(1, 20.0, 30.0, d, fovy), res, res, shading="albedo",
                       supersample=2)
    focal = 0.5 * res / math.tan(math.radians(fovy) / 2)
    expected = 0.6 * focal / math.sqrt(d * d - 0.36)
    measured = math.sqrt(out.alpha.sum().item() / math.pi)
    assert measured == pytest.approx(expected, abs=1.0)
    centre = out.rgb[0, res // 2 - 1:res // 2 + 1, res // 2 - 1:res // 2 + 1].reshape(-1, 3)
    assert torch.allclose(centre, torch.tensor(COLORS["blue"]).expand(4, 3), atol=1e-4)
    assert torch.allclose(out.rgb[0, 0, 0], torch.ones(3)) and out.alpha[0, 0, 0] == 0


def test_shading_background_and_batching():
    cams = orbit_cameras(2, 15.0, 2.2, 50.0)
    lit = render_scene("a red sphere", cams, 32, 32)
    albedo = render_scene("a red sphere", cams, 32, 32, shading="albedo")
    hit = lit.alpha == 1
    ratio = lit.rgb[hit][:, 0] / albedo.rgb[hit][:, 0]
    assert ratio.min() >= 0.3 - 1e-4 and ratio.max() <= 1.0 + 1e-4 and ratio.max() - ratio.min() > 0.4
    rand = render_scene("a red sphere", cams, 32, 32, background="random", generator=torch.Generator())
    assert not torch.allclose(rand.rgb[0, 0, 0], rand.rgb[1, 0, 0]) and torch.equal(rand.alpha, lit.alpha)
    # Equal shape signatures (sphere/small sphere, cone+cube pairs) share chunks through the gathering path.
    texts = ["a red sphere", "a green cube next to a cyan cone", "a small blue sphere", "a yellow torus",
             "a black cone on top of a red cube", "a cyan cone next to a pink cube"]
    views = orbit_cameras(3, 10.0, 2.4, 50.0)
    cams = CameraBatch(*(getattr(views, k).repeat(len(texts), *[1] * (getattr(views, k).dim() - 1))
                         for k in ("c2w", "fovy", "elevation", "azimuth", "distance")))
    together = render_scenes(texts, cams, 24, 24, chunk_rays=24 * 24 * 5)  # chunks mix scenes
    alone = torch.cat([render_scene(t, views, 24, 24).rgb for t in texts])
    assert torch.allclose(together.rgb, alone, atol=1e-5)


# --- metrics -------------------------------------------------------------------------------------------------

def test_iou_rotation_and_blob():
    cube = parse_prompt("a red cube")
    occ = scene_field(cube).occupancy_grid(48)
    assert metrics.iou(occ, occ).item() == 1.0
    turned = metrics.rotate_occupancy(occ, [90.0])[0]
    assert metrics.iou_best_rotation(turned, occ)[0] == 1.0
    pair = parse_prompt("a red cube next to a blue sphere")
    gt = scene_field(pair).occupancy_grid(48)
    turned = metrics.rotate_occupancy(gt, [45.0])[0]
    assert metrics.iou(turned, gt).item() < 0.5 < 0.95 < metrics.iou_best_rotation(turned, gt, 16)[0]
    field = scene_field(pair)
    t = math.radians(67.5)  # the prediction is the scene turned by −67.5°: queried points turn back
    rot = torch.tensor([[math.cos(t), -math.sin(t), 0], [math.sin(t), math.cos(t), 0], [0, 0, 1.0]])
    value, angle = metrics.iou_field(lambda p: field.sdf(p @ rot.T) <= 0, pair, res=48, angles=16)
    assert value > 0.99 and angle == pytest.approx(67.5)
    assert 0.0 < metrics.blob_baseline_iou(cube, 48) < 1.0
    assert metrics.blob_radius([cube]) == pytest.approx((3 * scene_volume(cube) / (4 * math.pi)) ** (1 / 3))


def test_shape_r_at_1_and_colour_error():
    texts = ["a red cube", "a blue cube", "a red sphere", "a green cone on top of a red torus",
             "a red torus next to a blue sphere", "a blue sphere next to a pink torus", "a small yellow capsule"]
    specs = [parse_prompt(t) for t in texts]
    gt = metrics.gt_occupancy(specs, 32)
    assert metrics.shape_r_at_1(list(gt), specs) == 1.0  # same-shape scenes (rows 0–1, 4–5) are not rivals
    out = metrics.shape_metrics([gt[2]] * len(specs), specs)  # everything predicted as a sphere
    assert out["shape_r_at_1"] == pytest.approx(1 / len(specs))
    assert out["iou"][2] == 1.0 and 0 < out["blob_iou_mean"] < 1
    spec = specs[3]
    pts = metrics.surface_points(spec, 512)
    assert scene_field(spec).sdf(pts).abs().max() < 1e-3
    assert metrics.color_error(scene_field(spec).color, spec, n=512) == 0.0
    grey = metrics.color_error(lambda p: torch.full((p.shape[0], 3), 0.5), spec, n=512)
    assert 0.2 < grey < 0.5


def test_shapes_commands_report_failures_as_asd_does(tmp_path, capsys):
    """An internal failure is one line naming the exception, exit 1; Ctrl-C is `interrupted`, exit 130; with
    --debug (on every command) the traceback instead."""
    import typer

    from asdcli.shapes.__main__ import _guarded, app, main

    def broken(reason: str):
        raise RuntimeError(f"broken: {reason}\nsecond line")

    def interrupted():
        raise KeyboardInterrupt

    for body, args, code in ((broken, ("grid",), 1), (interrupted, (), 130)):
        with pytest.raises(typer.Exit) as exit_info:
            _guarded(body, *args)
        assert exit_info.value.exit_code == code
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "Traceback" not in err
    with pytest.raises(typer.Exit):
        _guarded(broken, "grid")
    assert "internal error (RuntimeError): broken: grid" in capsys.readouterr().err
    with pytest.raises(RuntimeError, match="broken: grid"):
        _guarded(broken, "grid", debug=True)
    for command in app.registered_commands:
        assert main([command.name, "--help"]) == 0
        assert "--debug" in capsys.readouterr().out, command.name


def test_write_library(tmp_path):
    lib = write_library(tmp_path / "lib" / "shapes.json", seed=0, corpus_size=16)
    loaded = json.loads((tmp_path / "lib" / "shapes.json").read_text())
    assert loaded == lib and set(lib) == {"train", "val", "test"}
    assert lib["train"] == grammar.corpus(16) and lib["test"] == grammar.splits(0)["test"]


def test_prompt_errors_are_value_errors_the_commands_report_as_user_errors(tmp_path, capsys):
    """The world raises PromptError (a ValueError: it imports nothing of the core); the library path of `asd` and
    `python -m asdcli.shapes` still report it as one line, exit 2."""
    import typer

    from asdcli.errors import UserError
    from asdcli.prompts import read_library
    from asdcli.shapes.__main__ import _guarded

    assert issubclass(PromptError, ValueError) and not issubclass(PromptError, UserError)
    n = len(grammar.splits(0)["train"])
    with pytest.raises(UserError, match=f"corpus size must be between 1 and {n} \\(the train split\\), got {n + 1}"):
        read_library(f"shapesworld:{n + 1}")
    with pytest.raises(typer.Exit) as exit_info:
        _guarded(parse_prompt, "a shiny dog")
    assert exit_info.value.exit_code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: words outside the ShapesWorld vocabulary: shiny, dog.") and err.count("\n") == 1
