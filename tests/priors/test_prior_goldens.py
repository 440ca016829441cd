"""asd's MVDream loading against goldens computed by the ORIGINAL MVDream code (bytedance/MVDream's mvdream.ldm
classes) from tiny checkpoints in both released layouts; tests/fixtures/make_goldens.py regenerates them.

v21 is shaped like sd-v2.1-base-4view (head width, linear projections, OpenCLIP text tower at its penultimate
layer), v15 like sd-v1.5-4view (fixed head count, 1×1-conv projections, CLIP text model). Both carry their own
text encoder (`cond_stage_model`), so they load from the .pt alone.
"""

from __future__ import annotations

import json

import pytest
import torch

from asdcli.errors import UserError
from asdcli.priors.mvdream import MVDreamPrior, MVDreamPriorConfig
from asdcli.priors.mvdream_unet import attention_layout, ldm_unet_key_map, mvdream_unet_config
from tests.helpers.goldens import FIXTURES, checkpoint, golden

PROMPTS = ["a DSLR photo of a corgi wearing a top hat, 4k", ""]
LAYOUTS = {"v21": {"head_channels": 16}, "v15": {"num_heads": 2}}
# Stated tolerances; measured max |Δ| (2026-12-07, 2-core CPU): token ids equal; text states 0 (both); UNet ε
# 2.2e-8 (v21) / 3.0e-8 (v15), also from asd's own text states; VAE posterior mean 8.0e-7 / 4.8e-7. The tiny
# UNets' ε is small (spatial std ~0.015), so ε is held to 2e-6; the other variant's head rule is off by 3.3e-3.
TEXT_ATOL = 1e-5
EPS_ATOL = 2e-6
VAE_ATOL = 1e-5


@pytest.fixture(scope="module")
def priors(tmp_path_factory) -> dict[str, MVDreamPrior]:
    tmp = tmp_path_factory.mktemp("goldens")
    return {name: MVDreamPrior(MVDreamPriorConfig(model=str(checkpoint(tmp, name)), image_size=16, **layout))
            for name, layout in LAYOUTS.items()}


def _close(got, want, atol):
    torch.testing.assert_close(got, want, rtol=0, atol=atol)


@pytest.mark.parametrize("name", ["v21", "v15"])
def test_checkpoint_alone_matches_the_original_code(priors, name):
    prior, g = priors[name], golden(name)
    assert torch.equal(prior.text.tokenize(PROMPTS), g["tokens"])  # BPE ids and the variant's padding
    text = prior.encode_text(PROMPTS).tokens
    _close(text, g["text"], TEXT_ATOL)
    # Goldens are not degenerate: ε varies over the image and with the text, text states are O(1).
    assert g["eps"].std(dim=(2, 3)).mean() > 5e-3 and (g["eps"][:4] - g["eps"][4:]).abs().max() > 1e-2
    assert g["text"][0].std() > 0.5
    views = g["x"].shape[0] // 2
    context = torch.cat([g["text"][:1].expand(views, -1, -1), g["text"][1:].expand(views, -1, -1)])
    _close(prior.predict_noise(g["x"], g["t"], context, g["cameras"]), g["eps"], EPS_ATOL)
    own = torch.cat([text[:1].expand(views, -1, -1), text[1:].expand(views, -1, -1)])
    _close(prior.predict_noise(g["x"], g["t"], own, g["cameras"]), g["eps"], EPS_ATOL)
    with torch.no_grad():
        _close(prior.vae.encode(g["image"]).latent_dist.mean, g["latent_mean"], VAE_ATOL)


def test_the_other_variants_layout_would_be_wrong(tmp_path):
    """The goldens tell the two head rules apart: v21 read with v15's rule (2 heads everywhere) is off by far more
    than the tolerance (3.3e-3 measured, 1600× EPS_ATOL)."""
    g = golden("v21")
    prior = MVDreamPrior(MVDreamPriorConfig(model=str(checkpoint(tmp_path, "v21")), image_size=16, num_heads=2))
    views = g["x"].shape[0] // 2
    context = torch.cat([g["text"][:1].expand(views, -1, -1), g["text"][1:].expand(views, -1, -1)])
    assert (prior.predict_noise(g["x"], g["t"], context, g["cameras"]) - g["eps"]).abs().max() > 100 * EPS_ATOL


def test_an_ambiguous_checkpoint_needs_the_recipe_key(tmp_path):
    with pytest.raises(UserError, match=r"prior\.head_channels.*not a known MVDream variant.*set "
                                        r"prior\.head_channels .* or prior\.num_heads"):
        MVDreamPrior(MVDreamPriorConfig(model=str(checkpoint(tmp_path, "v15")), image_size=16))


def _full_size_ldm_shapes(context: int, **heads) -> dict[str, torch.Tensor]:
    """Meta tensors named and shaped like a released checkpoint's UNet (no memory, no weights)."""
    from asdcli.priors.mvdream_unet import build_mvdream_unet

    with torch.device("meta"):
        unet = build_mvdream_unet(mvdream_unet_config(cross_attention_dim=context, linear_projection=context == 1024,
                                                      **heads), 4)
    key_map = ldm_unet_key_map(unet)
    return {key_map[k]: v for k, v in unet.state_dict().items()}


@pytest.mark.parametrize("context, heads", [(1024, (5, 10, 20, 20)), (768, (8, 8, 8, 8))])
def test_released_shapes_pick_their_variants_layout(context, heads):
    from asdcli.priors.mvdream_unet import infer_ldm_unet_config

    sd = _full_size_ldm_shapes(context, head_channels=64 if context == 1024 else None,
                               num_heads=None if context == 1024 else 8)
    assert infer_ldm_unet_config(sd)["attention_head_dim"] == heads  # diffusers' name for heads per level
    assert infer_ldm_unet_config(sd, head_channels=160)["attention_head_dim"] == (2, 4, 8, 8)  # key wins
    with pytest.raises(UserError, match="prior.num_heads: 3 does not divide"):
        attention_layout((320, 640, 1280, 1280), context, num_heads=3)


def test_text_encoder_alone_for_generate(priors, tmp_path):
    """`asd generate` builds only the text side: from the checkpoint too, with the prior's embeddings."""
    from asdcli.priors.text import load_text_encoder

    cfg = MVDreamPriorConfig(model=str(checkpoint(tmp_path, "v15")), image_size=16, num_heads=2)
    enc = load_text_encoder(cfg)
    _close(enc.encode(PROMPTS).tokens, priors["v15"].encode_text(PROMPTS).tokens, 1e-6)
    assert enc.encoder_id.endswith(":cond_stage_model")


@pytest.mark.parametrize("name, pad", [("v21", 0), ("v15", 49407)])
def test_tokenizer_matches_open_clip(priors, name, pad):
    """The shipped CLIP BPE tokenises as open_clip's SimpleTokenizer (golden ids); SD2/OpenCLIP pads with id 0
    ("!"), SD1/CLIP with <|endoftext|>; an over-long prompt keeps its end-of-text token."""
    data = json.loads((FIXTURES / "clip_tokens.json").read_text(encoding="utf-8"))
    with pytest.warns(UserWarning, match="truncated"):
        got = priors[name].text.tokenize(data["prompts"])
    for row, ids in zip(got.tolist(), data["ids"], strict=True):
        want = [49406, *ids, 49407]
        want = want[:76] + [49407] if len(want) > 77 else want + [pad] * (77 - len(want))
        assert row == want


def test_a_broken_text_encoder_is_a_user_error(tmp_path):
    from asdcli.priors.ldm_text import text_encoder_from_checkpoint

    sd = torch.load(checkpoint(tmp_path, "v21"), weights_only=True)
    sd.pop("cond_stage_model.model.transformer.resblocks.0.mlp.c_fc.weight")
    with pytest.raises(UserError, match=r"cond_stage_model\) has an unexpected layout.*prior\.text_model"):
        text_encoder_from_checkpoint(sd, "x")
    sd = torch.load(checkpoint(tmp_path, "v21"), weights_only=True)
    sd.pop("cond_stage_model.model.transformer.resblocks.1.attn.out_proj.weight")
    with pytest.raises(UserError, match=r"does not convert: missing \['encoder\.layers\.1\.self_attn\.out_proj"):
        text_encoder_from_checkpoint(sd, "x")
