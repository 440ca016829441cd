"""Engine overhead and the four losses through the REAL training step (Trainer.train_step), side by side.

    python bench/bench_engine.py [--quick] [--threads 1] [--gpu] [--profile] [--out bench/results/engine.json]

For each prior size, in one interleaved run (order rotated every round, paired per-round ratios):
- "prior work": what any ASD step must do on the prior for a render of the step's shape [B, 3, r, r] — encode
  (VAE or resize, with gradient), ONE batched no-grad UNet call over ASD's rows (3B, plus Perp-Neg rows if the
  prior uses them) and the backward through encode to the render. DESIGN §9: step ≤ 1.2 × this.
- "no engine": the same prior work chained after the generator: text → generator → differentiable render →
  prior work → backward into the generator (+ the recipe's regularisers) → optimizer step, with fixed cameras and
  conditioning. Everything a step cannot avoid; step ÷ this is the engine's own overhead.
- the engine step for loss.kind = asd, sds, csd, vsd (four Trainers built from the same recipe and seed).

CPU priors (generator: the tiny recipe's triplane, 2 prompts × 1 view at 16², 24 samples/ray):
- tiny: the tiny recipe's own prior (0.27 M-parameter pixel UNet at 16²): the generator dominates the step;
- small: a 1.05 M-parameter pixel UNet at 32²;
- medium: a latent prior with a VAE in diffusers layout (4.1 M-parameter UNet on 32² latents of 64² images),
  loaded through StableDiffusionPrior like SD.
--gpu: recipes/sd_hyper_ingp_mg15.yaml on CUDA with an SD 2.1-base-shaped random prior (fp16, Perp-Neg as in
the recipe) and the paper's Hyper-iNGP (tcnn when importable).
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import common
import torch

LOSSES = ("asd", "sds", "csd", "vsd")
REGULARISERS = ("sparsity", "opaque", "eikonal", "orient", "z_variance")


def cpu_priors(tmp: Path) -> dict[str, list[str]]:
    """Recipe overrides of the tiny CPU recipe for each prior size."""
    from asdcli.priors.tiny import save_tiny_sd_folder

    folder = save_tiny_sd_folder(tmp / "latent-prior", with_vae=True, image_size=64, channels=(64, 128))
    return {"tiny": [], "small": ["prior.channels=[32,64]", "prior.image_size=32"],
            "medium": [f"prior={{kind: stable-diffusion, model: {folder}}}"]}


def loss_override(cfg, kind: str) -> str:
    """The recipe's loss section with another kind (ASD-only keys dropped), as one override."""
    from asdcli.config import to_plain

    plain = to_plain(cfg.loss)
    for key in ("shift_ratio", "shift_random"):
        plain.pop(key, None)
    return "loss=" + json.dumps({**plain, "kind": kind})


def build_trainers(overrides: list[str], tmp: Path, recipe: Path, kinds=LOSSES) -> dict:
    """One Trainer per loss kind, same recipe and seed (so the generators start identical)."""
    from asdcli.engine.trainer import Trainer

    base = common.tiny_config(overrides, recipe=recipe)
    trainers = {}
    for kind in kinds:
        extra = [] if kind == base.loss.kind else [loss_override(base, kind)]
        cfg = common.tiny_config([*overrides, *extra], run_dir=tmp / f"run-{kind}-{len(list(tmp.iterdir()))}",
                                 recipe=recipe)
        trainers[kind] = Trainer(cfg, list(_prompts(cfg)), [], quiet=True)
    return trainers


def _prompts(cfg) -> list[str]:
    from asdcli.prompts import recipe_prompts

    return recipe_prompts(cfg)[0]


def asd_prior_call(prior, z, cond, gen: torch.Generator) -> torch.Tensor:
    """ASD's prior work on detached z: noise at t, one batched no-grad call over ASD's rows → ε̂ of the
    conditional branch (used as the gradient, like ASD's direction, without its bookkeeping)."""
    from asdcli.losses.base import cfg_branches, predict_branches

    batch = z.shape[0]
    t = torch.randint(20, 981, (batch,), generator=gen).to(z.device)
    noise = torch.randn(tuple(z.shape), generator=gen).to(z.device)
    z_t = prior.add_noise(z, noise, t)
    branches = [*cfg_branches(z_t, t, cond), (z_t, t, cond.cond)]  # [cond, uncond, (negatives), shifted]
    return predict_branches(prior, branches, cond.cameras)[0]


def fixed_batch(trainer, gen: torch.Generator):
    """One step's prompts, cameras and conditioning, drawn once."""
    from asdcli.render.cameras import sample_training_cameras

    cfg, prior = trainer.cfg, trainer.parts.prior
    P, V = cfg.render.prompts_per_step, cfg.render.views_per_prompt
    prompts = [trainer.prompts[i % len(trainer.prompts)] for i in range(P)]
    cams = sample_training_cameras(cfg.render.camera, P, V, gen).to(trainer.device)
    per_image = [p for p in prompts for _ in range(V)]
    cond = prior.conditioning(per_image, cams.elevation, cams.azimuth, cams.c2w)
    res = int(round(cfg.render.resolution.at(0, cfg.train.steps)))
    return prompts, cams, cond, res


def prior_work_fn(trainer):
    """encode → one batched ASD prior call → backward through encode, for a render of the step's shape."""
    gen = torch.Generator().manual_seed(1)
    _, cams, cond, res = fixed_batch(trainer, gen)
    render = torch.rand(len(cams), 3, res, res, device=trainer.device, requires_grad=True)
    prior = trainer.parts.prior

    def step() -> None:
        z = prior.encode(render)
        z.backward(asd_prior_call(prior, z.detach(), cond, gen))
        render.grad = None

    return step


def regularisers(cfg, out) -> torch.Tensor | float:
    """The recipe's regulariser terms at step 0 (the same functions the engine sums)."""
    from asdcli.losses import regularizers as reg

    opacity = out.opacity.float()
    terms = {"sparsity": lambda: reg.sparsity(opacity), "opaque": lambda: reg.opaque(opacity),
             "eikonal": lambda: reg.eikonal(out.sdf_grad.float()),
             "orient": lambda: reg.orient(out.weights, out.sample_normals, out.ray_dirs,
                                          opacity.reshape(opacity.shape[0], -1)),
             "z_variance": lambda: reg.z_variance(out.z_variance.float(), opacity)}
    total = 0.0
    for name, fn in terms.items():
        weight = getattr(cfg.loss.weights, name).at(0, cfg.train.steps)
        if weight > 0:
            total = total + weight * fn()
    return total


def no_engine_fn(trainer):
    """Generator → render → prior work → backward into the generator → optimizer step, nothing else: fixed
    prompts, cameras and conditioning, normals only when a regulariser or Lambertian shading reads them."""
    from asdcli.render.volume import render

    cfg, parts, device = trainer.cfg, trainer.parts, trainer.device
    gen = torch.Generator().manual_seed(2)
    prompts, cams, cond, res = fixed_batch(trainer, gen)
    w = cfg.loss.weights
    normals = (w.eikonal.at(0, cfg.train.steps) > 0 or w.orient.at(0, cfg.train.steps) > 0
               or cfg.render.shading == "lambertian")
    noise = None
    if parts.generator.noise_dim:
        noise = torch.randn(len(prompts), parts.generator.noise_dim, generator=gen).to(device)

    def step() -> None:
        trainer.optimizer.zero_grad(set_to_none=True)
        with trainer.steps.autocast():
            text = parts.prior.encode_text(prompts).to(device)
            state = parts.generator(text, noise)
            out = render(parts.generator, state, cams, res, res, cfg.render, parts.background, len(prompts), gen,
                         need_normals=normals, text=text)
        z = parts.prior.encode(out.rgb.float().permute(0, 3, 1, 2))
        grad = asd_prior_call(parts.prior, z.detach(), cond, gen)
        loss = (z * grad).sum() / z.shape[0] + regularisers(cfg, out)
        loss.backward()
        trainer.optimizer.step()

    return step


def bench_prior(name: str, overrides: list[str], tmp: Path, recipe: Path, rounds: int, iters: int,
                device: str) -> dict:
    """Interleaved: prior work, no-engine step, and the engine step of each loss, on one prior."""
    trainers = build_trainers(overrides, tmp, recipe)
    asd = trainers["asd"]
    fns = {"prior work": prior_work_fn(asd), "no engine": no_engine_fn(asd),
           **{kind: tr.train_step for kind, tr in trainers.items()}}
    samples = common.interleaved(fns, rounds, iters, warmup=2, device=device)
    cfg, prior = asd.cfg, asd.parts.prior
    res = int(round(cfg.render.resolution.at(0, cfg.train.steps)))
    images = cfg.render.prompts_per_step * cfg.render.views_per_prompt
    z_shape = list(prior.encode(torch.rand(1, 3, res, res, device=asd.device)).shape[1:])
    pairs = {"asd/prior_work": ("asd", "prior work"), "asd/no_engine": ("asd", "no engine"),
             "no_engine/prior_work": ("no engine", "prior work"),
             **{f"{k}/asd": (k, "asd") for k in LOSSES if k != "asd"}}
    return {
        "prior": name, "overrides": overrides, "unet_params": sum(p.numel() for p in prior.unet.parameters()),
        "vae": getattr(prior, "vae", None) is not None, "prior_image_size": prior.image_size,
        "z_shape": z_shape, "render": f"{images}x3x{res}x{res}", "samples_per_ray": cfg.render.samples_per_ray,
        "generator_params": sum(p.numel() for p in asd.parts.generator.parameters()),
        **common.summarise(samples, device, pairs), "samples_s": samples,
    }


def profile_asd(overrides: list[str], tmp: Path, recipe: Path, steps: int = 10) -> str:
    """cProfile of `steps` ASD engine steps (top functions by cumulative time), for finding engine overhead."""
    import cProfile
    import io
    import pstats

    trainer = build_trainers(overrides, tmp, recipe, kinds=("asd",))["asd"]
    for _ in range(2):
        trainer.train_step()
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(steps):
        trainer.train_step()
    prof.disable()
    buf = io.StringIO()
    pstats.Stats(prof, stream=buf).sort_stats("cumulative").print_stats(r"asdcli", 30)
    return buf.getvalue()


def report(rows: list[dict]) -> list[str]:
    clock = "process CPU time" if rows[0]["clock"] == "cpu" else "wall time"
    t1 = common.table(
        f"engine overhead: the ASD Trainer.train_step vs its prior work alone (target step/prior <= 1.2); "
        f"ms and ratios on {clock}, (wall) = the same ratio on wall time",
        ["prior", "UNet params", "render -> z", "prior work ms", "no-engine ms", "ASD step ms", "step/prior",
         "(wall)", "step/no-engine", "(wall)"],
        [[r["prior"], r["unet_params"], f"{r['render']} -> {'x'.join(map(str, r['z_shape']))}",
          r["ms"]["prior work"], r["ms"]["no engine"], r["ms"]["asd"], r["ratios"]["asd/prior_work"],
          r["ratios_wall"]["asd/prior_work"], r["ratios"]["asd/no_engine"], r["ratios_wall"]["asd/no_engine"]]
         for r in rows])
    t2 = common.table(
        "losses through the engine (same prior, generator and recipe; loss.kind override)",
        ["prior", "asd ms", "sds ms", "csd ms", "vsd ms", "vsd/asd", "(wall)", "sds/asd", "csd/asd"],
        [[r["prior"], *(r["ms"][k] for k in LOSSES), r["ratios"]["vsd/asd"], r["ratios_wall"]["vsd/asd"],
          r["ratios"]["sds/asd"], r["ratios"]["csd/asd"]] for r in rows])
    return [t1, t2]


def main(argv: list[str] | None = None) -> dict:
    ap = common.parser(__doc__.splitlines()[0], "engine")
    ap.add_argument("--profile", action="store_true", help="also print a cProfile of ASD engine steps per prior")
    args = ap.parse_args(argv)
    device = common.setup(args)
    rounds, iters = (3, 1) if args.quick else (7, 2)
    with tempfile.TemporaryDirectory(prefix="asd-bench-engine-") as name:
        tmp = Path(name)
        if args.gpu:
            import paper

            recipe = common.ROOT / "recipes" / "sd_hyper_ingp_mg15.yaml"
            folder = paper.write_random_sd(common.SCRATCH / "sd21-random")
            priors = {"sd2.1-shaped fp16": paper.paper_engine_overrides(folder)}
        else:
            recipe = common.TINY_RECIPE
            priors = cpu_priors(tmp)
            if args.quick:
                priors.pop("medium")
        rows, profiles = [], {}
        for prior_name, overrides in priors.items():
            rows.append(bench_prior(prior_name, overrides, tmp, recipe, rounds, iters, device))
            if args.profile:
                profiles[prior_name] = profile_asd(overrides, tmp, recipe)
                print(f"--- profile of ASD engine steps, prior {prior_name}\n{profiles[prior_name]}")
        tables = report(rows)
    result = {"recipe": str(recipe.relative_to(common.ROOT)), "rounds": rounds, "iters": iters, "priors": rows,
              "tables": tables, "profiles": profiles}
    common.write_result(args.out, "engine", args, result)
    return result


if __name__ == "__main__":
    main()
