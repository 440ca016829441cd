"""The prior's training data: a replay pool of ground-truth renders of ShapesWorld train prompts, with their
view-dependent, left-first captions (see `train_prior` for the whole recipe)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

from asdcli.config import CameraConfig
from asdcli.errors import UserError
from asdcli.priors.perp_neg import view_directions, view_prompt
from asdcli.render.cameras import CameraBatch, sample_training_cameras
from asdcli.shapes.gt_render import render_scenes
from asdcli.shapes.world.grammar import caption_as_seen, splits

if TYPE_CHECKING:
    from asdcli.shapes.train_prior import PriorTrainConfig


def split_singles_pairs(split_seed: int, split: str = "train") -> tuple[list[str], list[str]]:
    """(single-object prompts, pair prompts) of a grammar split, in the split's seeded order."""
    prompts = splits(split_seed)[split]
    singles = [p for p in prompts if " on top of " not in p and " next to " not in p]
    return singles, [p for p in prompts if " on top of " in p or " next to " in p]


def _where_camera(pick: Tensor, a, b):
    """CameraBatch with camera i from `a` where pick[i] ([B] bool), else from `b`."""
    keys = ("c2w", "fovy", "elevation", "azimuth", "distance")
    return CameraBatch(*(torch.where(pick.view(-1, *[1] * (getattr(a, k).dim() - 1)), getattr(a, k), getattr(b, k))
                         for k in keys))


class PriorData:
    """Replay pool of premultiplied renders: rgb [N, 3, H, W], alpha [N, 1, H, W] (fp16), prompt id [N], view [N],
    azimuth [N] (degrees: which side of a "next to" pair is on the image's left).

    With `gen` the pool is rendered now; without, it is left empty for `load_state` (resuming)."""

    def __init__(self, cfg: PriorTrainConfig, gen: torch.Generator | None):
        self.cfg = cfg
        self.singles, self.pairs = split_singles_pairs(cfg.split_seed)
        self.prompts = self.singles + self.pairs
        next_to = torch.tensor([" next to " in p for p in self.pairs])
        # prompt ids of the two relations (ids index self.prompts: singles first)
        self.next_to_ids = next_to.nonzero().flatten() + len(self.singles)
        self.on_top_ids = (~next_to).nonzero().flatten() + len(self.singles)
        n, s = cfg.pool, cfg.image_size
        self.rgb = torch.zeros(n, 3, s, s, dtype=torch.float16)
        self.alpha = torch.zeros(n, 1, s, s, dtype=torch.float16)
        self.prompt_id, self.view = torch.zeros(n, dtype=torch.long), torch.zeros(n, dtype=torch.long)
        self.azimuth = torch.zeros(n)
        for start in range(0, n if gen is not None else 0, 256):
            self._fill(torch.arange(start, min(n, start + 256)), gen)

    def _cameras(self, count: int, gen: torch.Generator, next_to: Tensor):
        """Training cameras, a cfg.overhead_prob share of them high; with cfg.front_back_prob, that share of the
        "next to" slots (`next_to` [count] bool) inside the front or back bucket instead."""
        cfg = self.cfg
        cams = sample_training_cameras(CameraConfig(), count, 1, gen)
        high = sample_training_cameras(CameraConfig(elevation=(45.0, 85.0)), count, 1, gen)
        cams = _where_camera(torch.rand(count, generator=gen) < cfg.overhead_prob, high, cams)
        if cfg.front_back_prob > 0:
            front = sample_training_cameras(CameraConfig(azimuth=(-cfg.front_threshold, cfg.front_threshold)),
                                            count, 1, gen)
            back = sample_training_cameras(CameraConfig(azimuth=(180.0 - cfg.back_threshold,
                                                                 180.0 + cfg.back_threshold)), count, 1, gen)
            front = _where_camera(torch.rand(count, generator=gen) < 0.5, back, front)
            cams = _where_camera(next_to & (torch.rand(count, generator=gen) < cfg.front_back_prob), front, cams)
        return cams

    def _fill(self, slots: Tensor, gen: torch.Generator) -> None:
        cfg, count = self.cfg, len(slots)
        single = torch.rand(count, generator=gen) < cfg.single_prob
        i_single = torch.randint(len(self.singles), (count,), generator=gen)
        i_pair = self._pair_ids(count, gen)
        ids = torch.where(single, i_single, i_pair)
        cams = self._cameras(count, gen, torch.isin(ids, self.next_to_ids))
        out = render_scenes([self.prompts[i] for i in ids.tolist()], cams, cfg.image_size, cfg.image_size,
                            shading=cfg.shading, background=(0.0, 0.0, 0.0), supersample=cfg.supersample)
        self.rgb[slots] = out.rgb.permute(0, 3, 1, 2).half()
        self.alpha[slots] = out.alpha[:, None].half()
        self.prompt_id[slots] = ids
        self.azimuth[slots] = cams.azimuth.float()
        self.view[slots] = view_directions(cams.elevation, cams.azimuth, cfg.front_threshold, cfg.back_threshold,
                                           cfg.overhead_threshold)

    def _pair_ids(self, count: int, gen: torch.Generator) -> Tensor:
        """[count] prompt ids of pairs: uniform over the split's pairs, or with cfg.next_to_prob "next to"."""
        share = self.cfg.next_to_prob
        if share is None:
            return torch.randint(len(self.pairs), (count,), generator=gen) + len(self.singles)
        pick = torch.rand(count, generator=gen) < share
        near = self.next_to_ids[torch.randint(len(self.next_to_ids), (count,), generator=gen)]
        on_top = self.on_top_ids[torch.randint(len(self.on_top_ids), (count,), generator=gen)]
        return torch.where(pick, near, on_top)

    def refresh(self, gen: torch.Generator) -> None:
        self._fill(torch.randperm(self.cfg.pool, generator=gen)[: self.cfg.fresh], gen)

    def batch(self, gen: torch.Generator) -> tuple[Tensor, list[str]]:
        """Images [B, 3, H, W] in [−1, 1] over fresh backgrounds and their captions (some dropped to "")."""
        cfg = self.cfg
        idx = torch.randint(cfg.pool, (cfg.batch,), generator=gen)
        white = torch.rand(cfg.batch, 1, 1, 1, generator=gen) < cfg.white_prob
        bg = torch.where(white, torch.ones(cfg.batch, 3, 1, 1), torch.rand(cfg.batch, 3, 1, 1, generator=gen))
        img = self.rgb[idx].float() + (1 - self.alpha[idx].float()) * bg
        drop = (torch.rand(cfg.batch, generator=gen) < cfg.dropout).tolist()
        rows = zip(drop, self.prompt_id[idx].tolist(), self.view[idx].tolist(), self.azimuth[idx].tolist(),
                   strict=True)
        captions = [cfg.negative_prompt if d else view_prompt(caption_as_seen(self.prompts[p], a, cfg.pair_order), v)
                    for d, p, v, a in rows]
        return img * 2 - 1, captions

    def state(self) -> dict[str, Tensor]:
        return {"pool.rgb": self.rgb, "pool.alpha": self.alpha, "pool.prompt_id": self.prompt_id,
                "pool.view": self.view, "pool.azimuth": self.azimuth}

    def load_state(self, tensors: dict[str, Tensor]) -> None:
        self.rgb, self.alpha = tensors["pool.rgb"].clone(), tensors["pool.alpha"].clone()
        self.prompt_id, self.view = tensors["pool.prompt_id"].clone(), tensors["pool.view"].clone()
        if "pool.azimuth" not in tensors and self.cfg.pair_order != "prompt":
            raise UserError("pair_order: this run's checkpoint predates pool azimuths; start a new run (init_from "
                            "this one) to train with left_first captions")
        self.azimuth = tensors.get("pool.azimuth", torch.zeros(len(self.prompt_id))).clone()
