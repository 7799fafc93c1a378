"""Models: the embedded text-to-image pipeline, and loading of any saved pipeline (Stable Diffusion too).

The embedded model is a diffusers `UNet2DConditionModel` in pixel space, a small transformers
`CLIPTextModel`, a word-level tokenizer over the world's vocabulary and a DDIM scheduler, packaged
as a `DiffusionPipeline` so `save_pretrained` / `from_pretrained` round-trip. Stable Diffusion adds
a VAE: the training loop and the sampler only ever call `encode_images` / `decode_latents`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from diffusers import DDIMScheduler, DDPMScheduler, DiffusionPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, PreTrainedTokenizerFast

from . import world

SPECIALS = ("[PAD]", "[UNK]", "[BOS]", "[EOS]")
VOCAB = (*SPECIALS, *world.GRAMMAR_WORDS, *world.OBJECTS, *world.COLOURS, *world.STYLES)
MAX_TOKENS = 8  # [BOS] a red circle , striped style [EOS]
BASE_DIR = Path(__file__).parent / "assets" / "base"

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


def check_words(tokenizer, prompts: list[str]) -> None:
    """Raise a ValueError naming the first word the tokenizer does not know (and listing the known ones)."""
    unk = tokenizer.unk_token_id
    if unk is None:
        return
    for p in prompts:
        enc = tokenizer(p, add_special_tokens=False)
        ids = enc["input_ids"]
        if unk in ids:
            words = tokenizer.backend_tokenizer.pre_tokenizer.pre_tokenize_str(p)
            bad = next(w for (w, _), i in zip(words, ids) if i == unk)
            known = sorted(w for w in tokenizer.get_vocab() if not w.startswith("["))
            raise ValueError(f"unknown word {bad!r} in prompt {p!r}; the model knows: {', '.join(known)}")


class UnlearnkitPipeline(DiffusionPipeline):
    """The embedded text-to-image model: pixel-space UNet + CLIP text encoder + word tokenizer + DDIM."""

    model_cpu_offload_seq = "text_encoder->unet"

    def __init__(self, unet, text_encoder, tokenizer, scheduler):
        super().__init__()
        self.register_modules(unet=unet, text_encoder=text_encoder, tokenizer=tokenizer, scheduler=scheduler)

    @torch.no_grad()
    def __call__(self, prompts, seeds=(0,), steps: int = 20, guidance_scale: float = 2.0, **kwargs):
        """Images [N,3,H,W] in [0,1], one per (prompt, seed), prompt-major; see `unlearnkit.sample`."""
        from .sampling import sample

        return sample(self, prompts, seeds, steps=steps, guidance_scale=guidance_scale, **kwargs)


PREDICTION_TYPES = ("epsilon", "v_prediction")  # what a UNet may predict: SD 1.x ε, SD 2.x and the embedded base v


def check_prediction_type(prediction_type: str) -> str:
    """`prediction_type` itself, or a ValueError naming it and the supported ones."""
    if prediction_type not in PREDICTION_TYPES:
        raise ValueError(f"prediction_type {prediction_type!r} is not supported; unlearnkit trains and samples "
                         f"{' and '.join(map(repr, PREDICTION_TYPES))} models")
    return prediction_type


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


def is_latent(pipe) -> bool:
    """True for pipelines with a VAE (Stable Diffusion): the UNet then works in latent space."""
    return getattr(pipe, "vae", None) is not None


def pipeline_device(pipe) -> torch.device:
    return next(pipe.unet.parameters()).device


def encode_prompts(pipe, prompts: list[str]) -> torch.Tensor:
    """`encoder_hidden_states` [N, tokens, dim] for a list of prompts ('' is the unconditional prompt)."""
    check_words(pipe.tokenizer, [p for p in prompts if p])
    ids = pipe.tokenizer(
        list(prompts), padding="max_length", max_length=pipe.tokenizer.model_max_length, truncation=True,
        return_tensors="pt",
    ).input_ids.to(pipeline_device(pipe))
    return pipe.text_encoder(ids)[0]


def encode_images(pipe, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Images [N,3,H,W] in [0,1] -> the UNet's input space (pixels in [-1,1], or scaled VAE latents)."""
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be [N, 3, H, W] RGB in [0, 1], got shape {tuple(images.shape)}")
    if not is_latent(pipe):
        size = sample_shape(pipe)[1:]
        if tuple(images.shape[2:]) != size:
            raise ValueError(f"this model takes {size[0]}x{size[1]} images, got {images.shape[2]}x{images.shape[3]}; "
                             "resize them first")
    elif images.shape[2] % 8 or images.shape[3] % 8:
        raise ValueError(f"Stable Diffusion's VAE takes sides that are multiples of 8, got {tuple(images.shape[2:])}")
    x = images.to(pipeline_device(pipe)) * 2 - 1
    if not is_latent(pipe):
        return x
    x = x.to(pipe.vae.dtype)
    return pipe.vae.encode(x).latent_dist.sample(generator) * pipe.vae.config.scaling_factor


def decode_latents(pipe, latents: torch.Tensor) -> torch.Tensor:
    """Inverse of `encode_images`: images [N,3,H,W] in [0,1], float32."""
    if is_latent(pipe):
        latents = pipe.vae.decode(latents.to(pipe.vae.dtype) / pipe.vae.config.scaling_factor).sample
    return ((latents.float() + 1) / 2).clamp(0, 1)


def sample_shape(pipe) -> tuple[int, int, int]:
    """(channels, height, width) of the UNet's input."""
    cfg = pipe.unet.config
    size = cfg.sample_size if isinstance(cfg.sample_size, int) else cfg.sample_size[0]
    return (cfg.in_channels, size, size)


def training_scheduler(pipe) -> DDPMScheduler:
    """The DDPM scheduler with the pipeline's noise schedule, for adding noise during training."""
    return DDPMScheduler.from_config(pipe.scheduler.config)


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def _resolve(device, dtype):
    device = torch.device(device or default_device())
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was asked for but no GPU is available; use device='cpu'")
    return device, dtype or torch.float32


def load_pipeline(path_or_id: str | os.PathLike, device=None, dtype=None):
    """Load a saved pipeline: the embedded model, a Stable Diffusion folder or hub id, or an unlearned SD UNet.

    Returns the pipeline on `device` (default: cuda if available, else cpu) in `dtype` (default float32).
    """
    device, dtype = _resolve(device, dtype)
    path = Path(path_or_id)
    if path.exists():
        if not path.is_dir():
            raise ValueError(f"{str(path)!r} is a file; load_pipeline takes a pipeline folder (with model_index.json)")
        index = path / "model_index.json"
        unet_only = path / "unlearnkit_unet.json"
        if unet_only.exists():
            from .sd import load_unlearned_unet

            return load_unlearned_unet(path, device=device, dtype=dtype)
        if not index.exists():
            raise ValueError(
                f"{str(path)!r} has no model_index.json: it is not a saved pipeline; save one with "
                "pipe.save_pretrained(folder) or pass a Stable Diffusion folder / hub id"
            )
        try:
            class_name = json.loads(index.read_text())["_class_name"]
        except (json.JSONDecodeError, KeyError) as e:
            raise ValueError(f"{str(index)!r} is corrupt ({e}); re-save the pipeline") from e
        cls = UnlearnkitPipeline if class_name == "UnlearnkitPipeline" else DiffusionPipeline
    else:
        cls = DiffusionPipeline
    try:
        pipe = cls.from_pretrained(str(path_or_id), dtype=dtype)
    except (OSError, EnvironmentError) as e:
        raise ValueError(
            f"could not load a pipeline from {str(path_or_id)!r}: {e}. Pass a saved pipeline folder, or a hub id "
            "whose weights are in the local Hugging Face cache"
        ) from e
    if getattr(pipe, "safety_checker", None) is not None:
        pipe.safety_checker = None  # the kit compares images; a blacked-out image would corrupt the metric
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def load_base(device=None, dtype=None) -> UnlearnkitPipeline:
    """The shipped embedded base model (trained weights inside the package; loads offline)."""
    if not (BASE_DIR / "model_index.json").exists():
        raise ValueError(
            f"the shipped base model is missing at {BASE_DIR}; reinstall unlearnkit or train one with "
            "`unlearnkit train-base`"
        )
    return load_pipeline(BASE_DIR, device=device, dtype=dtype)


def weights_fingerprint(module: torch.nn.Module) -> str:
    """A short hash of a module's parameters and buffers (changes when any weight changes)."""
    import hashlib

    h = hashlib.sha1()
    for name, t in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]
