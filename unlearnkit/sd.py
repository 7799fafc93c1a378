"""Stable Diffusion shapes: the published SD 1.x / 2.x architectures as constructor kwargs, and random SD pipelines
built from them (`build_tiny_sd`) for tests and benchmarks (no download).

The training loop, the sampler and the metric treat Stable Diffusion like the embedded model; only
the VAE (latent space) differs, and `models.encode_images` / `decode_latents` handle it.
"""

from __future__ import annotations

import torch


# Architectures as constructor kwargs: UNet2DConditionModel(**unet), CLIPTextConfig(**text), AutoencoderKL(**vae),
# DDIMScheduler(**scheduler). Each field is the published value; build_tiny_sd replaces only sample_size (from
# image_size) and the text encoder's vocab_size (its word-level tokenizer instead of CLIP's 49408 BPE tokens).

# Stable Diffusion 1.x (v1-4 and v1-5 share every shape). Sources: CompVis/stable-diffusion-v1-4 and
# runwayml/stable-diffusion-v1-5 on the Hugging Face hub, read from the copies in public GitHub repositories:
#   github.com/JSchalter/models  stable-diffusion-v1-4/{unet,text_encoder,vae}/config.json,
#                                stable-diffusion-v1-4/scheduler/scheduler_config.json
#   github.com/KiritoFD/dreambooth_  stable-diffusion-v1-5/{unet,vae}/config.json (the same fields)
#   github.com/Chinmay6824/AutoMedVis-Text-to-Video-Ad-Generation  stable-diffusion-v1-5/scheduler/scheduler_config.json
SD15_UNET = dict(  # unet/config.json
    in_channels=4, out_channels=4, sample_size=64,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    block_out_channels=(320, 640, 1280, 1280), layers_per_block=2,
    attention_head_dim=8,  # diffusers' name for the number of heads (8 everywhere: head widths 40, 80, 160)
    cross_attention_dim=768,  # the width of CLIP-L's hidden states (diffusers' default, 1280, does not fit them)
    norm_num_groups=32, norm_eps=1e-5, act_fn="silu", center_input_sample=False, downsample_padding=1,
    flip_sin_to_cos=True, freq_shift=0, mid_block_scale_factor=1,
)
SD15_TEXT = dict(  # text_encoder/config.json: CLIP ViT-L/14's text tower (openai/clip-vit-large-patch14)
    hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
    max_position_embeddings=77, hidden_act="quick_gelu", layer_norm_eps=1e-5,
)
SD15_VAE = dict(  # vae/config.json
    in_channels=3, out_channels=3, latent_channels=4, sample_size=512,
    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
    block_out_channels=(128, 256, 512, 512), layers_per_block=2, norm_num_groups=32, act_fn="silu",
    scaling_factor=0.18215,
)
SD15_SCHEDULER = dict(  # scheduler/scheduler_config.json (published as PNDMScheduler; the kit samples with DDIM)
    num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
    clip_sample=False, set_alpha_to_one=False, steps_offset=1, prediction_type="epsilon",
)

# Stable Diffusion 2.x: stabilityai/stable-diffusion-2-1 (768 px, v-prediction), read from the copy in
#   github.com/Luoyukeji/static-f  stable-diffusion-2-1/{unet,text_encoder,vae}/config.json,
#                                  stable-diffusion-2-1/scheduler/scheduler_config.json
# It is SD 1.x's UNet and VAE with these fields changed.
SD2_UNET = dict(
    SD15_UNET, sample_size=96,
    attention_head_dim=(5, 10, 20, 20),  # heads per block: every head is 64 wide
    cross_attention_dim=1024,  # the width of OpenCLIP-H's hidden states
    use_linear_projection=True, upcast_attention=True,
)
SD2_TEXT = dict(  # OpenCLIP ViT-H/14's text tower, its last layer dropped (23 of 24)
    hidden_size=1024, intermediate_size=4096, num_hidden_layers=23, num_attention_heads=16,
    max_position_embeddings=77, hidden_act="gelu", layer_norm_eps=1e-5,
)
SD2_VAE = dict(SD15_VAE, sample_size=768)  # scaling_factor is not in its config: AutoencoderKL's default, 0.18215
SD2_SCHEDULER = dict(SD15_SCHEDULER, prediction_type="v_prediction")  # published as DDIMScheduler

# narrow: the same blocks, layers, transformer depth, text encoder and cross_attention_dim with 10x fewer UNet
# channels (SD 2.x's keep its 5/10/20/20 heads, 8 wide) and a 4-block VAE at 1/8 width: a step takes seconds
NARROW_VAE = dict(SD15_VAE, block_out_channels=(16, 32, 64, 64), norm_num_groups=8)
SD15_NARROW_UNET = dict(SD15_UNET, block_out_channels=(32, 64, 128, 128), norm_num_groups=8)
SD2_NARROW_UNET = dict(SD2_UNET, block_out_channels=(40, 80, 160, 160), norm_num_groups=8)

# tiny: a few thousand parameters for tests (a 3-block VAE: latents at 1/4 of the image side)
TINY_UNET = dict(
    in_channels=4, out_channels=4, block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=8,
    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=16, attention_head_dim=4,
)
TINY_TEXT = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                 max_position_embeddings=16)
TINY_VAE = dict(block_out_channels=(8, 16, 16), down_block_types=("DownEncoderBlock2D",) * 3,
                up_block_types=("UpDecoderBlock2D",) * 3, latent_channels=4, norm_num_groups=8)
TINY_SCHEDULER = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                      set_alpha_to_one=False, steps_offset=1)

# shape name -> (unet, text, vae, scheduler)
SHAPES = {
    "tiny": (TINY_UNET, TINY_TEXT, TINY_VAE, TINY_SCHEDULER),
    "sd15": (SD15_UNET, SD15_TEXT, SD15_VAE, SD15_SCHEDULER),
    "sd2": (SD2_UNET, SD2_TEXT, SD2_VAE, SD2_SCHEDULER),
    "sd15-narrow": (SD15_NARROW_UNET, SD15_TEXT, NARROW_VAE, SD15_SCHEDULER),
    "sd2-narrow": (SD2_NARROW_UNET, SD2_TEXT, NARROW_VAE, SD2_SCHEDULER),
}


def build_tiny_sd(prompts: list[str], seed: int = 0, image_size: int = 32, shape: str = "tiny"):
    """A randomly initialised StableDiffusionPipeline (VAE + UNet in latent space + CLIP text encoder).

    `shape` is one of SHAPES: 'tiny' (a few thousand parameters, for tests), 'sd15' / 'sd2' (the published
    Stable Diffusion 1.x / 2.x architectures: an 860M / 866M-parameter UNet), or 'sd15-narrow' / 'sd2-narrow'
    (the same depth, text encoder and cross-attention width with ~10x fewer UNet and VAE channels, so every
    method runs a step in seconds on a CPU). The tokenizer is word-level over the words of `prompts` (no
    download needed), so the text encoder's vocabulary is those words, not CLIP's 49408 BPE tokens; everything
    else is the standard diffusers / transformers classes, so it saves and loads like a real SD checkpoint.
    """
    if shape not in SHAPES:
        raise ValueError(f"unknown shape {shape!r}; known shapes: {', '.join(SHAPES)}")
    unet_cfg, text_cfg, vae_cfg, scheduler_cfg = SHAPES[shape]
    factor = 2 ** (len(vae_cfg["block_out_channels"]) - 1)  # the VAE halves the side once per block but the last
    if image_size <= 0 or image_size % factor:
        raise ValueError(f"image_size must be a positive multiple of {factor} for shape {shape!r}, got {image_size}")
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import CLIPTextConfig, CLIPTextModel, PreTrainedTokenizerFast

    torch.manual_seed(seed)
    words = sorted({w for p in prompts for w in pre_tokenizers.Whitespace().pre_tokenize_str(p) for w in [w[0]]})
    vocab = {w: i for i, w in enumerate(["[PAD]", "[UNK]", "[BOS]", "[EOS]", *words])}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="[BOS] $A [EOS]", special_tokens=[("[BOS]", 2), ("[EOS]", 3)])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]",
                                        bos_token="[BOS]", eos_token="[EOS]",
                                        model_max_length=text_cfg["max_position_embeddings"])
    # built in this order (VAE, UNet, text encoder) so a seed gives the same weights as before the configs existed
    vae = AutoencoderKL(**{**vae_cfg, "sample_size": image_size})
    unet = UNet2DConditionModel(**{**unet_cfg, "sample_size": image_size // factor})
    text_encoder = CLIPTextModel(CLIPTextConfig(vocab_size=len(vocab), pad_token_id=0, bos_token_id=2, eos_token_id=3,
                                                **text_cfg))
    scheduler = DDIMScheduler(**scheduler_cfg)
    return StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
