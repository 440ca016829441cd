"""The ShapesWorld 4-view prior (asdcli.shapes.train_prior_mv): training samples follow MVDream's camera layout,
the trainer checkpoints and resumes exactly, and the export is a pixel-space prior that MVDreamPrior loads."""

import json
import math

import pytest
import torch

from asdcli.shapes.train_prior_mv import (
    MVPriorData,
    MVPriorTrainConfig,
    build_mv_models,
    export_prior_mv,
    prior_config,
    train_prior_mv,
)

# 32² images as the bundled prior, but two narrow levels: one 2-step run costs a couple of seconds on one thread.
TINY = dict(steps=2, batch=2, image_size=32, channels=(16, 32), attention=(False, True), head_channels=8,
            norm_groups=8, text_dim=16, text_layers=1, pool=3, fresh=1, supersample=1, warmup=1,
            checkpoint_every=1)


def tiny_cfg(**kw) -> MVPriorTrainConfig:
    return MVPriorTrainConfig(**{**TINY, **kw})


def quiet(*args):
    pass


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A 2-step run (uninterrupted) of the tiny config."""
    out = tmp_path_factory.mktemp("mv") / "run"
    train_prior_mv(out, tiny_cfg(), log=quiet)
    return out


def _checkpoint(run):
    from safetensors.torch import load_file

    return load_file(str(run / "checkpoint.safetensors"))


def test_views_of_a_sample_share_the_scene_and_are_90_degrees_apart():
    from asdcli.conditioning import camera_embedding
    from asdcli.render.cameras import CameraBatch
    from asdcli.shapes.gt_render import render_scenes

    cfg = tiny_cfg(pool=2, image_size=16)
    data = MVPriorData(cfg, torch.Generator().manual_seed(3))
    pos = data.c2w[:, :, :3, 3]  # [N, 4, 3], z up
    azimuth = torch.rad2deg(torch.atan2(pos[..., 1], pos[..., 0]))
    steps = (azimuth.roll(-1, dims=1) - azimuth) % 360.0
    assert torch.allclose(steps, torch.full_like(steps, 90.0), atol=1e-3)
    dist, height = pos.norm(dim=-1), pos[..., 2]  # distance and elevation are shared by the 4 views
    assert torch.allclose(dist, dist[:, :1].expand_as(dist), rtol=1e-5)
    assert torch.allclose(height, height[:, :1].expand_as(height), atol=1e-5)
    for i in range(cfg.pool):  # every view is the GT render of the object's one scene from its camera
        n = cfg.views
        cams = CameraBatch(data.c2w[i], data.fovy[i], torch.zeros(n), azimuth[i], torch.ones(n))
        gt = render_scenes([data.prompts[int(data.prompt_id[i])]], cams, 16, 16, background=(0.0, 0.0, 0.0))
        assert torch.allclose(data.alpha[i, :, 0].float(), gt.alpha, atol=2e-3)
        assert torch.allclose(data.rgb[i].float(), gt.rgb.permute(0, 3, 1, 2), atol=2e-3)
    x0, cams, captions, idx = data.batch(torch.Generator().manual_seed(0))
    assert x0.shape == (cfg.batch * 4, 3, 16, 16) and len(captions) == cfg.batch
    assert torch.equal(cams, camera_embedding(data.c2w[idx].flatten(0, 1)))  # object-major rows
    for caption, i in zip(captions, idx.tolist(), strict=True):
        assert caption in (data.prompts[int(data.prompt_id[i])], cfg.negative_prompt)


def test_trainer_checkpoints_and_resumes_exactly(trained, tmp_path):
    out = tmp_path / "resumed"
    first = train_prior_mv(out, tiny_cfg(), log=quiet, stop_after=1)  # interrupted after step 1
    assert first.step == 1 and json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])["step"] == 1
    again = train_prior_mv(out, None, resume=True, log=quiet)
    assert again.step == 2
    a, b = _checkpoint(trained), _checkpoint(out)
    assert a.keys() == b.keys() and any(k.startswith("pool.") for k in a)
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_export_loads_through_mvdream_as_a_pixel_space_prior(trained, tmp_path):
    from asdcli.priors.mvdream import MVDreamPrior
    from asdcli.render.cameras import sample_training_cameras
    from asdcli.shapes.train_prior import build_scheduler

    folder = export_prior_mv(trained, tmp_path / "mv_prior", fp16=False)
    assert not (folder / "vae").exists()
    prior = MVDreamPrior(prior_config(folder))
    assert prior.vae is None and prior.image_size == 32 and prior.num_views == 4 and prior.shared_timestep
    assert torch.allclose(prior.alphas_cumprod, build_scheduler().alphas_cumprod.float())
    b = 2
    cams = sample_training_cameras(tiny_cfg().camera_config(), b, 4, torch.Generator().manual_seed(1))
    prompts = [p for p in ("a red cube", "a blue sphere on top of a green cone") for _ in range(4)]
    cond = prior.conditioning(prompts, cams.elevation, cams.azimuth, cams.c2w)
    z = prior.encode(torch.rand(4 * b, 3, 32, 32))
    t = torch.full((4 * b,), 400)
    eps = prior.predict_noise(z, t, cond.cond, cond.cameras)
    assert eps.shape == (4 * b, 3, 32, 32) and torch.isfinite(eps).all()
    # The loaded prior is the run's EMA: the same UNet call on the trainer's own models gives the same ε.
    _, text, unet = build_mv_models(tiny_cfg())
    ema = {k[4:]: v for k, v in _checkpoint(trained).items() if k.startswith("ema.")}
    torch.nn.ModuleDict({"unet": unet, "text": text}).load_state_dict(ema)
    with torch.no_grad():
        ref = unet(z, t, encoder_hidden_states=cond.cond, class_labels=cond.cameras).sample
    assert torch.allclose(eps, ref, atol=1e-5)
    moved = prior.predict_noise(z, t, cond.cond, cond.cameras.roll(1, dims=0))  # the cameras matter
    assert not torch.allclose(eps, moved, atol=1e-4)
    with pytest.raises(ValueError, match="num_views"):
        prior.predict_noise(z[:3], t[:3], cond.cond[:3], cond.cameras[:3])


def test_bundled_name_resolves_to_the_package_folder(trained, tmp_path, monkeypatch):
    from asdcli import bundled
    from asdcli.errors import UserError
    from asdcli.priors.mvdream import MVDreamPrior

    monkeypatch.setattr(bundled, "assets_dir", lambda: tmp_path)
    with pytest.raises(UserError, match="export-prior-mv"):
        bundled.resolve_bundled("bundled:shapes-mv-prior")
    folder = export_prior_mv(trained, tmp_path / "mv_prior")  # fp16 storage, loaded as fp32 on the CPU
    assert bundled.resolve_bundled("bundled:shapes-mv-prior") == folder
    name = "bundled:shapes-mv-prior"
    prior = MVDreamPrior(prior_config(folder, model=name, text_model=name))
    assert prior.vae is None and next(prior.unet.parameters()).dtype == torch.float32
    assert prior.encode_text(["a red cube"]).tokens.shape == (1, 20, TINY["text_dim"])


def test_cli_trains_exports_and_reports_bad_input(tmp_path, capsys):
    from asdcli.shapes.__main__ import main

    run = tmp_path / "cli"
    config = json.dumps({k: v for k, v in TINY.items() if k not in ("steps", "batch")})
    assert main(["train-prior-mv", "--out", str(run), "--steps", "1", "--batch", "1", "--threads", "1",
                 "--config", config]) == 0
    assert main(["export-prior-mv", "--from", str(run), "--to", str(tmp_path / "exp")]) == 0
    info = json.loads((tmp_path / "exp" / "shapesworld_mv_prior.json").read_text())
    assert info["trained_steps"] == 1 and info["load"]["kind"] == "mvdream" and math.isclose(
        info["config"]["dropout"], MVPriorTrainConfig().dropout)
    assert main(["export-prior-mv", "--from", str(tmp_path / "none"), "--to", str(tmp_path / "x")]) == 2
    assert "train-prior-mv" in capsys.readouterr().err


def test_consistency_check_reports_per_view_figures(trained, tmp_path):
    from asdcli.clip_model import save_tiny_clip
    from asdcli.shapes.eval_prior_mv import evaluate_prior_mv

    folder = export_prior_mv(trained, tmp_path / "mv_prior")
    clip = save_tiny_clip(tmp_path / "clip", seed=0)
    report = evaluate_prior_mv(folder, n_prompts=2, scales=(1.0, 3.0), steps=2, clip=str(clip),
                               grid=str(tmp_path / "sheet.png"))
    assert report["prompts"] == 2 and report["views"] == 4 and len(report["gt_clip_r_at_1"]) == 4
    for scale in ("cfg_1", "cfg_3"):
        row = report[scale]
        assert len(row["mask_iou_per_view"]) == 4 and len(row["clip_r_at_1"]) == 4
        assert all(0.0 <= row[k] <= 1.0 for k in ("mask_iou", "mask_iou_rotated", "other_prompt_iou"))
    assert (tmp_path / "sheet.png").stat().st_size > 0
