"""Left-first captions for "next to" pairs (train-prior's pair_order): the rule agrees with what the renderer
shows, the prior's training captions follow it, and the SD path words its view captions the same way for a model
whose export records it."""

from __future__ import annotations

import pytest
import torch

from asdcli.shapes.world.grammar import name_left_first

PAIR = "a red cube next to a blue sphere"
SWAPPED = "a blue sphere next to a red cube"


@pytest.mark.parametrize(("azimuth", "expected"), [
    (0.0, PAIR), (89.0, PAIR), (90.0, PAIR), (-90.0, PAIR), (270.0, PAIR), (-300.0, PAIR),
    (91.0, SWAPPED), (180.0, SWAPPED), (-180.0, SWAPPED), (-135.0, SWAPPED), (225.0, SWAPPED)])
def test_name_left_first_swaps_a_next_to_pair_behind_it(azimuth, expected):
    assert name_left_first(PAIR, azimuth) == expected


@pytest.mark.parametrize("prompt", ["a red cube on top of a blue sphere", "a large red cube", "a corgi"])
def test_name_left_first_leaves_other_prompts_alone(prompt):
    assert name_left_first(prompt, 180.0) == prompt


def _centroid_x(rgb: torch.Tensor, channel: int) -> float:
    """Mean column of the pixels where `channel` dominates (rgb [H, W, 3])."""
    others = [c for c in range(3) if c != channel]
    mask = (rgb[..., channel] > 0.4) & (rgb[..., others].max(-1).values < 0.35)
    assert mask.sum() > 3
    return float(mask.nonzero()[:, 1].float().mean())


def test_the_first_named_object_is_on_the_left_of_the_render_from_every_side():
    from asdcli.render.cameras import cameras_from_angles
    from asdcli.shapes.gt_render import render_scenes

    azimuths = torch.tensor([-170.0, -120.0, -60.0, -20.0, 20.0, 60.0, 120.0, 170.0])
    n = len(azimuths)
    cams = cameras_from_angles(torch.full((n,), 15.0), azimuths, torch.full((n,), 3.0), torch.full((n,), 50.0))
    out = render_scenes([PAIR], cams, 48, 48, shading="albedo")
    for rgb, az in zip(out.rgb, azimuths.tolist(), strict=True):
        red_first = name_left_first(PAIR, az).startswith("a red")
        red_x, blue_x = _centroid_x(rgb, 0), _centroid_x(rgb, 2)
        assert (red_x < blue_x) == red_first, az


def _pool(pair_order: str):
    from asdcli.shapes.prior_data import PriorData
    from asdcli.shapes.train_prior import PriorTrainConfig

    cfg = PriorTrainConfig(pool=64, batch=256, image_size=8, supersample=1, dropout=0.0, single_prob=0.0,
                           next_to_prob=1.0, pair_order=pair_order)
    return PriorData(cfg, torch.Generator().manual_seed(0))


def test_left_first_training_captions_swap_exactly_the_pairs_seen_from_behind():
    from asdcli.priors.perp_neg import VIEW_SUFFIXES

    data = _pool("left_first")
    behind = {i for i, a in enumerate(data.azimuth.tolist()) if abs((a + 180) % 360 - 180) > 90}
    assert 10 < len(behind) < 54  # both sides of the pairs are in the pool
    gen = torch.Generator().manual_seed(1)
    state = gen.get_state()
    _, captions = data.batch(gen)
    idx = torch.randint(data.cfg.pool, (data.cfg.batch,), generator=torch.Generator().set_state(state))
    for caption, slot in zip(captions, idx.tolist(), strict=True):
        text = next(caption[: -len(s)] for s in VIEW_SUFFIXES if caption.endswith(s))
        prompt = data.prompts[int(data.prompt_id[slot])]
        a, b = prompt.split(" next to ")
        assert text == (f"{b} next to {a}" if slot in behind else prompt)

    data.cfg.pair_order = "prompt"  # the same pool captioned as written
    _, plain = data.batch(torch.Generator().set_state(state))
    assert all(c.split(",")[0] in data.prompts for c in plain) and plain != captions


def test_pair_order_is_checked_and_survives_resume(tmp_path, capsys):
    from asdcli.shapes.__main__ import main
    from asdcli.shapes.prior_data import PriorData
    from asdcli.shapes.runs import load_checkpoint
    from asdcli.shapes.train_prior import PriorTrainConfig, train_prior

    assert main(["train-prior", "--out", str(tmp_path / "x"), "--config", '{"pair_order": "left"}']) == 2
    assert capsys.readouterr().err.strip() == "error: pair_order: expected one of prompt, left_first, got 'left'"
    assert not (tmp_path / "x").exists()

    cfg = PriorTrainConfig(pool=8, fresh=2, batch=4, channels=(16, 32), text_dim=16, text_layers=1, image_size=16,
                           supersample=1, steps=2, warmup=1, pair_order="left_first")
    train_prior(tmp_path / "a", cfg, log=lambda *a: None)
    tensors, _ = load_checkpoint(tmp_path / "a")
    resumed = PriorData(cfg, None)
    resumed.load_state(tensors)
    assert torch.equal(resumed.azimuth, tensors["pool.azimuth"])
    del tensors["pool.azimuth"]  # a checkpoint written before pool azimuths existed
    from asdcli.errors import UserError

    with pytest.raises(UserError, match="predates pool azimuths"):
        PriorData(cfg, None).load_state(tensors)


def test_sd_path_words_view_captions_as_the_model_was_trained(tmp_path):
    from asdcli.shapes.prior import ShapesWorldPrior, ShapesWorldPriorConfig
    from asdcli.shapes.train_prior import PriorTrainConfig, export_prior, train_prior

    small = dict(pool=8, fresh=2, batch=4, channels=(16, 32), text_dim=16, text_layers=1, image_size=16,
                 supersample=1, steps=1, warmup=1)
    azimuth, elevation = torch.tensor([10.0, 170.0, 100.0]), torch.tensor([10.0, 10.0, 10.0])
    prompts = [PAIR, PAIR, "a red cube on top of a blue sphere"]
    expected = {"left_first": [f"{PAIR}, front view", f"{SWAPPED}, back view",
                               "a red cube on top of a blue sphere, side view"],
                "prompt": [f"{PAIR}, front view", f"{PAIR}, back view",
                           "a red cube on top of a blue sphere, side view"]}
    for order, texts in expected.items():
        train_prior(tmp_path / order, PriorTrainConfig(**small, pair_order=order), log=lambda *a: None)
        folder = export_prior(tmp_path / order, tmp_path / f"{order}_export")
        prior = ShapesWorldPrior(ShapesWorldPriorConfig(model=str(folder)))
        assert prior.pair_order == order
        cond = prior.conditioning(prompts, elevation, azimuth, torch.eye(4).repeat(3, 1, 1))
        assert torch.equal(cond.cond, prior.encode_text(texts).tokens)
