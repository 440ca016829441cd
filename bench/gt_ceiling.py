"""The generator's ceiling on ShapesWorld: the same recipe, but every render supervised by the prompt's
ground-truth render from the same camera instead of by the prior.

Why: `asd eval`'s `shape_r@1` and colour error of an ASD-trained generator mix two limits, what the prior's
score tells the generator and what the generator can represent. Fitting the ground truth directly (same
generator, cameras, renderer, steps and optimiser; no prior in the loop) measures the second alone, so a
target that the fit misses cannot be reached by any distillation loss either.

    python bench/gt_ceiling.py recipes/shapes_generator.yaml --out RUN [key=value ...] [--steps N]
    asd eval --checkpoint RUN --prompts FILE --json out.json

The run is an ordinary asd run (checkpoints, --resume, validation media), so `asd eval` and `asd generate`
read it. Loss: MSE of the foreground colour (rendered over black, as the ground truth is) + MSE of the
opacity against the ground-truth coverage, plus the recipe's regularisers (eikonal keeps the SDF an SDF).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from asdcli.engine.steps import MicroStep, StepRunner  # noqa: E402


class _Black(torch.nn.Module):
    """A background of zeros [B, HW, 3], so the render's colour is its premultiplied foreground."""

    def forward(self, dirs, training, gen, text=None):
        return torch.zeros_like(dirs)


class GroundTruthStep(StepRunner):
    """One micro-step of the ground-truth fit: the same prompts and cameras as distillation draws."""

    supersample = 2  # anti-aliased coverage, as the prior's training renders

    def __call__(self, prompts: list[str], step: int, gen: torch.Generator) -> MicroStep:
        from asdcli.losses.base import LossOutput
        from asdcli.render.cameras import sample_training_cameras
        from asdcli.render.volume import render
        from asdcli.shapes.gt_render import render_scenes

        cfg, parts = self.cfg, self.parts
        P, V = cfg.render.prompts_per_step, cfg.render.views_per_prompt
        batch = [prompts[i] for i in torch.randint(len(prompts), (P,), generator=gen).tolist()]
        cams = sample_training_cameras(cfg.render.camera, P, V, gen).to(self.device)
        res = int(round(cfg.render.resolution.at(step, cfg.train.steps)))
        text = self.text(batch).to(self.device)
        state = parts.generator(text, None)
        out = render(parts.generator, state, cams, res, res, cfg.render, _Black(), P, gen, need_normals=True)
        with torch.no_grad():
            gt = render_scenes(batch, cams, res, res, shading=cfg.render.shading, background=(0.0, 0.0, 0.0),
                               supersample=self.supersample)
        rgb = torch.nn.functional.mse_loss(out.rgb.float(), gt.rgb)
        mask = torch.nn.functional.mse_loss(out.opacity.float().squeeze(-1), gt.alpha)
        fit = LossOutput(rgb + mask, {"gt_rgb": float(rgb.detach()), "gt_mask": float(mask.detach())})
        return self._total(fit, out, step, cfg.train.steps)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("recipe", type=Path)
    ap.add_argument("overrides", nargs="*", help="recipe overrides, key=value")
    ap.add_argument("--out", required=True)
    ap.add_argument("--steps", type=int)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--resume", action="store_true")
    args = ap.parse_intermixed_args()
    torch.set_num_threads(args.threads)

    from asdcli.commands import _flags, _prompts_of
    from asdcli.engine.trainer import Trainer
    from asdcli.recipe import load_recipe

    cfg = load_recipe(args.recipe, args.overrides, _flags(args.steps, args.out, None))
    prompts, val = _prompts_of(cfg)
    trainer = Trainer(cfg, prompts, val, resume=args.resume, quiet=False)
    trainer.steps = GroundTruthStep(cfg, trainer.parts, trainer.text, trainer.device)
    result = trainer.fit()
    print(f"done: {result.step} steps at {result.steps_per_s:.2f} steps/s → {result.run_dir}")


if __name__ == "__main__":
    main()
