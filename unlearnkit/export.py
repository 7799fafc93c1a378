"""Export an unlearned model for use elsewhere: a diffusers folder, one single-file checkpoint, a diffusers LoRA,
or a kohya LoRA file.

"diffusers" writes the whole pipeline (`StableDiffusionPipeline.from_pretrained` or `unlearnkit.load_pipeline`
opens it); "single-file" one `.safetensors` in Stable Diffusion's original layout, the checkpoint AUTOMATIC1111 and
ComfyUI load for a full-weight model (`from_single_file(file, config=folder)`; `original_layout.py`); "lora" writes
`pytorch_lora_weights.safetensors`, which `pipe.load_lora_weights(folder)` puts on the base model; "kohya" one
`.safetensors` file in the kohya layout, with kohya's `ss_*` metadata, that AUTOMATIC1111 and ComfyUI load.
The LoRA formats come from a LoRA run's adapter (`result.lora`: peft's `get_peft_model_state_dict` of the trained
UNet; `result.lora_config`: its `peft.LoraConfig`), converted by diffusers' own functions as its training scripts do,
or, for a full-weight run, from the truncated SVD of its weight change against `base` (`lora_extract.py`).
`dtype` ('fp16', 'bf16', 'fp32'; default: as trained) applies to every format.
"""

from __future__ import annotations

import copy
import math
import os
import tempfile
from pathlib import Path

import torch

from .backbone import with_unet
from .io import WEIGHT_FILE_SUFFIXES, atomic_folder, atomic_write, refuse_to_destroy

FORMATS = ("diffusers", "single-file", "lora", "kohya")
FILE_FORMATS = ("single-file", "kohya")  # one .safetensors file; the others write a folder
DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
LORA_WEIGHT_NAME = "pytorch_lora_weights.safetensors"  # the file name diffusers' load_lora_weights looks for


def export(result_or_pipeline, path: str | os.PathLike, format: str = "diffusers", overwrite: bool = False,
           source: str | os.PathLike | None = None, dtype: str | None = None, base=None, rank: int = 16) -> Path:
    """Write an unlearned model to `path` in `format` ('diffusers', 'single-file', 'lora' or 'kohya'); returns the
    path written.

    `result_or_pipeline`: an `UnlearnResult` (`.pipeline`; for the LoRA formats `.lora` and `.lora_config`) or a
    pipeline. 'diffusers': `path` is a folder, written whole or not at all. 'single-file' and 'kohya': `path` is a
    `.safetensors` file. 'lora': `path` is a folder that gets `pytorch_lora_weights.safetensors`.
    A full-weight run reaches the LoRA formats with `base` (the pipeline it was unlearned from): the SVD of its
    weight change at `rank` (`lora_extract.extract_lora` returns the approximation error too).
    Nothing is destroyed: an existing file or non-empty folder at `path` is refused unless `overwrite=True`, and a
    `path` that is (or holds) the model being exported (`source`, the run folder it came from, or the folder its
    pipeline was loaded from) is refused even then.
    """
    if format not in FORMATS:
        raise ValueError(f"unknown format {format!r}; choose one of {', '.join(FORMATS)}")
    if dtype is not None and dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)} (or None: as trained)")
    path = Path(path)
    pipe = getattr(result_or_pipeline, "pipeline", result_or_pipeline)
    if format in ("diffusers", "single-file"):
        check_target(path, format, overwrite, [source, *_loaded_from(pipe)])
        if format == "single-file":
            return save_single_file(pipe, path, dtype)
        return save_diffusers(_in_dtype(pipe, dtype), path)
    lora, lora_config = getattr(result_or_pipeline, "lora", None), getattr(result_or_pipeline, "lora_config", None)
    if lora is None and base is not None:  # the SVD of the weight change, once the target is known to be safe
        check_target(path, format, overwrite, [source, *_loaded_from(pipe)])
        from .lora_extract import extract_lora

        lora, lora_config, _ = extract_lora(base, pipe, rank)
    if lora is None:
        raise ValueError(f"format {format!r} exports a LoRA, but this run trained full weights (it has no LoRA); "
                         "pass base=<the pipeline it was unlearned from> to extract one by SVD (rank=...), use "
                         "format='diffusers' or 'single-file', or train with params='lora'")
    if lora_config is None:
        raise ValueError("the run's LoRA comes without its lora_config (the peft LoraConfig it was trained with), "
                         "which fixes its rank and scale; pass a result that has both")
    check_target(path, format, overwrite, [source, *_loaded_from(pipe)])
    if dtype is not None:
        lora = {k: v.to(DTYPES[dtype]) for k, v in lora.items()}
    if format == "lora":
        return save_lora(lora, lora_config, path)
    return save_kohya(lora, lora_config, path, pipe=pipe)


def _in_dtype(pipe, dtype):
    # a copy in `dtype` (the caller's pipeline stays as it was); the same object when nothing changes
    if dtype is None or all(p.dtype == DTYPES[dtype] for p in pipe.unet.parameters()):
        return pipe
    return copy.deepcopy(pipe).to(dtype=DTYPES[dtype])


def _loaded_from(pipe) -> list[str]:
    # the local folders a pipeline and its UNet were loaded from (their configs' _name_or_path)
    found = []
    for obj in (pipe, getattr(pipe, "unet", None)):
        name = getattr(getattr(obj, "config", None), "_name_or_path", None)
        if name and Path(name).exists():
            found.append(name)
    return found


def check_target(path: Path, format: str, overwrite: bool, sources) -> None:
    """One clear error, before anything is written, for a target that would destroy something: the model being
    exported (or a folder holding it), an existing file or non-empty folder without `overwrite`, a folder path for
    a file format or the other way round."""
    refuse_to_destroy(path, sources, "export target", "the model being exported", "pass another path")
    if format not in FILE_FORMATS and path.suffix in WEIGHT_FILE_SUFFIXES:
        raise ValueError(f"format {format!r} writes a folder, but {str(path)!r} names a file; pass a folder path "
                         "(one .safetensors file: format 'single-file' for the whole model, 'kohya' for a LoRA)")
    if format in FILE_FORMATS and path.exists() and path.is_dir():
        raise ValueError(f"{str(path)!r} is a folder; format {format!r} writes one .safetensors file: pass a file path")
    if format in FILE_FORMATS and path.suffix != ".safetensors":
        raise ValueError(f"format {format!r} writes one .safetensors file; pass a path ending in .safetensors, "
                         f"got {str(path)!r}")
    if format not in FILE_FORMATS and path.exists() and not path.is_dir():
        raise ValueError(f"{str(path)!r} is a file; format {format!r} writes a folder: pass a folder path")
    if not overwrite and path.exists() and (path.is_file() or any(path.iterdir())):
        raise ValueError(f"export target {str(path)!r} exists and is not empty; pass overwrite=True (on the command "
                         "line --overwrite) to replace it, or another path")


def save_diffusers(pipe, folder: Path) -> Path:
    """`pipe.save_pretrained` into a temp folder beside `folder`, then swap it in: a crash leaves the old one whole."""
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"{str(folder)!r} is a file; format 'diffusers' writes a folder: pass a folder path")
    return atomic_folder(folder, lambda tmp: _without_adapters(pipe).save_pretrained(tmp))


def save_single_file(pipe, file: Path, dtype: str | None = None) -> Path:
    """The pipeline's UNet, VAE and text encoder as one `.safetensors` in the original SD layout, checked by
    diffusers' own converters before it is written (`original_layout.check_round_trip`)."""
    from safetensors.torch import save_file

    from .original_layout import check_round_trip, original_state_dict

    state = original_state_dict(pipe)
    check_round_trip(pipe, state)
    if dtype is not None:
        state = {k: v.to(DTYPES[dtype]) for k, v in state.items()}
    file.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(file, lambda tmp: save_file(state, tmp, metadata={"format": "pt"}))
    return file


def kohya_metadata(lora: dict[str, torch.Tensor], lora_config, pipe=None, name: str = "") -> dict[str, str]:
    """kohya's `ss_*` keys (kohya-ss/sd-scripts train_network.py at 0010c81; its extract_lora_from_models.py writes
    the same minimum: ss_v2, ss_base_model_version, ss_network_module/dim/alpha), as strings: what AUTOMATIC1111 sorts LoRAs by
    (AUTOMATIC1111 extensions-builtin/Lora/network.py lines 38-45 at 0a0efa3, `detect_version`: SD-2 where ss_v2 is
    "True", SD-1 for any other metadata).
    The base is told from the cross-attention width of the LoRA's to_k (768: SD-1.x, 1024: SD-2.x)."""
    width = next((v.shape[1] for k, v in lora.items() if "attn2.to_k.lora_A" in k), None)
    version = {768: "sd_v1", 1024: "sd_v2"}.get(width, "unlearnkit-embedded")
    scheduler = getattr(pipe, "scheduler", None)
    if version == "sd_v2" and getattr(getattr(scheduler, "config", None), "prediction_type", "") == "v_prediction":
        version += "_v"  # kohya's get_model_version_str_for_sd1_sd2: v-parameterised
    return {"ss_network_module": "networks.lora", "ss_network_dim": str(lora_config.r),
            "ss_network_alpha": str(float(lora_config.lora_alpha)), "ss_v2": str(version.startswith("sd_v2")),
            "ss_base_model_version": version, "ss_output_name": name, "format": "pt"}


def _without_adapters(pipe):
    # a UNet that still carries LoRA layers would save them as extra keys no loader expects: fuse them into a copy
    if not getattr(pipe.unet, "peft_config", None):
        return pipe
    unet = copy.deepcopy(pipe.unet)
    unet.fuse_lora()
    unet.unload_lora()
    return with_unet(pipe, unet)


def save_lora(lora: dict[str, torch.Tensor], lora_config, folder: Path) -> Path:
    """diffusers' LoRA file for the UNet adapter `lora` (peft format), with `lora_config` as its metadata.

    The metadata carries rank and alpha, so `load_lora_weights` applies the LoRA at the scale it was trained with.
    """
    from diffusers.loaders import StableDiffusionLoraLoaderMixin

    if folder.exists() and not folder.is_dir():
        raise ValueError(f"{str(folder)!r} is a file; format 'lora' writes a folder for load_lora_weights: "
                         "pass a folder path")
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{folder.name}.", dir=folder.parent) as tmp:
        StableDiffusionLoraLoaderMixin.save_lora_weights(
            # peft's key names as they are: diffusers' training scripts first rename them to its older
            # `.lora.down/.lora.up` names (convert_state_dict_to_diffusers), which renames attention layers only —
            # a LoRA on a convolution too (one extracted from esd-u's run) then loads without its attention part
            tmp, unet_lora_layers=_cpu(lora),
            unet_lora_adapter_metadata=lora_config.to_dict(), weight_name=LORA_WEIGHT_NAME)
        os.replace(Path(tmp) / LORA_WEIGHT_NAME, folder / LORA_WEIGHT_NAME)
    return folder


def save_kohya(lora: dict[str, torch.Tensor], lora_config, file: Path, pipe=None) -> Path:
    """One kohya-format `.safetensors` file (`lora_unet_*.lora_down.weight`, `.lora_up.weight`, `.alpha`) with
    kohya's metadata (`kohya_metadata`)."""
    from diffusers.loaders import StableDiffusionLoraLoaderMixin
    from diffusers.utils import convert_state_dict_to_kohya
    from safetensors.torch import save_file

    if file.suffix != ".safetensors":
        raise ValueError(f"format 'kohya' writes one .safetensors file; pass a path ending in .safetensors, "
                         f"got {str(file)!r}")
    if lora_config.alpha_pattern:
        raise ValueError("format 'kohya' takes one lora_alpha for all layers; this LoraConfig has an alpha_pattern")
    kohya = convert_state_dict_to_kohya(StableDiffusionLoraLoaderMixin.pack_weights(_cpu(lora), "unet"))
    # diffusers writes alpha = rank (scale 1); A1111 and ComfyUI scale a layer by alpha / rank, so write the alpha
    # that gives peft's scale: lora_alpha / rank, or lora_alpha / sqrt(rank) with rsLoRA
    for key in [k for k in kohya if k.endswith(".alpha")]:
        rank = kohya[key.removesuffix(".alpha") + ".lora_down.weight"].shape[0]
        scale = lora_config.lora_alpha / (math.sqrt(rank) if lora_config.use_rslora else rank)
        kohya[key] = torch.tensor(scale * rank, dtype=torch.float32)
    file.parent.mkdir(parents=True, exist_ok=True)
    metadata = kohya_metadata(lora, lora_config, pipe, name=file.stem)
    atomic_write(file, lambda tmp: save_file(kohya, tmp, metadata=metadata))
    return file


def _cpu(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous() for k, v in state_dict.items()}


def read_lora(folder: str | os.PathLike):
    """(peft-format UNet state dict, LoraConfig) of a folder written by `export(..., format='lora')`."""
    from diffusers.loaders import StableDiffusionLoraLoaderMixin
    from diffusers.utils import convert_all_state_dict_to_peft
    from peft import LoraConfig

    folder = Path(folder)
    if not (folder / LORA_WEIGHT_NAME).exists():
        raise ValueError(f"{str(folder)!r} holds no {LORA_WEIGHT_NAME}; pass a folder written by export(..., "
                         "format='lora')")
    state_dict, _, metadata = StableDiffusionLoraLoaderMixin.lora_state_dict(
        str(folder), weight_name=LORA_WEIGHT_NAME, return_lora_metadata=True)
    # diffusers packs the UNet's weights and config under the prefix "unet."; load_lora_adapter strips it the same way
    prefix = f"{StableDiffusionLoraLoaderMixin.unet_name}."
    if not metadata:
        raise ValueError(f"{str(folder / LORA_WEIGHT_NAME)!r} has no LoraConfig metadata (rank, alpha); re-export it "
                         "with unlearnkit's export(..., format='lora')")
    unet = {k.removeprefix(prefix): v for k, v in state_dict.items() if k.startswith(prefix)}
    config = {k.removeprefix(prefix): v for k, v in metadata.items() if k.startswith(prefix)}
    return convert_all_state_dict_to_peft(unet), LoraConfig(**config)
