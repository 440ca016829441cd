"""The paper recipes in recipes/ and the bundled `asd distill` recipe: they validate, their dry runs report the
paper's generator sizes without loading a prior, and a shrunken copy of each trains 2 steps on the CPU."""

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from asdcli.cli import app
from asdcli.recipe import load_recipe

ROOT = Path(__file__).resolve().parents[1]
RECIPES = sorted(p for p in (ROOT / "recipes").glob("*.yaml") if not p.name.startswith("_"))
PAPER = ["sd_hyper_ingp_mg15", "sd_3dconv_df415", "sd_3dconv_at2520", "sd_3dconv_cp100k", "mvdream_triplane",
         "sd_nerf", "mvdream_nerf"]
# Inline prompts instead of the paper's libraries (shipped in the package, tested in test_prompt_libraries.py).
NO_LIBRARY = ["prompts.library=null", "prompts.items=[a red cube, a blue sphere]"]
runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_every_paper_recipe_is_present():
    assert {p.stem for p in RECIPES} >= set(PAPER)


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_recipe_validates(path):
    cfg = load_recipe(path)
    assert cfg.name == path.stem
    if path.stem in PAPER:  # the paper's t window over the whole run, at any length
        for steps in (cfg.train.steps, 7):
            t_min, t_max = cfg.loss.t_min, cfg.loss.t_max
            assert (t_min.at(0, steps), t_min.at(steps, steps)) == (0.5, 0.02)
            assert (t_max.at(0, steps), t_max.at(steps, steps)) == (0.98, 0.5)


@pytest.mark.parametrize("name, target, parts", [
    ("sd_hyper_ingp_mg15", 13.3e6, ("generator", "background")),  # the paper counts the text env map too
    ("sd_3dconv_df415", 88.7e6, ("generator",)),
    ("sd_3dconv_cp100k", 144.8e6, ("generator",)),
    ("mvdream_triplane", 120.6e6, ("generator",)),
])
def test_dry_run_reports_paper_sizes_without_a_prior(name, target, parts, monkeypatch):
    def no_prior(*args, **kwargs):
        raise AssertionError("a dry run must not build the prior")

    monkeypatch.setattr("asdcli.priors.stable_diffusion.StableDiffusionPrior.__init__", no_prior)
    res = invoke("train", ROOT / "recipes" / f"{name}.yaml", "--dry-run", "--json", *NO_LIBRARY)
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)
    n = sum(report["parameters"][p] for p in parts)
    assert abs(n - target) / target < 0.05, (name, report["parameters"])
    assert report["num_prompts"] == 2 and report["recipe"]["name"] == name


# ------------------------------------------------------------------------------------- tiny 2-step runs
TINY_GRID = "{n_levels: 2, n_features_per_level: 2, log2_hashmap_size: 8, base_resolution: 4, per_level_scale: 2.0}"
TINY_SD = "prior={kind: tiny-random, seed: 0, perp_neg: true, front_threshold: 30, back_threshold: 30}"
SHRINK = ["render.resolution=16", "render.samples_per_ray=16", "render.prompts_per_step=1", "train.val_views=2",
          "prompts.num_val=1", "train.device=cpu", *NO_LIBRARY]
CONV3D = ["generator.text_dim=32", "generator.z_dim=8", "generator.w_dim=16", "generator.img_resolution=8",
          "generator.img_channels=4", "generator.channel_base=64", "generator.channel_max=8",
          "generator.bias_volume_max_res=8", "generator.mlp_hidden=8", "render.importance_samples=8"]
NERF = [f"generator.grid={TINY_GRID}", "generator.mlp_hidden=8"]
TINY = {  # recipe → overrides that shrink it to a CPU toy (MVDREAM marks the tiny MVDream prior, built below)
    "sd_hyper_ingp_mg15": [TINY_SD, "generator.text_dim=32", f"generator.grid={TINY_GRID}",
                           "generator.hyper_hidden=8", "generator.mlp_hidden=8", "render.importance_samples=8"],
    "sd_3dconv_df415": [TINY_SD, *CONV3D],
    "sd_3dconv_at2520": [TINY_SD, *CONV3D],
    "sd_3dconv_cp100k": [TINY_SD, *CONV3D],
    "mvdream_triplane": ["MVDREAM", "generator.text_dim=32", "generator.inner_dim=16", "generator.num_layers=1",
                         "generator.num_heads=2", "generator.low_res=4", "generator.high_res=8",
                         "generator.triplane_dim=4", "generator.mlp_hidden=8", "render.importance_samples=8"],
    "sd_nerf": [TINY_SD, *NERF],
    "mvdream_nerf": ["MVDREAM", *NERF],
    "tiny_cpu": [],
    "shapes_asd": [TINY_SD, "generator.text_dim=32", "prompts.library=shapesworld:16"],
    "shapes_sds": [TINY_SD, "generator.text_dim=32", "prompts.library=shapesworld:16"],
    "shapes_csd": [TINY_SD, "generator.text_dim=32", "prompts.library=shapesworld:16"],
    "shapes_vsd": [TINY_SD, "generator.text_dim=32", "prompts.library=shapesworld:16"],
    "shapes_generator": [TINY_SD, "generator.text_dim=32", "prompts.library=shapesworld:16"],
    "shapes_mv_triplane": ["MVDREAM", "generator.text_dim=32", "generator.inner_dim=16", "generator.num_layers=1",
                           "generator.num_heads=2", "generator.low_res=4", "generator.high_res=8",
                           "generator.triplane_dim=4", "generator.mlp_hidden=8", "prompts.library=shapesworld:16"],
}


@pytest.fixture(scope="module")
def tiny_mvdream(tmp_path_factory):
    """A tiny MVDream prior saved as a diffusers folder (camera-conditioned 4-view UNet) + a tiny SD folder for
    its text encoder and VAE: the `prior=` override that stands in for sd-v2.1-base-4view."""
    import torch

    from asdcli.priors.mvdream_unet import build_mvdream_unet, mvdream_unet_config
    from asdcli.priors.tiny import save_tiny_sd_folder

    root = tmp_path_factory.mktemp("mvdream")
    text = save_tiny_sd_folder(root / "text", seed=0, with_vae=True, text_dim=32)  # VAE: 16² → 4×8×8
    torch.manual_seed(0)
    unet = build_mvdream_unet(mvdream_unet_config(block_out_channels=(32, 32), layers_per_block=1,
                                                  attention=(True, False), head_channels=16,
                                                  cross_attention_dim=32, sample_size=8), num_frames=4)
    unet.save_pretrained(str(root / "mv" / "unet"))
    prior = {"kind": "mvdream", "model": str(root / "mv"), "text_model": str(text), "num_views": 4,
             "image_size": 16, "dtype": "float32", "negative_prompt": "blurry"}
    return "prior=" + json.dumps(prior)


def test_every_recipe_has_a_tiny_variant():
    assert {p.stem for p in RECIPES} <= set(TINY)


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_tiny_variant_trains_two_steps(path, tmp_path, request):
    overrides = [request.getfixturevalue("tiny_mvdream") if o == "MVDREAM" else o for o in TINY[path.stem]]
    out = tmp_path / "run"
    res = invoke("train", path, "--steps", 2, "--out", out, "--quiet", *SHRINK, *overrides)
    assert res.exit_code == 0, res.output
    assert (out / "checkpoints" / "last" / "generator.safetensors").exists()
    assert json.loads((out / "meta.json").read_text())["step"] == 2
    recipe = load_recipe(path)
    saved = load_recipe(out / "recipe.yaml")
    # what the overrides did not touch is the recipe's: the loss schedules, optimiser and views per prompt
    assert saved.loss == recipe.loss and saved.render.views_per_prompt == recipe.render.views_per_prompt
    assert (saved.train.optimizer, saved.train.betas, saved.train.grad_accum) == \
        (recipe.train.optimizer, recipe.train.betas, recipe.train.grad_accum)


def test_default_distill_recipe_runs_on_cpu(tmp_path):
    from asdcli.commands import default_distill_recipe

    cfg = load_recipe(default_distill_recipe())
    assert (cfg.prior.kind, cfg.prior.model, cfg.generator.kind) == ("shapesworld", "bundled:shapes-prior", "nerf")
    assert cfg.train.steps >= 100
    out = tmp_path / "distill"
    res = invoke("distill", "a red cube", "--steps", 2, "--run-dir", out, "--resolution", 32, "--quiet")
    assert res.exit_code == 0, res.output
    assert (out / "checkpoints" / "last" / "generator.safetensors").exists()
    assert (out / "a_red_cube.glb").stat().st_size > 0  # the distilled mesh
    assert load_recipe(out / "recipe.yaml").prompts.items == ("a red cube",)


def test_distill_with_a_paper_recipe(tmp_path):
    out = tmp_path / "sd_nerf"
    res = invoke("distill", "a blue sphere", "--recipe", ROOT / "recipes" / "sd_nerf.yaml", "--steps", 2,
                 "--run-dir", out, "--resolution", 16, "--quiet", *SHRINK[:-2], *TINY["sd_nerf"])
    assert res.exit_code == 0, res.output
    assert load_recipe(out / "recipe.yaml").prompts.items == ("a blue sphere",)


def test_package_data_ships_the_distill_recipe():
    text = (ROOT / "pyproject.toml").read_text()
    assert 'asdcli = ["assets/**/*", ' in text
    assert (ROOT / "asdcli" / "assets" / "recipes" / "distill.yaml").is_file()
