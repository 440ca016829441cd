"""MVDream on diffusers blocks: cross-view attention, camera embedding, LDM checkpoint conversion, loading.

The LDM-layout state dicts are described here independently of the converter, from the LDM architecture
(openaimodel UNetModel and the first-stage Encoder/Decoder): names and shapes of every parameter.
"""

from __future__ import annotations

import pytest
import torch

from asdcli.errors import UserError
from asdcli.priors.mvdream import (
    MVDreamPrior,
    MVDreamPriorConfig,
    camera_embedding,
    unet_from_ldm,
)
from asdcli.priors.mvdream_unet import (
    infer_ldm_unet_config,
    ldm_unet_key_map,
    ldm_vae_key_map,
    set_num_frames,
)
from asdcli.priors.tiny import save_tiny_sd_folder
from asdcli.render.cameras import orbit_cameras
from tests.helpers.mvdream import ATTN, CAM, CTX, HEAD, MC, MULT, NRB, TINY
from tests.helpers.mvdream import unet as _unet


def _inputs(n=4, seed=1):
    g = torch.Generator().manual_seed(seed)
    cams = camera_embedding(orbit_cameras(n, 15.0, 1.5, 40.0).c2w)
    z, text = torch.randn(n, 4, 8, 8, generator=g), torch.randn(n, 6, CTX, generator=g)
    return z, torch.full((n,), 500), text, cams


# Two module instances holding the same weights (a reloaded or converted copy) may run different kernel
# blockings: outputs differ by ~1e-6 on some x86-64 CPUs (0 on this one), so copies are compared at this
# tolerance; |ε| is O(1).
SAME_ATOL = 1e-5


def close(a, b, atol=SAME_ATOL):
    torch.testing.assert_close(a, b, rtol=0, atol=atol)
    return True


def _eps(unet, z, t, text, cams):
    with torch.no_grad():
        return unet(z, t, encoder_hidden_states=text, class_labels=cams).sample


# -------------------------------------------------------------------------- independent LDM layouts
class _Layout(dict):
    def param(self, name, shape, bias=True):
        self[f"{name}.weight"] = tuple(shape)
        if bias:
            self[f"{name}.bias"] = (shape[0],)

    def norm(self, name, c):
        self.param(name, (c,))


def ldm_unet_layout():
    """openaimodel.UNetModel (use_linear_in_transformer, depth 1, camera_dim) parameter names → shapes."""
    s, emb = _Layout(), 4 * MC

    def res(p, cin, cout):
        s.norm(f"{p}.in_layers.0", cin)
        s.param(f"{p}.in_layers.2", (cout, cin, 3, 3))
        s.param(f"{p}.emb_layers.1", (cout, emb))
        s.norm(f"{p}.out_layers.0", cout)
        s.param(f"{p}.out_layers.3", (cout, cout, 3, 3))
        if cin != cout:
            s.param(f"{p}.skip_connection", (cout, cin, 1, 1))

    def transformer(p, c):
        s.norm(f"{p}.norm", c)
        s.param(f"{p}.proj_in", (c, c))
        b = f"{p}.transformer_blocks.0"
        for a, kv in (("attn1", c), ("attn2", CTX)):
            s.param(f"{b}.{a}.to_q", (c, c), bias=False)
            s.param(f"{b}.{a}.to_k", (c, kv), bias=False)
            s.param(f"{b}.{a}.to_v", (c, kv), bias=False)
            s.param(f"{b}.{a}.to_out.0", (c, c))
        s.param(f"{b}.ff.net.0.proj", (8 * c, c))  # GEGLU: two 4c halves
        s.param(f"{b}.ff.net.2", (c, 4 * c))
        for n in ("norm1", "norm2", "norm3"):
            s.norm(f"{b}.{n}", c)
        s.param(f"{p}.proj_out", (c, c))

    s.param("time_embed.0", (emb, MC))
    s.param("time_embed.2", (emb, emb))
    s.param("camera_embed.0", (emb, CAM))
    s.param("camera_embed.2", (emb, emb))
    s.param("input_blocks.0.0", (MC, 4, 3, 3))
    ch, chans, k = MC, [MC], 1
    for level, mult in enumerate(MULT):
        for _ in range(NRB):
            res(f"input_blocks.{k}.0", ch, mult * MC)
            ch = mult * MC
            if ATTN[level]:
                transformer(f"input_blocks.{k}.1", ch)
            chans.append(ch)
            k += 1
        if level != len(MULT) - 1:
            s.param(f"input_blocks.{k}.0.op", (ch, ch, 3, 3))
            chans.append(ch)
            k += 1
    res("middle_block.0", ch, ch)
    transformer("middle_block.1", ch)
    res("middle_block.2", ch, ch)
    k = 0
    for level in reversed(range(len(MULT))):
        for i in range(NRB + 1):
            res(f"output_blocks.{k}.0", ch + chans.pop(), MULT[level] * MC)
            ch, slot = MULT[level] * MC, 1
            if ATTN[level]:
                transformer(f"output_blocks.{k}.1", ch)
                slot = 2
            if level and i == NRB:
                s.param(f"output_blocks.{k}.{slot}.conv", (ch, ch, 3, 3))
            k += 1
    s.norm("out.0", ch)
    s.param("out.2", (4, MC, 3, 3))
    return dict(s)


def ldm_vae_layout(ch=32, mult=(1, 1), nrb=1, z=4):
    """ldm.modules.diffusionmodules.model Encoder/Decoder (+ quant convs) parameter names → shapes."""
    s = _Layout()

    def res(p, cin, cout):
        s.norm(f"{p}.norm1", cin)
        s.param(f"{p}.conv1", (cout, cin, 3, 3))
        s.norm(f"{p}.norm2", cout)
        s.param(f"{p}.conv2", (cout, cout, 3, 3))
        if cin != cout:
            s.param(f"{p}.nin_shortcut", (cout, cin, 1, 1))

    def mid(p, c):
        res(f"{p}.mid.block_1", c, c)
        s.norm(f"{p}.mid.attn_1.norm", c)
        for n in ("q", "k", "v", "proj_out"):
            s.param(f"{p}.mid.attn_1.{n}", (c, c, 1, 1))
        res(f"{p}.mid.block_2", c, c)

    s.param("encoder.conv_in", (ch, 3, 3, 3))
    block_in = ch
    for i, m in enumerate(mult):
        for j in range(nrb):
            res(f"encoder.down.{i}.block.{j}", block_in, ch * m)
            block_in = ch * m
        if i != len(mult) - 1:
            s.param(f"encoder.down.{i}.downsample.conv", (block_in, block_in, 3, 3))
    mid("encoder", block_in)
    s.norm("encoder.norm_out", block_in)
    s.param("encoder.conv_out", (2 * z, block_in, 3, 3))
    s.param("quant_conv", (2 * z, 2 * z, 1, 1))
    s.param("post_quant_conv", (z, z, 1, 1))
    block_in = ch * mult[-1]
    s.param("decoder.conv_in", (block_in, z, 3, 3))
    mid("decoder", block_in)
    for i in reversed(range(len(mult))):
        for j in range(nrb + 1):
            res(f"decoder.up.{i}.block.{j}", block_in, ch * mult[i])
            block_in = ch * mult[i]
        if i != 0:
            s.param(f"decoder.up.{i}.upsample.conv", (block_in, block_in, 3, 3))
    s.norm("decoder.norm_out", block_in)
    s.param("decoder.conv_out", (3, block_in, 3, 3))
    return dict(s)


def _tiny_ldm_vae():
    from diffusers import AutoencoderKL

    torch.manual_seed(3)
    return AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(32, 32),
                         down_block_types=("DownEncoderBlock2D",) * 2,
                         up_block_types=("UpDecoderBlock2D",) * 2, layers_per_block=1, norm_num_groups=32,
                         sample_size=16).eval()


def _to_ldm(module, key_map):
    return {key_map[k]: v.clone() for k, v in module.state_dict().items()}


# ------------------------------------------------------------------------------------------------ tests
def test_views_attend_to_each_other():
    unet = _unet(num_frames=4)
    z, t, text, cams = _inputs()
    base = _eps(unet, z, t, text, cams)
    z2 = z.clone()
    z2[3] += 1.0
    changed = _eps(unet, z2, t, text, cams)
    assert (changed[0] - base[0]).abs().max() > 1e-4  # view 0 sees view 3's change
    set_num_frames(unet, 1)  # cross-view attention off: views are independent
    base, changed = _eps(unet, z, t, text, cams), _eps(unet, z2, t, text, cams)
    assert close(changed[:3], base[:3], atol=1e-6)  # vs > 1e-4 above


def test_single_view_zero_camera_matches_plain_unet():
    from diffusers import UNet2DConditionModel

    unet = _unet(num_frames=1)
    for p in unet.class_embedding.parameters():
        torch.nn.init.zeros_(p)
    camera_keys = ("class_embed_type", "projection_class_embeddings_input_dim")
    plain_cfg = {k: v for k, v in TINY.items() if k not in camera_keys}
    plain = UNet2DConditionModel(**plain_cfg).eval()
    shared = {k: v for k, v in unet.state_dict().items() if not k.startswith("class_embedding.")}
    plain.load_state_dict(shared)
    z, t, text, cams = _inputs()
    with torch.no_grad():
        expected = plain(z, t, encoder_hidden_states=text).sample
    assert torch.allclose(_eps(unet, z, t, text, cams), expected, atol=1e-6)


def test_camera_embedding_normalises_translation_row_major():
    c2w = orbit_cameras(3, 20.0, 2.5, 40.0).c2w
    emb = camera_embedding(c2w)
    assert emb.shape == (3, 16)
    t = emb.view(3, 4, 4)[:, :3, 3]
    assert torch.allclose(t.norm(dim=-1), torch.ones(3), atol=1e-6)
    assert torch.allclose(t, c2w[:, :3, 3] / 2.5, atol=1e-6)
    assert torch.equal(emb[:, [0, 1, 2, 4, 5, 6, 8, 9, 10]], c2w[:, :3, :3].reshape(3, 9))
    assert torch.equal(emb[:, 12:], c2w[:, 3, :])


def test_unet_key_map_matches_ldm_layout_and_round_trips():
    unet = _unet()
    key_map = ldm_unet_key_map(unet)
    ldm = _to_ldm(unet, key_map)
    assert {k: tuple(v.shape) for k, v in ldm.items()} == ldm_unet_layout()
    cfg = MVDreamPriorConfig(head_channels=HEAD, num_views=4)
    assert infer_ldm_unet_config(ldm, head_channels=HEAD, sample_size=8) == {**TINY, "time_embedding_dim": 4 * MC}
    back = unet_from_ldm(ldm, cfg)
    ref = unet.state_dict()
    assert all(torch.equal(v, ref[k]) for k, v in back.state_dict().items())
    z, t, text, cams = _inputs()
    assert close(_eps(back, z, t, text, cams), _eps(unet, z, t, text, cams))


def test_vae_key_map_matches_ldm_layout():
    from asdcli.priors.mvdream import vae_from_ldm

    vae = _tiny_ldm_vae()
    ldm = _to_ldm(vae, ldm_vae_key_map(vae))
    # LDM's attention q/k/v/proj_out are 1×1 convolutions; diffusers stores them as linear layers.
    ldm = {k: v[:, :, None, None] if ".mid.attn_1." in k and v.dim() == 2 else v for k, v in ldm.items()}
    assert {k: tuple(v.shape) for k, v in ldm.items()} == ldm_vae_layout()
    back = vae_from_ldm(ldm, 16)
    x = torch.rand(1, 3, 16, 16)
    with torch.no_grad():
        assert close(back.encode(x).latent_dist.mean, vae.encode(x).latent_dist.mean)


def test_converter_is_strict():
    unet = _unet()
    ldm = _to_ldm(unet, ldm_unet_key_map(unet))
    cfg = MVDreamPriorConfig(head_channels=HEAD)
    broken = dict(ldm)
    broken.pop("output_blocks.0.0.emb_layers.1.weight")
    broken["input_blocks.1.1.extra.weight"] = torch.zeros(1)
    with pytest.raises(UserError, match=r"missing output_blocks\.0\.0\.emb_layers\.1\.weight.*unexpected "
                                        r"input_blocks\.1\.1\.extra\.weight"):
        unet_from_ldm(broken, cfg)
    with pytest.raises(UserError, match="not an MVDream"):
        unet_from_ldm({"foo": torch.zeros(1)}, cfg)


@pytest.fixture(scope="module")
def text_folder(tmp_path_factory):
    return save_tiny_sd_folder(tmp_path_factory.mktemp("sd_text"), seed=0, with_vae=True, text_dim=CTX)


def test_original_checkpoint_loads_strictly(tmp_path, text_folder):
    unet, vae = _unet(), _tiny_ldm_vae()
    sd = {f"model.diffusion_model.{k}": v for k, v in _to_ldm(unet, ldm_unet_key_map(unet)).items()}
    sd.update({f"first_stage_model.{k}": v for k, v in _to_ldm(vae, ldm_vae_key_map(vae)).items()})
    sd["alphas_cumprod"] = torch.linspace(1, 0, 1000)  # schedule buffers live beside the weights
    torch.save(sd, tmp_path / "tiny-4view.pt")
    cfg = MVDreamPriorConfig(model=str(tmp_path / "tiny-4view.pt"), text_model=str(text_folder),
                             image_size=16, head_channels=HEAD)
    prior = MVDreamPrior(cfg)
    assert prior.shared_timestep and prior.num_views == 4 and prior.image_size == 16
    assert prior.vae.config.block_out_channels == (32, 32)  # the checkpoint's VAE, not the text model's
    z, t, text, cams = _inputs()
    assert close(prior.predict_noise(z, t, text, cams), _eps(unet, z, t, text, cams))


def test_diffusers_folder_round_trip_and_conditioning(tmp_path, text_folder):
    unet = _unet()
    unet.save_pretrained(str(tmp_path / "mv" / "unet"))
    prior = MVDreamPrior(MVDreamPriorConfig(model=str(tmp_path / "mv"), text_model=str(text_folder),
                                            image_size=16, negative_prompt="blurry"))
    z, t, text, cams = _inputs()
    assert close(prior.predict_noise(z, t, text, cams), _eps(unet, z, t, text, cams))
    cams4 = orbit_cameras(4, 15.0, 1.5, 40.0)
    cond = prior.conditioning(["a cat"] * 4, cams4.elevation, cams4.azimuth, cams4.c2w)
    assert torch.equal(cond.cameras, camera_embedding(cams4.c2w))
    assert torch.equal(cond.cond, prior.encode_text(["a cat"] * 4).tokens)  # no view suffixes
    assert torch.equal(cond.uncond, prior.encode_text(["blurry"] * 4).tokens) and cond.perp_neg is None
    images = torch.rand(4, 3, 20, 20, requires_grad=True)
    latents = prior.encode(images)
    assert latents.shape == (4, 4, 8, 8)
    latents.sum().backward()
    assert images.grad.abs().sum() > 0
    eps = prior.predict_noise(latents.detach(), torch.full((4,), 300), cond.cond, cond.cameras)
    assert eps.shape == (4, 4, 8, 8) and eps.dtype == torch.float32
    with pytest.raises(ValueError, match="cameras"):
        prior.predict_noise(z, t, text)
    with pytest.raises(ValueError, match="multiple of num_views"):
        prior.predict_noise(z[:3], t[:3], text[:3], cams[:3])


def test_plain_unet_folder_is_rejected(tmp_path, text_folder):
    with pytest.raises(UserError, match="camera embedding"):
        MVDreamPrior(MVDreamPriorConfig(model=str(text_folder), text_model=str(text_folder), image_size=16))


def test_offline_missing_checkpoint_is_a_user_error(monkeypatch, text_folder):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserError) as info:
        MVDreamPrior(MVDreamPriorConfig(model="nobody-asd/mvdream", text_model=str(text_folder)))
    msg = str(info.value)
    assert "nobody-asd/mvdream" in msg and "sd-v2.1-base-4view.pt" in msg and "HF_HUB_OFFLINE" in msg


def test_folder_with_ldm_named_unet_is_converted(tmp_path, text_folder):
    """Ports that kept the original module names (a MultiViewUNetModel folder) load like the checkpoint."""
    import json

    from safetensors.torch import save_file

    unet = _unet()
    folder = tmp_path / "port" / "unet"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"_class_name": "MultiViewUNetModel"}))
    save_file(_to_ldm(unet, ldm_unet_key_map(unet)), str(folder / "diffusion_pytorch_model.safetensors"))
    prior = MVDreamPrior(MVDreamPriorConfig(model=str(tmp_path / "port"), text_model=str(text_folder),
                                            image_size=16, head_channels=HEAD))
    z, t, text, cams = _inputs()
    assert close(prior.predict_noise(z, t, text, cams), _eps(unet, z, t, text, cams))


def test_checkpoint_without_text_encoder_names_the_key(tmp_path):
    """text_model None means "the checkpoint's own text encoder": a .pt without cond_stage_model says which key
    supplies one; both head keys at once are refused."""
    from asdcli.errors import ConfigError

    unet, vae = _unet(), _tiny_ldm_vae()
    sd = {f"model.diffusion_model.{k}": v for k, v in _to_ldm(unet, ldm_unet_key_map(unet)).items()}
    sd.update({f"first_stage_model.{k}": v for k, v in _to_ldm(vae, ldm_vae_key_map(vae)).items()})
    torch.save(sd, tmp_path / "no-text.pt")
    cfg = MVDreamPriorConfig(model=str(tmp_path / "no-text.pt"), image_size=16, head_channels=HEAD)
    assert cfg.text_model is None
    with pytest.raises(UserError, match=r"prior\.text_model: .*no text encoder \(cond_stage_model"):
        MVDreamPrior(cfg)
    with pytest.raises(ConfigError, match="at most one"):
        MVDreamPriorConfig(head_channels=64, num_heads=8)
