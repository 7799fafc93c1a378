"""Stable Diffusion shapes: a randomly initialised SD pipeline for tests and benchmarks (no download).

The training loop, the sampler and the metric treat Stable Diffusion like the embedded model; only
the VAE (latent space) differs, and `models.encode_images` / `decode_latents` handle it.
"""

from __future__ import annotations

import torch


def build_tiny_sd(prompts: list[str], seed: int = 0, image_size: int = 32, shape: str = "tiny"):
    """A randomly initialised StableDiffusionPipeline (VAE + UNet in latent space + CLIP text encoder).

    shape 'tiny': a few thousand parameters for tests; 'sd15': Stable Diffusion 1.x's UNet, VAE and
    CLIP-L shapes (860M-parameter UNet) for GPU benchmarks. The tokenizer is word-level over the words of
    `prompts` (no download needed); everything else is the standard diffusers / transformers classes, so
    it saves and loads like a real SD checkpoint.
    """
    if shape not in ("tiny", "sd15"):
        raise ValueError(f"unknown shape {shape!r}; choose 'tiny' or 'sd15'")
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
                                        model_max_length=16 if shape == "tiny" else 77)
    if shape == "tiny":
        text = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2)
        vae = AutoencoderKL(block_out_channels=(8, 16, 16), down_block_types=("DownEncoderBlock2D",) * 3,
                            up_block_types=("UpDecoderBlock2D",) * 3, latent_channels=4, norm_num_groups=8,
                            sample_size=image_size)
        unet = UNet2DConditionModel(sample_size=image_size // 4, in_channels=4, out_channels=4,
                                    block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=8,
                                    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=16,
                                    attention_head_dim=4)
    else:  # Stable Diffusion 1.x shapes: the diffusers defaults are SD 1.x's UNet
        text = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12)
        vae = AutoencoderKL(block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
                            up_block_types=("UpDecoderBlock2D",) * 4, latent_channels=4, layers_per_block=2,
                            sample_size=image_size)
        unet = UNet2DConditionModel(sample_size=image_size // 8)
    text_encoder = CLIPTextModel(CLIPTextConfig(vocab_size=len(vocab), max_position_embeddings=tokenizer.model_max_length,
                                                pad_token_id=0, bos_token_id=2, eos_token_id=3, **text))
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    return StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
