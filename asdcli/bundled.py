"""The ShapesWorld models shipped inside the package (asdcli/assets/shapes/): where they are, and a one-line
error saying how to (re)build one that is missing.

  prior/      pixel-space text-to-image prior, diffusers layout (unet/, text_encoder/, tokenizer/, scheduler/)
  mv_prior/   pixel-space 4-view camera-conditioned prior, MVDream path (unet/, text_encoder/, tokenizer/,
              scheduler/)
  clip/       CLIP for `asd eval`, transformers layout (config.json, model.safetensors, tokenizer, preprocessor)
  generator/  an `asd train` run directory (recipe.yaml + checkpoints/step_N/generator.safetensors)

Recipes spell the priors and the CLIP `bundled:shapes-prior`, `bundled:shapes-mv-prior` and `bundled:shapes-clip`
(`resolve_bundled`).
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from asdcli.errors import UserError

PREFIX = "bundled:"
PRIOR_FIX = ("rebuild it with `python -m asdcli.shapes train-prior --out RUN` then `python -m asdcli.shapes "
             "export-prior --from RUN --to {path}`")
MV_PRIOR_FIX = ("rebuild it with `python -m asdcli.shapes train-prior-mv --out RUN` then `python -m asdcli.shapes "
                "export-prior-mv --from RUN --to {path}`")
CLIP_FIX = ("rebuild it with `python -m asdcli.shapes train-clip --out RUN` then `python -m asdcli.shapes "
            "export-clip --from RUN --to {path}`")
GENERATOR_FIX = ("train one with `asd train recipes/shapes_asd.yaml --out RUN` and copy RUN/recipe.yaml and "
                 "RUN/checkpoints/ into {path}, or pass --checkpoint RUN")


def assets_dir() -> Path:
    """asdcli/assets/shapes inside the installed package (may not exist in a bare checkout)."""
    return Path(str(files("asdcli") / "assets" / "shapes"))


def _require(path: Path, needs: tuple[str, ...], what: str, fix: str) -> Path:
    missing = [n for n in needs if not (path / n).exists()]
    if missing:
        detail = "is missing" if not path.is_dir() else f"lacks {', '.join(missing)}"
        raise UserError(f"the bundled ShapesWorld {what} at {path} {detail}; {fix.format(path=path)}")
    return path


def bundled_prior() -> Path:
    """The bundled prior folder (load with StableDiffusionPrior, model = this path)."""
    return _require(assets_dir() / "prior", ("unet/config.json", "text_encoder/config.json", "tokenizer",
                                             "scheduler/scheduler_config.json"), "prior", PRIOR_FIX)


def bundled_mv_prior() -> Path:
    """The bundled 4-view prior folder (load with MVDreamPrior, model = text_model = this path)."""
    return _require(assets_dir() / "mv_prior", ("unet/config.json", "text_encoder/config.json", "tokenizer",
                                                "scheduler/scheduler_config.json"), "4-view prior", MV_PRIOR_FIX)


def bundled_clip() -> Path:
    """The bundled CLIP folder (load with asdcli.evaluate.ClipScorer)."""
    return _require(assets_dir() / "clip", ("config.json", "model.safetensors", "preprocessor_config.json"),
                    "CLIP model", CLIP_FIX)


def bundled_checkpoint() -> Path:
    """The bundled generator run directory (recipe.yaml + at least one complete checkpoint)."""
    run = _require(assets_dir() / "generator", ("recipe.yaml", "checkpoints"), "generator", GENERATOR_FIX)
    ckpts = run / "checkpoints"
    if not any((d / "generator.safetensors").is_file() for d in ckpts.iterdir() if d.is_dir()):
        raise UserError(f"the bundled ShapesWorld generator at {run} holds no checkpoint with "
                        f"generator.safetensors; {GENERATOR_FIX.format(path=run)}")
    return run


BUNDLED = {"shapes-prior": bundled_prior, "shapes-mv-prior": bundled_mv_prior, "shapes-clip": bundled_clip,
           "shapes-generator": bundled_checkpoint}


def resolve_bundled(model: str) -> Path | None:
    """`bundled:NAME` → the asset folder (UserError if it is missing or NAME is unknown); anything else → None,
    so callers fall through to folders and hub ids."""
    if not isinstance(model, str) or not model.startswith(PREFIX):
        return None
    name = model[len(PREFIX):]
    if name not in BUNDLED:
        raise UserError(f"unknown bundled model {model!r}; choose one of "
                        f"{', '.join(PREFIX + n for n in BUNDLED)}")
    return BUNDLED[name]()
