"""Stable Diffusion's original (CompVis / A1111 / ComfyUI) single-file layout, written from a diffusers pipeline.

`original_state_dict(pipe)` renames the UNet's, VAE's and text encoder's weights to the keys of the original
checkpoints (`model.diffusion_model.*`, `first_stage_model.*`, `cond_stage_model.transformer.text_model.*` for
SD-1.x's CLIP, `cond_stage_model.model.*` for SD-2.x's OpenCLIP). The renaming is this module's own, written from
the structure of the original UNet (input_blocks / middle_block / output_blocks, `layers_per_block + 1` entries a
level) and VAE (down.i.block.j, up.{n-1-i}, mid.block_1/2, mid.attn_1). It is never trusted on its own:
`check_round_trip` runs diffusers' own converters (`diffusers.loaders.single_file_utils`: the functions
`from_single_file` loads with) on the result and requires every weight back under its diffusers name, bit for bit;
`export(..., format="single-file")` calls it before anything is written.
"""

from __future__ import annotations

import re

import torch

UNET_PREFIX, VAE_PREFIX = "model.diffusion_model.", "first_stage_model."
CLIP_PREFIX, OPEN_CLIP_PREFIX = "cond_stage_model.transformer.", "cond_stage_model.model."

_RESNET = (("norm1", "in_layers.0"), ("conv1", "in_layers.2"), ("norm2", "out_layers.0"), ("conv2", "out_layers.3"),
           ("time_emb_proj", "emb_layers.1"), ("conv_shortcut", "skip_connection"))
_UNET_TOP = {"time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
             "conv_in": "input_blocks.0.0", "conv_norm_out": "out.0", "conv_out": "out.2"}


def _resnet(rest: str) -> str:
    head, _, tail = rest.partition(".")
    return f"{dict(_RESNET).get(head, head)}.{tail}"


def unet_key(key: str, layers_per_block: int, up_attention: list[bool]) -> str:
    """The original key of a diffusers UNet weight (SD-1.x / 2.x UNet2DConditionModel)."""
    n = layers_per_block + 1  # entries per level: the layers, then a down/upsampler
    module, _, param = key.rpartition(".")
    if module in _UNET_TOP:
        return f"{_UNET_TOP[module]}.{param}"
    if m := re.fullmatch(r"down_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", key):
        i, j, rest = int(m[1]), int(m[2]), m[3]
        return f"input_blocks.{n * i + j + 1}.0.{_resnet(rest)}"
    if m := re.fullmatch(r"down_blocks\.(\d+)\.attentions\.(\d+)\.(.+)", key):
        return f"input_blocks.{n * int(m[1]) + int(m[2]) + 1}.1.{m[3]}"
    if m := re.fullmatch(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.+)", key):
        return f"input_blocks.{n * (int(m[1]) + 1)}.0.op.{m[2]}"
    if m := re.fullmatch(r"mid_block\.resnets\.(\d+)\.(.+)", key):
        return f"middle_block.{2 * int(m[1])}.{_resnet(m[2])}"
    if m := re.fullmatch(r"mid_block\.attentions\.0\.(.+)", key):
        return f"middle_block.1.{m[1]}"
    if m := re.fullmatch(r"up_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", key):
        return f"output_blocks.{n * int(m[1]) + int(m[2])}.0.{_resnet(m[3])}"
    if m := re.fullmatch(r"up_blocks\.(\d+)\.attentions\.(\d+)\.(.+)", key):
        return f"output_blocks.{n * int(m[1]) + int(m[2])}.1.{m[3]}"
    if m := re.fullmatch(r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.+)", key):
        i = int(m[1])  # the upsampler follows the level's last layer: after its attention where it has one
        return f"output_blocks.{n * i + layers_per_block}.{2 if up_attention[i] else 1}.conv.{m[2]}"
    raise ValueError(f"UNet weight {key!r} has no place in the original SD layout (an SD-1.x/2.x UNet only)")


_VAE_ATTN = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def vae_key(key: str, levels: int) -> str:
    """The original key of a diffusers AutoencoderKL weight."""
    side, _, rest = key.partition(".")
    top = {"conv_norm_out": "norm_out"}
    if side in ("quant_conv", "post_quant_conv"):
        return key
    if m := re.fullmatch(r"(conv_in|conv_out|conv_norm_out)\.(.+)", rest):
        return f"{side}.{top.get(m[1], m[1])}.{m[2]}"
    if m := re.fullmatch(r"down_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", rest):
        return f"{side}.down.{m[1]}.block.{m[2]}.{m[3].replace('conv_shortcut', 'nin_shortcut')}"
    if m := re.fullmatch(r"down_blocks\.(\d+)\.downsamplers\.0\.(.+)", rest):
        return f"{side}.down.{m[1]}.downsample.{m[2]}"
    if m := re.fullmatch(r"up_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", rest):  # the original numbers up levels from the bottom
        return f"{side}.up.{levels - 1 - int(m[1])}.block.{m[2]}.{m[3].replace('conv_shortcut', 'nin_shortcut')}"
    if m := re.fullmatch(r"up_blocks\.(\d+)\.upsamplers\.0\.(.+)", rest):
        return f"{side}.up.{levels - 1 - int(m[1])}.upsample.{m[2]}"
    if m := re.fullmatch(r"mid_block\.resnets\.(\d+)\.(.+)", rest):
        return f"{side}.mid.block_{int(m[1]) + 1}.{m[2].replace('conv_shortcut', 'nin_shortcut')}"
    if m := re.fullmatch(r"mid_block\.attentions\.0\.(.+)\.(weight|bias)", rest):
        return f"{side}.mid.attn_1.{_VAE_ATTN[m[1]]}.{m[2]}"
    raise ValueError(f"VAE weight {key!r} has no place in the original SD layout (an SD-1.x/2.x AutoencoderKL only)")


_OPEN_CLIP = (("layer_norm1", "ln_1"), ("layer_norm2", "ln_2"), ("mlp.fc1", "mlp.c_fc"), ("mlp.fc2", "mlp.c_proj"),
              ("self_attn.out_proj", "attn.out_proj"))


def _open_clip(text: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # OpenCLIP (SD-2.x): resblocks.N with one in_proj for q, k, v stacked; diffusers keeps the layers it uses (23)
    out = {}
    for key, value in text.items():
        if m := re.fullmatch(r"encoder\.layers\.(\d+)\.self_attn\.(q|k|v)_proj\.(weight|bias)", key):
            if m[2] == "q":
                parts = [text[f"encoder.layers.{m[1]}.self_attn.{c}_proj.{m[3]}"] for c in "qkv"]
                out[f"transformer.resblocks.{m[1]}.attn.in_proj_{m[3]}"] = torch.cat(parts)
        elif m := re.fullmatch(r"encoder\.layers\.(\d+)\.(.+)", key):
            rest = m[2]
            for new, old in _OPEN_CLIP:
                rest = rest.replace(new, old)
            out[f"transformer.resblocks.{m[1]}.{rest}"] = value
        else:
            out[{"embeddings.token_embedding.weight": "token_embedding.weight",
                 "embeddings.position_embedding.weight": "positional_embedding",
                 "final_layer_norm.weight": "ln_final.weight", "final_layer_norm.bias": "ln_final.bias"}[key]] = value
    return out


def _text_state(text_encoder) -> dict[str, torch.Tensor]:
    # transformers >= 5 names CLIPTextModel's weights without the `text_model.` prefix the original layout keeps
    return {k.removeprefix("text_model."): v for k, v in text_encoder.state_dict().items()}


def is_open_clip(text_encoder) -> bool:
    # SD-2.x's text encoder: OpenCLIP-H (GELU, 1024 wide); SD-1.x's: OpenAI CLIP-L (quick_gelu)
    return text_encoder.config.hidden_act == "gelu"


def original_state_dict(pipe) -> dict[str, torch.Tensor]:
    """The pipeline's UNet, VAE and text encoder under the original single-file keys (contiguous CPU tensors)."""
    for part in ("unet", "vae", "text_encoder"):
        if getattr(pipe, part, None) is None:
            raise ValueError(f"format 'single-file' needs a Stable Diffusion pipeline (UNet, VAE, text encoder); "
                             f"this {type(pipe).__name__} has no {part}: export it as format='diffusers'")
    if type(pipe.vae).__name__ != "AutoencoderKL" or type(pipe.unet).__name__ != "UNet2DConditionModel":
        raise ValueError(f"format 'single-file' writes SD-1.x/2.x checkpoints; this pipeline's {type(pipe.vae).__name__}"
                         f" / {type(pipe.unet).__name__} has no original layout: export it as format='diffusers'")
    cfg = pipe.unet.config
    up_attention = ["CrossAttn" in t for t in cfg.up_block_types]
    out = {UNET_PREFIX + unet_key(k, cfg.layers_per_block, up_attention): v for k, v in pipe.unet.state_dict().items()}
    levels = len(pipe.vae.config.up_block_types)
    for k, v in pipe.vae.state_dict().items():
        name = vae_key(k, levels)
        # the original VAE's mid attention is 1x1 convolutions: (out, in) -> (out, in, 1, 1)
        out[VAE_PREFIX + name] = v[..., None, None] if ".mid.attn_1." in name and v.ndim == 2 else v
    text = _text_state(pipe.text_encoder)
    if is_open_clip(pipe.text_encoder):
        out.update({OPEN_CLIP_PREFIX + k: v for k, v in _open_clip(text).items()})
    else:
        out.update({CLIP_PREFIX + "text_model." + k: v for k, v in text.items()})
    return {k: v.detach().cpu().contiguous() for k, v in out.items()}


def check_round_trip(pipe, state: dict[str, torch.Tensor]) -> None:
    """diffusers' own converters (those `from_single_file` uses) must give every weight of `pipe` back from `state`
    under its own name, equal; a ValueError names the first that does not."""
    from diffusers.loaders import single_file_utils as sfu

    unet = sfu.convert_ldm_unet_checkpoint(state, dict(pipe.unet.config))
    vae = sfu.convert_ldm_vae_checkpoint(state, dict(pipe.vae.config))
    if is_open_clip(pipe.text_encoder):
        text = sfu.convert_open_clip_checkpoint(pipe.text_encoder, state)
    else:
        text = sfu.convert_ldm_clip_checkpoint(state)
    text = {k.removeprefix("text_model."): v for k, v in text.items()}
    for part, got, want in (("unet", unet, pipe.unet.state_dict()), ("vae", vae, pipe.vae.state_dict()),
                            ("text_encoder", text, _text_state(pipe.text_encoder))):
        missing = sorted(set(want) - set(got))
        if missing:
            raise ValueError(f"single-file export: diffusers' converter finds no {part} weight {missing[0]!r} "
                             f"({len(missing)} missing) in the written keys; this architecture is not SD-1.x/2.x")
        bad = next((k for k in want if got[k].shape != want[k].shape or not torch.equal(got[k].cpu(), want[k].cpu())),
                   None)
        if bad is not None:
            raise ValueError(f"single-file export: diffusers' converter reads {part} weight {bad!r} back changed")
