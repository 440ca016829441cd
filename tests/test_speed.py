"""Speed work that must not change results: the thread default and --threads, the mesh query chunk size."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from asdcli.errors import UserError
from asdcli.threads import apply_threads, check_threads, default_threads, usable_cpus

ROOT = Path(__file__).resolve().parents[1]


def test_default_threads_leaves_busy_cores_alone(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert default_threads(cpus=2, load=0.2) == 2  # idle 2-core machine: both cores
    assert default_threads(cpus=2, load=1.3) == 1  # one core busy with other work
    assert default_threads(cpus=2, load=7.0) == 1  # never below one
    assert default_threads(cpus=16, load=3.9) == 12  # rounded to the nearest core
    assert default_threads(cpus=2, load=0.4) == 2 and default_threads(cpus=2, load=0.6) == 1
    assert 1 <= default_threads() <= usable_cpus()


def test_an_explicit_omp_num_threads_is_the_default(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert default_threads(cpus=2, load=0.0) == 3
    monkeypatch.setenv("OMP_NUM_THREADS", "junk")
    assert default_threads(cpus=2, load=0.0) == 2


def test_apply_threads_sets_torch(monkeypatch):
    assert apply_threads(2) == 2 and torch.get_num_threads() == 2
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert apply_threads(None) == 1 and torch.get_num_threads() == 1
    with pytest.raises(UserError, match="--threads: must be between 1 and 1024, got 0"):
        check_threads(0)


@pytest.mark.parametrize("command", [["train", "recipes/tiny_cpu.yaml"], ["distill", "a cube"],
                                     ["generate", "a cube", "--out", "x.glb"], ["export", "run", "--out", "o"],
                                     ["eval"]])
def test_every_command_takes_threads_and_rejects_zero(command):
    proc = subprocess.run([sys.executable, "-m", "asdcli", *command, "--threads", "0"], capture_output=True,
                          text=True, cwd=ROOT, env={"PYTHONPATH": str(ROOT), "PATH": ""})
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "--threads" in lines[0] and "between 1 and 1024" in lines[0]


def test_threads_reach_torch_in_a_command():
    for threads in ("1", "2"):
        code = (f"import torch; from asdcli import cli; cli._threads({threads}); "
                "cli.run_guarded(False, lambda: print(torch.get_num_threads(), torch.get_num_interop_threads()))")
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                              env={"PYTHONPATH": str(ROOT), "PATH": ""})
        assert proc.stdout.split() == [threads, "1"], proc.stderr[-300:]


def test_small_query_chunks_give_the_same_mesh():
    from asdcli.mesh.grid import QUERY_CHUNK
    from asdcli.mesh.isosurface import extract_mesh

    def sdf(points):  # a box with rounded edges, coloured by position
        q = points.abs() - 0.4
        value = q.clamp(min=0).norm(dim=-1) + q.max(dim=-1).values.clamp(max=0) - 0.1
        return value, (points + 1) / 2

    sdf.value_only = lambda p: sdf(p)[0]
    assert QUERY_CHUNK <= 32768
    for resolution in (40, 64):
        big = extract_mesh(sdf, resolution, 1.0, "sdf", chunk=1 << 20)
        small = extract_mesh(sdf, resolution, 1.0, "sdf")
        odd = extract_mesh(sdf, resolution, 1.0, "sdf", chunk=1000)
        for mesh in (small, odd):
            assert mesh.vertices.shape == big.vertices.shape and np.array_equal(mesh.faces, big.faces)
            assert np.abs(mesh.vertices - big.vertices).max() <= 1e-6
            assert np.abs(mesh.colors.astype(int) - big.colors).max() <= 1


def _fit_tiny(run, log_every: int):
    import json

    from asdcli.engine.trainer import fit
    from asdcli.recipe import load_recipe

    cfg = load_recipe(ROOT / "recipes" / "tiny_cpu.yaml",
                      ["render.resolution=8", "render.samples_per_ray=8", f"train.log_every={log_every}",
                       "train.checkpoint_every=100", "prompts.num_val=1", "train.val_views=2"],
                      {"output.dir": str(run), "train.steps": 4})
    result = fit(cfg, list(cfg.prompts.items), list(cfg.prompts.items), quiet=True)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    from asdcli.engine import checkpoint as ckpt_io

    weights = ckpt_io.load_part(ckpt_io.resolve_checkpoint(run), "generator")
    return result, {r["step"]: r for r in rows if "loss" in r}, weights


def test_logging_less_often_changes_no_weight_and_no_logged_value(tmp_path):
    """Logged values stay on the device between logged steps: reading them every step or every other step
    must give the same training (bit-equal weights) and the same values on the steps both logged."""
    every, every_step = _fit_tiny(tmp_path / "a", 1), _fit_tiny(tmp_path / "b", 2)
    assert every[0].step == every_step[0].step == 4
    assert every[2].keys() == every_step[2].keys()
    assert all(torch.equal(every[2][k], every_step[2][k]) for k in every[2])
    shared = set(every[1]) & set(every_step[1])
    assert len(every[1]) == 4 and len(shared) == 2
    for step in shared:
        a, b = every[1][step], every_step[1][step]
        assert {k: v for k, v in a.items() if k not in ("time", "steps_per_s")} == \
            {k: v for k, v in b.items() if k not in ("time", "steps_per_s")}
    assert isinstance(every[0].last_metrics["loss"], float)


def _triplane(seed: int = 0):
    from asdcli.conditioning import TextEmbeddings
    from asdcli.generators.triplane import TriplaneConfig, TriplaneGenerator

    torch.manual_seed(seed)
    gen = TriplaneGenerator(TriplaneConfig(text_dim=16, plane_res=8, plane_channels=4, hidden=16, width=32))
    with torch.no_grad():  # far from the initial near-sphere, so every term of the gradient matters
        for p in gen.parameters():
            p.normal_(0, 0.5)
    return gen, TextEmbeddings(torch.randn(2, 5, 16), torch.randn(2, 16))


def test_triplane_written_out_gradient_matches_autograd():
    """query_with_grad against autograd: values, colours, d sdf / d x, and the eikonal loss's parameter
    gradients (autograd's double backward) to float32 rounding."""
    gen, text = _triplane()
    state = gen(text)
    points = torch.rand(2, 3000, 3) * 2 - 1
    points[0, :4] = torch.tensor([[1.0, 1, 1], [-1, -1, -1], [1, -1, 0.25], [0, 0, 0]])  # box corners, texel edge
    leaf = points.clone().requires_grad_(True)
    ref = gen.query(state, leaf)
    ref_grad = torch.autograd.grad(ref.value, leaf, torch.ones_like(ref.value), create_graph=True)[0]
    out, grad = gen.query_with_grad(state, points)
    scale = ref_grad.abs().max().item()
    assert (out.value - ref.value).abs().max() <= 1e-4
    assert (out.features - ref.features).abs().max() <= 1e-4
    assert (grad - ref_grad).abs().max() <= 1e-5 * scale
    params = [p for name, p in gen.named_parameters() if not name.startswith("feature_head")]  # sdf's own
    g_ref = torch.autograd.grad(((ref_grad.norm(dim=-1) - 1) ** 2).mean(), params, retain_graph=True)
    g_new = torch.autograd.grad(((grad.norm(dim=-1) - 1) ** 2).mean(), params)
    for a, b in zip(g_ref, g_new, strict=True):
        assert (a - b).abs().max() <= 1e-4 * max(a.abs().max().item(), 1e-3)


def test_training_render_is_unchanged_by_the_written_out_gradient(monkeypatch):
    """The renderer's training path (normals with a graph) through query_with_grad and through autograd:
    same images and same generator gradients of image + eikonal loss."""
    from types import SimpleNamespace

    from asdcli.generators.triplane import TriplaneGenerator
    from asdcli.losses import regularizers as reg
    from asdcli.render.background import build_background
    from asdcli.render.cameras import orbit_cameras
    from asdcli.render.volume import render

    gen, text = _triplane(1)
    cfg = SimpleNamespace(radius=1.0, samples_per_ray=16, importance_samples=0, inv_std=30.0, shading="lambertian",
                          light="random", background="random", background_color=(1.0, 1.0, 1.0),
                          background_random_prob=None)
    background = build_background(cfg, 16)
    cams = orbit_cameras(4, 20.0, 2.5, 50.0)

    def run():
        gen.zero_grad()
        out = render(gen, gen(text), cams, 8, 8, cfg, background, 2, torch.Generator().manual_seed(3))
        (out.rgb.square().sum() + reg.eikonal(out.sdf_grad)).backward()
        return out, [p.grad.clone() for p in gen.parameters()]

    fast, fast_grads = run()
    monkeypatch.delattr(TriplaneGenerator, "query_with_grad")
    slow, slow_grads = run()
    assert (fast.rgb - slow.rgb).abs().max() <= 1e-5
    assert (fast.opacity - slow.opacity).abs().max() <= 1e-5
    for a, b in zip(fast_grads, slow_grads, strict=True):
        assert (a - b).abs().max() <= 1e-4 * max(b.abs().max().item(), 1e-3)


@pytest.mark.parametrize("hidden_layers", [0, 1, 2])
def test_channel_major_mlp_gradient_matches_autograd(hidden_layers):
    from asdcli.generators.mlp import VanillaMLP, mlp_channel_major

    torch.manual_seed(hidden_layers)
    mlp = VanillaMLP(6, 16, 1, n_hidden_layers=hidden_layers, bias=True)
    x = torch.randn(2, 6, 500, requires_grad=True)
    value, grad = mlp_channel_major(mlp, x, input_grad=True)
    ref = mlp(x.transpose(1, 2)).transpose(1, 2)
    ref_grad = torch.autograd.grad(ref.sum(), x)[0]
    assert (value - ref).abs().max() <= 1e-5 and (grad - ref_grad).abs().max() <= 1e-5


def test_busy_sampler_counts_other_processes_not_itself():
    """A child spinning on one core reads as (at least half) a busy core; this process's own spin does not count."""
    import subprocess
    import sys
    import time

    from asdcli.threads import BusySampler

    spinner = subprocess.Popen([sys.executable, "-c", "import time\nt = time.time()\nwhile time.time() - t < 3: pass"])
    try:
        time.sleep(0.3)  # the child is up and spinning
        sampler = BusySampler()
        time.sleep(0.6)
        others = sampler.others()
    finally:
        spinner.kill()
        spinner.wait()
    assert others is not None and others >= 0.5
    sampler = BusySampler()
    t = time.process_time()
    while time.process_time() - t < 0.6:  # this process busy on one core
        pass
    own_busy = sampler.others()
    assert own_busy is not None and own_busy <= others + 0.5
