"""Kind names → import paths, loaded on demand.

Importing this module imports nothing heavy: `build` and `config_class` import the component's module only
when a recipe names it, so `import asdcli` and `asd --help` never touch torch or CUDA. Adding a component is one
file plus one line here. Each class has a `Config` attribute: its frozen config dataclass.
"""

from __future__ import annotations

import importlib
from typing import Any

from asdcli.errors import ConfigError
from asdcli.suggest import did_you_mean

REGISTRY: dict[str, dict[str, str]] = {
    "prior": {
        "stable-diffusion": "asdcli.priors.stable_diffusion:StableDiffusionPrior",
        "tiny-random": "asdcli.priors.tiny:TinyRandomPrior",
        "mvdream": "asdcli.priors.mvdream:MVDreamPrior",
        "shapesworld": "asdcli.shapes.prior:ShapesWorldPrior",
    },
    "generator": {
        "triplane": "asdcli.generators.triplane:TriplaneGenerator",
        "hyper-ingp": "asdcli.generators.hyper_ingp:HyperINGP",
        "3dconv-net": "asdcli.generators.conv3d:Conv3DNet",
        "triplane-transformer": "asdcli.generators.triplane_transformer:TriplaneTransformer",
        "nerf": "asdcli.generators.nerf:NeRF",
    },
    "loss": {
        "asd": "asdcli.losses.asd:AsynchronousScoreDistillation",
        "sds": "asdcli.losses.sds:ScoreDistillationSampling",
        "csd": "asdcli.losses.csd:ClassifierScoreDistillation",
        "vsd": "asdcli.losses.vsd:VariationalScoreDistillation",
    },
}


# Files by which a prior folder written before the kind record (priors/base.KIND_FILE) shows the prior kind it
# needs: the ShapesWorld prior export has always written its training record. Data, so the core imports no kind.
PRIOR_FOLDER_MARKERS: dict[str, tuple[str, ...]] = {"shapesworld": ("shapesworld_prior.json",)}


def kinds(family: str) -> list[str]:
    return sorted(REGISTRY[family])


def resolve(family: str, kind: str, path: str) -> type:
    """The class registered as `kind` in `family`; `path` is the recipe key path for errors."""
    table = REGISTRY[family]
    if kind not in table:
        raise ConfigError(f"{path}: unknown {family} kind {kind!r}{did_you_mean(kind, table)}; "
                          f"allowed: {', '.join(sorted(table))}")
    module_name, _, attr = table[kind].partition(":")
    return getattr(importlib.import_module(module_name), attr)


def config_class(family: str, kind: str, path: str) -> type:
    return resolve(family, kind, path).Config


def build(family: str, cfg: Any, **kwargs: Any) -> Any:
    """Instantiate the component that `cfg.kind` names, passing its config and `kwargs`. A ValueError from its
    constructor (e.g. a width not divisible by the head count) is a config the user can fix: one ConfigError."""
    cls = resolve(family, cfg.kind, family)
    try:
        return cls(cfg, **kwargs)
    except ValueError as exc:
        raise ConfigError(f"{family}: {exc}; fix the {family}.* values of the recipe") from exc
