"""MVDream's multi-view UNet on diffusers building blocks, and the LDM → diffusers weight converter.

An MVDream UNet is an SD-shaped `UNet2DConditionModel` (sd-v2.1-base-4view: SD 2.1-base, 64-wide heads, linear
transformer projections, 1024-wide text context; sd-v1.5-4view: SD 1.5, 8 heads at every level, 1×1-conv
projections, 768-wide context) with two changes:
- the camera MLP Linear(16→E)–SiLU–Linear(E→E) added to the timestep embedding, which is exactly diffusers'
  `class_embed_type="projection"` (class_embedding.linear_1/2; the camera goes in as `class_labels`);
- self-attention (attn1 only) across the F views of an object: tokens are regrouped (b·f, l, c) → (b, f·l, c)
  around an ordinary attention call, so cross-attention and feed-forward stay per view.
The original checkpoint uses LDM module names (`model.diffusion_model.input_blocks.1.0.in_layers.0.weight`,
…); `ldm_unet_key_map` gives the one-to-one name correspondence, derived from the UNet's diffusers config.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from asdcli.errors import UserError

# ------------------------------------------------------------------------------------- multi-view attention


class MultiViewAttnProcessor:
    """Self-attention over all `num_frames` views of each object: hidden_states [(b·f), l, c] attend as
    [b, (f·l), c]. Wraps the standard scaled-dot-product processor, so LoRA-wrapped projections still work."""

    def __init__(self, num_frames: int) -> None:
        # lazy: diffusers is heavy: loaded with the prior, not when a recipe is validated
        from diffusers.models.attention_processor import AttnProcessor2_0

        self.num_frames = num_frames
        self.inner = AttnProcessor2_0()

    def __call__(self, attn: nn.Module, hidden_states: Tensor, encoder_hidden_states: Tensor | None = None,
                 attention_mask: Tensor | None = None, temb: Tensor | None = None, **kwargs: Any) -> Tensor:
        f = self.num_frames
        if f <= 1 or hidden_states.dim() != 3 or encoder_hidden_states is not None:
            return self.inner(attn, hidden_states, encoder_hidden_states, attention_mask, temb)
        bf, length, channels = hidden_states.shape
        if bf % f:
            raise ValueError(f"multi-view attention: batch {bf} is not a multiple of num_frames={f}")
        joint = hidden_states.reshape(bf // f, f * length, channels)
        out = self.inner(attn, joint, None, attention_mask, temb)
        return out.reshape(bf, length, channels)


def self_attention_modules(unet: nn.Module) -> list[nn.Module]:
    """Every transformer block's attn1 (self-attention) module."""
    return [m for name, m in unet.named_modules() if name.endswith(".attn1") and hasattr(m, "set_processor")]


def set_num_frames(unet: nn.Module, num_frames: int) -> None:
    """Make attn1 span `num_frames` views (1 = per-image self-attention: cross-view attention off)."""
    for module in self_attention_modules(unet):
        module.set_processor(MultiViewAttnProcessor(num_frames))


# The two released checkpoints (bytedance/MVDream configs): block widths and text context identify them; the
# attention layout is not stored in the weights, so it comes from here. v2.1 fixes the head WIDTH (heads =
# channels / 64: 5, 10, 20 heads), v1.5 the head COUNT (8 at every level, widths 40, 80, 160).
KNOWN_VARIANTS = {
    "sd-v2.1-base-4view": {"channels": (320, 640, 1280, 1280), "context": 1024, "head_channels": 64},
    "sd-v1.5-4view": {"channels": (320, 640, 1280, 1280), "context": 768, "num_heads": 8},
}


def attention_layout(channels: tuple[int, ...], context: int, head_channels: int | None = None,
                     num_heads: int | None = None) -> dict[str, int]:
    """{"head_channels": w} or {"num_heads": n} for a UNet with block widths `channels` and text context width
    `context`: the explicit setting when given, else the known variant these shapes are. Anything else is a
    UserError naming the recipe keys: a guessed layout would load without error and predict wrong noise."""
    if head_channels is not None:
        if any(c % head_channels for c in channels):
            raise UserError(f"prior.head_channels: {head_channels} does not divide the block widths {channels}")
        return {"head_channels": head_channels}
    if num_heads is not None:
        if any(c % num_heads for c in channels):
            raise UserError(f"prior.num_heads: {num_heads} does not divide the block widths {channels}")
        return {"num_heads": num_heads}
    for spec in KNOWN_VARIANTS.values():
        if tuple(channels) == spec["channels"] and context == spec["context"]:
            return {k: v for k, v in spec.items() if k in ("head_channels", "num_heads")}
    known = "; ".join(f"{name}: context {s['context']}, " + (f"head width {s['head_channels']}" if "head_channels"
                                                              in s else f"{s['num_heads']} heads")
                      for name, s in KNOWN_VARIANTS.items())
    raise UserError(f"prior.head_channels: the checkpoint (block widths {tuple(channels)}, text context {context}) "
                    f"is not a known MVDream variant ({known}), and its attention heads are not stored in it; set "
                    f"prior.head_channels (width of every head) or prior.num_heads (heads at every level)")


def mvdream_unet_config(block_out_channels: tuple[int, ...] = (320, 640, 1280, 1280),
                        layers_per_block: int = 2, attention: tuple[bool, ...] = (True, True, True, False),
                        head_channels: int | None = 64,
                        cross_attention_dim: int = 1024, camera_dim: int = 16, in_channels: int = 4,
                        sample_size: int = 32, linear_projection: bool = True, transformer_depth: int = 1,
                        time_embedding_dim: int | None = None, num_heads: int | None = None) -> dict[str, Any]:
    """UNet2DConditionModel kwargs for an MVDream UNet (defaults: sd-v2.1-base-4view, latents 4×32×32).

    Heads: `num_heads` at every level when given (sd-v1.5-4view: 8), else channels / `head_channels`.
    (diffusers' `attention_head_dim` is, despite its name, the number of heads per level.)"""
    down = tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attention)
    up = tuple("CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attention))
    if num_heads is None and head_channels is None:
        raise ValueError("mvdream_unet_config needs head_channels or num_heads")
    heads = tuple(num_heads or c // head_channels for c in block_out_channels)
    return dict(sample_size=sample_size, in_channels=in_channels, out_channels=in_channels,
                block_out_channels=tuple(block_out_channels), layers_per_block=layers_per_block,
                down_block_types=down, up_block_types=up, cross_attention_dim=cross_attention_dim,
                attention_head_dim=heads,
                use_linear_projection=linear_projection, transformer_layers_per_block=transformer_depth,
                class_embed_type="projection", projection_class_embeddings_input_dim=camera_dim,
                time_embedding_dim=time_embedding_dim)


def build_mvdream_unet(config: dict[str, Any], num_frames: int) -> nn.Module:
    # lazy: diffusers is heavy: loaded with the prior, not when a recipe is validated
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel(**config)
    set_num_frames(unet, num_frames)
    return unet


# ------------------------------------------------------------------------------------------ LDM key names
# Sub-module renames (LDM → diffusers) inside a module whose prefix maps; unlisted names are the same in both.
_RES = {"in_layers.0": "norm1", "in_layers.2": "conv1", "emb_layers.1": "time_emb_proj",
        "out_layers.0": "norm2", "out_layers.3": "conv2", "skip_connection": "conv_shortcut"}
_VAE_RES = {"nin_shortcut": "conv_shortcut"}
_VAE_ATTN = {"norm": "group_norm", "q": "to_q", "k": "to_k", "v": "to_v", "proj_out": "to_out.0"}
Row = tuple[str, str, dict[str, str]]  # (diffusers prefix, LDM prefix, sub-module renames)


def _unet_module_table(config: Any) -> list[Row]:
    """Module correspondence for an SD-style UNet.

    LDM numbering: input_blocks[0] is conv_in; then per level `layers` blocks of [ResBlock,
    (SpatialTransformer)] and, except at the last level, one [Downsample]; output_blocks hold `layers + 1`
    blocks per level (deepest first) of [ResBlock, (SpatialTransformer), (Upsample at the level's end)]."""
    n, layers = len(config.block_out_channels), config.layers_per_block
    attn_down = [t.startswith("CrossAttn") for t in config.down_block_types]
    attn_up = [t.startswith("CrossAttn") for t in config.up_block_types]
    table: list[Row] = [
        ("conv_in", "input_blocks.0.0", {}), ("time_embedding.linear_1", "time_embed.0", {}),
        ("time_embedding.linear_2", "time_embed.2", {}), ("class_embedding.linear_1", "camera_embed.0", {}),
        ("class_embedding.linear_2", "camera_embed.2", {}), ("conv_norm_out", "out.0", {}),
        ("conv_out", "out.2", {}), ("mid_block.resnets.0", "middle_block.0", _RES),
        ("mid_block.attentions.0", "middle_block.1", {}), ("mid_block.resnets.1", "middle_block.2", _RES)]
    for i in range(n):
        for j in range(layers):
            k = 1 + i * (layers + 1) + j
            table.append((f"down_blocks.{i}.resnets.{j}", f"input_blocks.{k}.0", _RES))
            if attn_down[i]:
                table.append((f"down_blocks.{i}.attentions.{j}", f"input_blocks.{k}.1", {}))
        if i < n - 1:
            down = (i + 1) * (layers + 1)
            table.append((f"down_blocks.{i}.downsamplers.0.conv", f"input_blocks.{down}.0.op", {}))
    for i in range(n):
        for j in range(layers + 1):
            k = i * (layers + 1) + j
            table.append((f"up_blocks.{i}.resnets.{j}", f"output_blocks.{k}.0", _RES))
            if attn_up[i]:
                table.append((f"up_blocks.{i}.attentions.{j}", f"output_blocks.{k}.1", {}))
            if i < n - 1 and j == layers:
                slot = 2 if attn_up[i] else 1
                table.append((f"up_blocks.{i}.upsamplers.0.conv", f"output_blocks.{k}.{slot}.conv", {}))
    return table


def _vae_module_table(config: Any) -> list[Row]:
    """Module correspondence for the LDM AutoencoderKL (`first_stage_model.`): the decoder's `up` list is
    numbered from the lowest resolution's opposite end, i.e. diffusers up_blocks[i] is LDM up[n − 1 − i]."""
    n, layers = len(config.block_out_channels), config.layers_per_block
    table: list[Row] = [("quant_conv", "quant_conv", {}), ("post_quant_conv", "post_quant_conv", {})]
    for part in ("encoder", "decoder"):
        table += [(f"{part}.conv_in", f"{part}.conv_in", {}), (f"{part}.conv_out", f"{part}.conv_out", {}),
                  (f"{part}.conv_norm_out", f"{part}.norm_out", {}),
                  (f"{part}.mid_block.resnets.0", f"{part}.mid.block_1", _VAE_RES),
                  (f"{part}.mid_block.resnets.1", f"{part}.mid.block_2", _VAE_RES),
                  (f"{part}.mid_block.attentions.0", f"{part}.mid.attn_1", _VAE_ATTN)]
    for i in range(n):
        table += [(f"encoder.down_blocks.{i}.resnets.{j}", f"encoder.down.{i}.block.{j}", _VAE_RES)
                  for j in range(layers)]
        table += [(f"decoder.up_blocks.{i}.resnets.{j}", f"decoder.up.{n - 1 - i}.block.{j}", _VAE_RES)
                  for j in range(layers + 1)]
        if i < n - 1:
            table += [(f"encoder.down_blocks.{i}.downsamplers.0.conv", f"encoder.down.{i}.downsample.conv",
                       {}),
                      (f"decoder.up_blocks.{i}.upsamplers.0.conv", f"decoder.up.{n - 1 - i}.upsample.conv",
                       {})]
    return table


def _map_keys(keys: list[str], table: list[Row]) -> dict[str, str]:
    """diffusers key → LDM key, by the longest matching module prefix, renaming sub-modules."""
    rows = sorted(table, key=lambda row: -len(row[0]))
    out = {}
    for key in keys:
        row = next((r for r in rows if key.startswith(r[0] + ".")), None)
        if row is None:
            raise KeyError(f"no LDM name for diffusers key {key!r}")
        diff_prefix, ldm_prefix, renames = row
        module, _, param = key[len(diff_prefix) + 1:].rpartition(".")
        inverse = {v: k for k, v in renames.items()}
        module = inverse.get(module, module)
        out[key] = f"{ldm_prefix}.{module}.{param}" if module else f"{ldm_prefix}.{param}"
    return out


def ldm_unet_key_map(unet: nn.Module) -> dict[str, str]:
    """diffusers state-dict key → LDM key (without `model.diffusion_model.`), for every key of `unet`."""
    return _map_keys(list(unet.state_dict().keys()), _unet_module_table(unet.config))


def ldm_vae_key_map(vae: nn.Module) -> dict[str, str]:
    """diffusers AutoencoderKL key → LDM key (without `first_stage_model.`), for every key of `vae`."""
    return _map_keys(list(vae.state_dict().keys()), _vae_module_table(vae.config))


def _few(keys: list[str]) -> str:
    return ", ".join(keys[:4]) + (f" (+{len(keys) - 4} more)" if len(keys) > 4 else "") if keys else "none"


def load_ldm_weights(module: nn.Module, ldm_sd: dict[str, Tensor], key_map: dict[str, str],
                     what: str) -> None:
    """Load an LDM-named state dict into `module` strictly: every key must map, none may be left over, and
    shapes must agree (1×1-conv attention weights of the LDM VAE become linear weights)."""
    to_diffusers = {v: k for k, v in key_map.items()}
    missing = sorted(set(to_diffusers) - set(ldm_sd))
    unexpected = sorted(set(ldm_sd) - set(to_diffusers))
    if missing or unexpected:
        raise UserError(f"prior.model: the {what} weights do not match the MVDream layout: missing "
                        f"{_few(missing)}; unexpected {_few(unexpected)}")
    target = module.state_dict()
    converted = {}
    for ldm_key, value in ldm_sd.items():
        key = to_diffusers[ldm_key]
        if value.dim() == 4 and target[key].dim() == 2 and value.shape[2:] == (1, 1):
            value = value[:, :, 0, 0]
        if value.shape != target[key].shape:
            raise UserError(f"prior.model: {what} weight {ldm_key} has shape {tuple(value.shape)}, expected "
                            f"{tuple(target[key].shape)}")
        converted[key] = value
    module.load_state_dict(converted, strict=True)


def infer_ldm_unet_config(sd: dict[str, Tensor], head_channels: int | None = None, num_heads: int | None = None,
                          sample_size: int = 32) -> dict[str, Any]:
    """UNet2DConditionModel kwargs read off an LDM UNet state dict's names and shapes. Heads are not stored in
    the weights: `head_channels` / `num_heads` when given, else those of the known variant (attention_layout)."""
    try:
        downs = [k for k in sd if k.startswith("input_blocks.") and k.endswith(".0.op.weight")]
        n_in = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("input_blocks."))
        levels = len(downs) + 1
        layers = n_in // levels - 1
        starts = [1 + i * (layers + 1) for i in range(levels)]
        channels = tuple(int(sd[f"input_blocks.{k}.0.out_layers.3.weight"].shape[0]) for k in starts)
        attention = tuple(f"input_blocks.{k}.1.proj_in.weight" in sd for k in starts)
        first_attn = next(k for k, a in zip(starts, attention, strict=True) if a)
        proj_in = sd[f"input_blocks.{first_attn}.1.proj_in.weight"]
        blocks = f"input_blocks.{first_attn}.1.transformer_blocks."
        depth = 1 + max(int(k[len(blocks):].split(".")[0]) for k in sd if k.startswith(blocks))
        context = int(sd[f"{blocks}0.attn2.to_k.weight"].shape[1])
    except (KeyError, ValueError, StopIteration) as exc:
        raise UserError(f"prior.model: not an MVDream (LDM) UNet checkpoint: cannot read its layout "
                        f"({type(exc).__name__}: {exc})") from None
    layout = attention_layout(channels, context, head_channels, num_heads)
    try:
        return mvdream_unet_config(
            block_out_channels=channels, layers_per_block=layers, attention=attention,
            head_channels=layout.get("head_channels"), num_heads=layout.get("num_heads"),
            cross_attention_dim=context,
            camera_dim=int(sd["camera_embed.0.weight"].shape[1]),
            in_channels=int(sd["input_blocks.0.0.weight"].shape[1]),
            sample_size=sample_size, linear_projection=proj_in.dim() == 2,
            transformer_depth=depth, time_embedding_dim=int(sd["time_embed.0.weight"].shape[0]))
    except (KeyError, ValueError, StopIteration) as exc:
        raise UserError(f"prior.model: not an MVDream (LDM) UNet checkpoint: cannot read its layout "
                        f"({type(exc).__name__}: {exc})") from None


def infer_ldm_vae_config(sd: dict[str, Tensor], sample_size: int = 256,
                         scaling_factor: float = 0.18215) -> dict[str, Any]:
    """AutoencoderKL kwargs read off an LDM first-stage state dict (32 norm groups, as LDM hard-codes)."""
    try:
        n = 1 + max(int(k.split(".")[2]) for k in sd if k.startswith("encoder.down."))
        layers = 1 + max(int(k.split(".")[4]) for k in sd if k.startswith("encoder.down.0.block."))
        channels = tuple(int(sd[f"encoder.down.{i}.block.0.conv1.weight"].shape[0]) for i in range(n))
        return dict(in_channels=int(sd["encoder.conv_in.weight"].shape[1]),
                    out_channels=int(sd["decoder.conv_out.weight"].shape[0]),
                    latent_channels=int(sd["post_quant_conv.weight"].shape[0]), block_out_channels=channels,
                    down_block_types=("DownEncoderBlock2D",) * n, up_block_types=("UpDecoderBlock2D",) * n,
                    layers_per_block=layers, norm_num_groups=32, sample_size=sample_size,
                    scaling_factor=scaling_factor)
    except (KeyError, ValueError) as exc:
        raise UserError(f"prior.model: the checkpoint's first_stage_model is not an LDM AutoencoderKL "
                        f"({type(exc).__name__}: {exc})") from None
