"""Models: the embedded text-to-image pipeline, and loading of any saved pipeline (Stable Diffusion too).

The embedded model is a diffusers `UNet2DConditionModel` in pixel space, a small transformers
`CLIPTextModel`, a word-level tokenizer over the world's vocabulary and a DDIM scheduler, packaged
as a `DiffusionPipeline` so `save_pretrained` / `from_pretrained` round-trip. Stable Diffusion adds
a VAE: the training loop and the sampler only ever call `encode_images` / `decode_latents`.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

import torch
from diffusers import DDIMScheduler, DiffusionPipeline, UNet2DConditionModel
from diffusers.loaders import StableDiffusionLoraLoaderMixin
from transformers import CLIPTextConfig, CLIPTextModel, PreTrainedTokenizerFast

from . import world
from .io import WEIGHT_FILE_SUFFIXES
from .losses import check_prediction_type
from .sampling import sample

SPECIALS = ("[PAD]", "[UNK]", "[BOS]", "[EOS]")
VOCAB = (*SPECIALS, *world.GRAMMAR_WORDS, *world.OBJECTS, *world.COLOURS, *world.STYLES)
MAX_TOKENS = 8  # [BOS] a red circle , striped style [EOS]
BASE_DIR = Path(__file__).parent / "assets" / "base"
UNET_MARKER = "unlearnkit_unet.json"  # an older run folder: only an unlearned UNet and the id of its base
SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt")  # one-file checkpoints in the original CompVis / A1111 layout

# model sizes: "base" is the shipped model, "tiny" is for fast tests
UNET_CONFIGS = {
    "base": dict(block_out_channels=(32, 64, 128), layers_per_block=1, attention_head_dim=8),
    "tiny": dict(block_out_channels=(8, 16, 16), layers_per_block=1, attention_head_dim=4),
}
TEXT_CONFIGS = {
    "base": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4),
    "tiny": dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2),
}


def build_tokenizer() -> PreTrainedTokenizerFast:
    """A word-level tokenizer over exactly the world's words (`VOCAB`)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    vocab = {w: i for i, w in enumerate(VOCAB)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    tok.post_processor = processors.TemplateProcessing(
        single="[BOS] $A [EOS]", special_tokens=[("[BOS]", vocab["[BOS]"]), ("[EOS]", vocab["[EOS]"])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", bos_token="[BOS]", eos_token="[EOS]",
        model_max_length=MAX_TOKENS,
    )


class UnlearnkitPipeline(DiffusionPipeline, StableDiffusionLoraLoaderMixin):
    """The embedded text-to-image model: pixel-space UNet + CLIP text encoder + word tokenizer + DDIM.

    Like Stable Diffusion's pipeline it takes LoRAs: `pipe.load_lora_weights(folder)` (diffusers' LoRA loader).
    """

    model_cpu_offload_seq = "text_encoder->unet"

    def __init__(self, unet, text_encoder, tokenizer, scheduler):
        super().__init__()
        self.register_modules(unet=unet, text_encoder=text_encoder, tokenizer=tokenizer, scheduler=scheduler)

    @torch.no_grad()
    def __call__(self, prompts, seeds=(0,), steps: int = 20, guidance_scale: float = 2.0, **kwargs):
        """Images [N,3,H,W] in [0,1], one per (prompt, seed), prompt-major; see `unlearnkit.sample`."""
        return sample(self, prompts, seeds, steps=steps, guidance_scale=guidance_scale, **kwargs)


def build_pipeline(size: str = "base", seed: int = 0, prediction_type: str = "v_prediction") -> UnlearnkitPipeline:
    """A randomly initialised embedded pipeline ('base': the shipped architecture, 'tiny': for tests).

    The prompt reaches the UNet twice: through cross-attention at 16x16 and 8x8, and pooled into the time
    embedding (`addition_embed_type="text"`), so global properties (colour, style) steer every ResNet block.
    """
    if size not in UNET_CONFIGS:
        raise ValueError(f"unknown model size {size!r}; known sizes: {', '.join(UNET_CONFIGS)}")
    torch.manual_seed(seed)
    tokenizer = build_tokenizer()
    text_cfg = TEXT_CONFIGS[size]
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(VOCAB), max_position_embeddings=MAX_TOKENS, pad_token_id=0, bos_token_id=2,
            eos_token_id=3, **text_cfg,
        )
    )
    unet = UNet2DConditionModel(
        sample_size=world.RESOLUTION,
        in_channels=3,
        out_channels=3,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=text_cfg["hidden_size"],
        norm_num_groups=8 if size == "tiny" else 32,
        addition_embed_type="text",
        addition_embed_type_num_heads=text_cfg["num_attention_heads"],
        **UNET_CONFIGS[size],
    )
    # cosine schedule: a linear one wastes most steps on pure noise at 32x32 (Nichol & Dhariwal 2021). Its last
    # step has SNR ~2e-9, where an epsilon model's x0 estimate divides by ~5e-5: v-prediction (Salimans & Ho 2022)
    # stays well-posed there, and its loss weighs the noisy steps that decide shape and colour
    check_prediction_type(prediction_type)
    scheduler = DDIMScheduler(
        num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", prediction_type=prediction_type,
        clip_sample=True, set_alpha_to_one=True, timestep_spacing="trailing",
    )
    return UnlearnkitPipeline(unet=unet, text_encoder=text_encoder, tokenizer=tokenizer, scheduler=scheduler)


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


@contextlib.contextmanager
def _quiet_loading():
    # diffusers' and transformers' "Loading ..." bars: noise in every notebook's setup cell
    from diffusers.utils import logging as dlog
    from transformers.utils import logging as tlog

    dlog.disable_progress_bar()
    tlog.disable_progress_bar()
    try:
        yield
    finally:
        dlog.enable_progress_bar()
        tlog.enable_progress_bar()


def resolve_device(device=None) -> torch.device:
    """`device` as a torch.device; None or 'auto' is cuda when a GPU is available, else cpu."""
    if device in (None, "auto"):
        return torch.device(default_device())
    try:
        return torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"unknown device {device!r}; use 'auto', 'cpu', 'cuda' or 'cuda:N'") from e


def _resolve(device, dtype):
    device = resolve_device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was asked for but no GPU is available; use device='cpu'")
    return device, dtype or torch.float32


def load_pipeline(path_or_id: str | os.PathLike, config: str | os.PathLike | None = None, device="auto", dtype=None):
    """Load a saved pipeline: the embedded model, a Stable Diffusion folder or hub id, an unlearned SD UNet, or a
    single-file checkpoint (.safetensors / .ckpt, original CompVis / A1111 layout) with `config`.

    `config`: for a single-file checkpoint only, a local diffusers folder of the same architecture (a saved pipeline
    or a downloaded model's folder) whose configs and tokenizer are read; nothing is downloaded.
    Returns the pipeline on `device` (default: cuda if available, else cpu) in `dtype` (default float32).
    """
    device, dtype = _resolve(device, dtype)
    path = Path(path_or_id)
    if path.exists() and not path.is_dir():
        pipe = _load_single_file(path, config, dtype)
    else:
        if config is not None:
            raise ValueError(f"config is for single-file checkpoints; {str(path_or_id)!r} is not a file (a pipeline "
                             "folder or hub id carries its own configs): drop config")
        if path.exists():
            index = path / "model_index.json"
            unet_only = path / UNET_MARKER
            if unet_only.exists():
                return load_unlearned_unet(path, device=device, dtype=dtype)
            if not index.exists():
                raise ValueError(
                    f"{str(path)!r} has no model_index.json: it is not a saved pipeline; save one with "
                    "pipe.save_pretrained(folder) or pass a Stable Diffusion folder / hub id"
                )
            cls = UnlearnkitPipeline if _class_name(index) == "UnlearnkitPipeline" else DiffusionPipeline
        else:
            text = str(path_or_id)
            local = text.startswith((".", "/", "~")) or "\\" in text or text.count("/") > 1
            if local or path.suffix in WEIGHT_FILE_SUFFIXES:  # a local path, not a hub id ('org/name')
                raise ValueError(f"{text!r} does not exist (from {os.getcwd()}); pass an existing pipeline folder, "
                                 "run folder or checkpoint file, or a hub id ('org/name')")
            cls = DiffusionPipeline
        try:
            with _quiet_loading():
                pipe = cls.from_pretrained(str(path_or_id), dtype=dtype)
        except (OSError, EnvironmentError) as e:
            raise ValueError(
                f"could not load a pipeline from {str(path_or_id)!r}: {e}. Pass a saved pipeline folder, or a hub id "
                "whose weights are in the local Hugging Face cache"
            ) from e
    # a safety checker stays (and `requires_safety_checker` with it), so an export keeps what the model came with; the
    # kit's own sampler (sampling.py) never calls it, so no image the metric reads is blacked out
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def _class_name(index: Path) -> str:
    try:
        return json.loads(index.read_text())["_class_name"]
    except (json.JSONDecodeError, KeyError) as e:
        raise ValueError(f"{str(index)!r} is corrupt ({e}); re-save the pipeline") from e


def _load_single_file(path: Path, config, dtype):
    """A pipeline from one checkpoint file with the configs and tokenizer of the diffusers folder `config`, offline."""
    import diffusers
    from diffusers.loaders.single_file_utils import SingleFileComponentError

    if path.suffix not in SINGLE_FILE_SUFFIXES:
        raise ValueError(f"{str(path)!r} is a file; load_pipeline takes a pipeline folder (with model_index.json) "
                         f"or a single-file checkpoint ({' / '.join(SINGLE_FILE_SUFFIXES)})")
    if config is None:
        raise ValueError(f"{str(path)!r} is a single-file checkpoint; pass config=<a diffusers folder with the same "
                         "architecture, e.g. a saved pipeline or a downloaded model's folder> to read its configs from")
    index = Path(config) / "model_index.json"
    if not index.exists():
        raise ValueError(f"config {str(config)!r} is not a diffusers folder (no model_index.json); pass a saved "
                         "pipeline or a downloaded model's folder with the checkpoint's architecture")
    name = _class_name(index)
    cls = getattr(diffusers, name, None)
    if not hasattr(cls, "from_single_file"):
        raise ValueError(f"config {str(config)!r} is a {name}, which has no single-file format; pass the folder of "
                         "a Stable Diffusion model with the checkpoint's architecture")
    try:
        return cls.from_single_file(str(path), config=str(config), local_files_only=True, dtype=dtype)
    except (SingleFileComponentError, OSError, ValueError, KeyError, RuntimeError) as e:
        why = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__  # diffusers' first line
        raise ValueError(f"could not load the single-file checkpoint {str(path)!r} with the configs of "
                         f"{str(config)!r}: {why} The file must be a {name} checkpoint in the original (CompVis / "
                         "A1111) layout and config a folder of the same architecture") from e


def load_base(device="auto", dtype=None) -> UnlearnkitPipeline:
    """The shipped embedded base model (trained weights inside the package; loads offline)."""
    if not (BASE_DIR / "model_index.json").exists():
        raise ValueError(
            f"the shipped base model is missing at {BASE_DIR}; reinstall unlearnkit or train one with "
            "`unlearnkit train-base`"
        )
    return load_pipeline(BASE_DIR, device=device, dtype=dtype)


def open_model(spec, role: str = "model", config=None, device="auto"):
    """The pipeline `spec` names, or `spec` itself when it already is one: 'base' (the embedded model), a diffusers
    folder, a run folder (`unlearnkit unlearn --out`: its pipeline/), a single-file checkpoint (with `config`) or a
    hub id. A missing local path is one ValueError that names `role` (the argument it came from) and what to pass."""
    if not isinstance(spec, (str, os.PathLike)):
        return spec
    if str(spec) == "base":
        return load_base(device=device)
    path = Path(spec)
    if path.is_dir() and not (path / "model_index.json").exists() and (path / "pipeline").is_dir():
        path = path / "pipeline"  # a run folder written by `unlearnkit unlearn --out`
    text = str(spec)
    if not path.exists() and (text.startswith((".", "/", "~")) or text.count("/") != 1):
        raise ValueError(f"{role} {text!r} does not exist (from {Path.cwd()}); pass 'base', a diffusers folder, a run "
                         "folder (unlearnkit unlearn --out), a single-file checkpoint with --config, or a hub id")
    try:  # --config belongs to single-file checkpoints; a folder or hub id carries its own
        return load_pipeline(path, config=config if path.is_file() else None, device=device)
    except ValueError as e:
        raise ValueError(f"{role} {text!r}: {e}") from e


def load_unlearned_unet(folder: str | Path, device="auto", dtype=None):
    """The base pipeline recorded in `folder` with the unlearned UNet from `folder/unet` in place: the run folders
    `unlearnkit unlearn` wrote for Stable Diffusion before 2026-12-02 (now it writes a whole diffusers folder)."""
    folder = Path(folder)
    try:
        marker = json.loads((folder / UNET_MARKER).read_text())
        base = marker["base"]
    except (json.JSONDecodeError, KeyError) as e:
        raise ValueError(f"{folder / UNET_MARKER} is corrupt ({e}); re-save the unlearned model") from e
    pipe = load_pipeline(base, config=marker.get("config"), device=device, dtype=dtype)
    unet = UNet2DConditionModel.from_pretrained(folder / "unet", dtype=dtype or torch.float32)
    arch = lambda cfg: {k: v for k, v in cfg.items() if not k.startswith("_")}  # noqa: E731
    if arch(unet.config) != arch(pipe.unet.config):
        raise ValueError(f"the UNet in {folder} does not fit the base {base!r} (another architecture); "
                         "pass the base it was unlearned from")
    pipe.unet = unet.to(pipe.device)
    return pipe
