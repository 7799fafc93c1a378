"""Reference transcription of ESD (Gandikota et al. 2023, "Erasing Concepts from Diffusion Models"), torch only.

Source: github.com/rohitgandikota/erasing
  train-scripts/train-esd.py, blob fb8d6380587601be638c2224034c83e3ee970049, at commit
  b8aeab6d4b6b613b88ad0bf219e3697c79003838 (the last commit that changed it; identical at
  6eb7dc8f266e3cdcbbf6ae9e030fbd44f03bb2ab, the parent of 414dc94e1d331bfa8f41d61d248b355ee1760aa4, which
  deleted the CompVis code). The fetched snapshot's HEAD, 25613d27892326e0c7770f7f3555bea4be150089, no longer
  has train-scripts/; read the file with `git show b8aeab6d:train-scripts/train-esd.py`.
  ldm/models/diffusion/ddim.py (blob 47b9dec86a9a8a2a09a19c2a5ea9636a787f057a) and
  ldm/modules/diffusionmodules/util.py (blob a952e6c40308c33edd422da0ce6a60f47e73661b), same commit.

The procedure (train-esd.py, `train_esd`, lines 105-264), one iteration per optimiser step, batch 1:
  1. t_enc ~ U{0, …, ddim_steps−1} (line 226; ddim_steps = 50, line 307).
  2. The UNet's timestep: og_num = round(t_enc/ddim_steps·1000), og_num_lim = round((t_enc+1)/ddim_steps·1000),
     t_ddpm ~ U{og_num, …, og_num_lim−1} (lines 228-231).
  3. start_code ~ N(0, I), shape (1, 4, 64, 64) (line 233).
  4. z = DDIM sample (eta 0, lines 158, 205-207) from start_code with the *model being trained* (`model`, not
     `model_orig`), classifier-free guidance `start_guidance` (default 3, line 297) under the concept prompt
     emb_p, stopped by till_T = t_enc (line 237; `esd_partial_ddim` below), all under no_grad (line 235).
  5. e_0 = ε_θ0(z, t_ddpm, ∅), e_p = ε_θ0(z, t_ddpm, c) from the frozen copy (lines 239-240);
     e_n = ε_θ(z, t_ddpm, c) from the trained model, with gradient (line 243). emb_n is the same prompt as emb_p
     (lines 221-222).
  6. loss = MSELoss(e_n, e_0 − η(e_p − e_0)) (line 247; η = negative_guidance, default 1, line 298); Adam
     (line 210; lr default 1e-5, line 300); 1000 iterations (line 299). No gradient clipping, no EMA, no
     retain term.

What the DDIM chain of step 4 does (ddim.py lines 135-196 with t_start = −1, till_T = t_enc; util.py lines 46-74):
the 50 DDIM timesteps are 1, 21, …, 981 (range(0, 1000, 20) + 1); `timesteps[:t_start]` with t_start = −1 drops the
last one (981), so the chain starts at 961, treating start_code as x_961, and runs 50 − t_enc steps for
t_enc >= 1 (49 for t_enc = 0: `index + 1 == till` never holds). It ends at the noise level ᾱ of DDIM timestep
index t_enc − 2, i.e. DDPM step 20·t_enc − 39 (ᾱ_0 for t_enc <= 1), while the UNet is then queried at
t_ddpm ∈ [20·t_enc, 20·t_enc + 19]: in the reference the timestep given to the UNet is 39 to 58 DDPM steps
*noisier* than z actually is. `esd_reached_timestep` gives that level.

The ESD-u / ESD-x parameter sets (lines 163-201) are name filters on CompVis UNet names; `esd_train_param_names`
applies them to diffusers names with the mapping stated there.

The later diffusers rewrite (esd_sd.py at the snapshot HEAD 25613d27, lines 24-49, 122-196) differs: it samples x_t
with the *frozen* base, queries the UNet at the scheduler timestep it stopped at, its target is
e_p − η(e_p − e_0) (line 191, `esd_loss_esd_sd`), it trains Linear/Conv2d modules only (no norms), and its
defaults are η = 2, guidance 3, lr 5e-5, 200 iterations (lines 57-62). The functions here follow train-esd.py
unless they say otherwise.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

REPO = "rohitgandikota/erasing"
COMMIT = "b8aeab6d4b6b613b88ad0bf219e3697c79003838"
SNAPSHOT_HEAD = "25613d27892326e0c7770f7f3555bea4be150089"
DEFAULTS = dict(iterations=1000, lr=1e-5, batch_size=1, optimizer="Adam", start_guidance=3.0, negative_guidance=1.0,
                ddim_steps=50, ddim_eta=0.0, grad_clip=None)  # train-esd.py lines 158, 210, 233, 296-307


def _is_compvis_out(name: str, naming: str) -> bool:
    # CompVis `out.` = UNetModel.out = Sequential(GroupNorm, SiLU, conv): names out.0.* and out.2.*;
    # diffusers: conv_norm_out.* and conv_out.*
    if naming == "compvis":
        return name.startswith("out.")
    return name.startswith("conv_norm_out.") or name.startswith("conv_out.")


def esd_train_param_names(names, method: str, naming: str = "diffusers") -> list[str]:
    """The parameter names train-esd.py trains for `method` (train-scripts/train-esd.py lines 163-201, commit
    b8aeab6d4b6b613b88ad0bf219e3697c79003838), in the order given.

    'noxattn' (ESD-u, line 167-172): all but names that start with 'out.' or contain 'attn2' or 'time_embed'.
    'xattn' (ESD-x, lines 179-182): names containing 'attn2'. Also 'selfattn' ('attn1', lines 174-177), 'full'
    (lines 184-186), 'notime' (lines 188-191).

    Mapping CompVis → diffusers (naming='diffusers', the default): 'attn1' / 'attn2' are spelled the same in
    both (transformer_blocks.N.attn2.to_q/to_k/to_v/to_out.0; the LayerNorm norm2 before attn2 is outside
    'attn2' in both). CompVis `time_embed.0/2` (the timestep MLP) is diffusers `time_embedding.linear_1/2`, and
    the reference's substring test 'time_embed' matches 'time_embedding' literally; the ResBlocks' time
    projections (CompVis `emb_layers.1`, diffusers `time_emb_proj`) match neither, so they train in both.
    CompVis `out.0` / `out.2` (final GroupNorm and conv) are diffusers `conv_norm_out` / `conv_out`.
    naming='compvis' applies the filters literally. Not expressible from the reference: diffusers parameters
    with no CompVis counterpart, such as the kit's `add_embedding.*` (the pooled text embedding added to the
    time embedding, `addition_embed_type="text"`). SD 1.x has no such module, so the reference makes no decision
    about it. Under the literal name rule it trains in 'noxattn', and this function keeps that reading.
    'xlayer' / 'selflayer' (lines 192-201) name CompVis block indices (input_blocks.4/7, output_blocks.6/8)
    and are not mapped.
    """
    names = list(names)
    if naming not in ("diffusers", "compvis"):
        raise ValueError(f"naming must be 'diffusers' or 'compvis', got {naming!r}")
    if method == "noxattn":
        return [n for n in names if not (_is_compvis_out(n, naming) or "attn2" in n or "time_embed" in n)]
    if method == "xattn":
        return [n for n in names if "attn2" in n]
    if method == "selfattn":
        return [n for n in names if "attn1" in n]
    if method == "full":
        return names
    if method == "notime":
        return [n for n in names if not (_is_compvis_out(n, naming) or "time_embed" in n)]
    if method in ("xlayer", "selflayer"):
        raise NotImplementedError(f"{method!r} selects CompVis block indices (train-esd.py lines 192-201); "
                                  "no name mapping to diffusers is defined here")
    raise ValueError(f"unknown train_method {method!r}")


def esd_draw_t_enc(ddim_steps: int = 50, rng: torch.Generator | None = None) -> int:
    """t_enc = torch.randint(ddim_steps, (1,)) (train-esd.py line 226, commit b8aeab6d): uniform on 0..ddim_steps−1."""
    return int(torch.randint(ddim_steps, (1,), generator=rng))


def esd_timestep_from_t_enc(t_enc: int, ddim_steps: int = 50, rng: torch.Generator | None = None,
                            num_train_timesteps: int = 1000) -> torch.Tensor:
    """The DDPM timestep the reference gives the UNet for a DDIM stop index t_enc (train-esd.py lines 228-231,
    commit b8aeab6d4b6b613b88ad0bf219e3697c79003838):

        og_num = round((t_enc / ddim_steps) * 1000);  og_num_lim = round(((t_enc + 1) / ddim_steps) * 1000)
        t_enc_ddpm = torch.randint(og_num, og_num_lim, (1,))

    Python's round (half to even) as in the reference. The reference hard-codes 1000; `num_train_timesteps`
    replaces that literal (leave it at 1000 to match). Returns a LongTensor of shape [1].
    """
    og_num = round((int(t_enc) / ddim_steps) * num_train_timesteps)
    og_num_lim = round((int(t_enc + 1) / ddim_steps) * num_train_timesteps)
    return torch.randint(og_num, og_num_lim, (1,), generator=rng)


def esd_ddim_timesteps(ddim_steps: int = 50, num_train_timesteps: int = 1000) -> torch.Tensor:
    """make_ddim_timesteps('uniform', ...) (util.py lines 46-60, commit b8aeab6d): range(0, T, T//S) + 1."""
    c = num_train_timesteps // ddim_steps
    return torch.arange(0, num_train_timesteps, c) + 1


def esd_reached_timestep(t_enc: int, ddim_steps: int = 50, num_train_timesteps: int = 1000) -> int:
    """The DDPM timestep whose ᾱ the reference's partial sample z ends at for till_T = t_enc (derived from ddim.py
    lines 149-196 and util.py lines 63-74, commit b8aeab6d): the last step run has index max(t_enc, 1) − 1 and
    produces x at alphas_prev[index] = ᾱ[ddim_timesteps[index − 1]] (ᾱ[0] for index 0)."""
    ts = esd_ddim_timesteps(ddim_steps, num_train_timesteps)
    last_index = max(int(t_enc), 1) - 1
    return 0 if last_index == 0 else int(ts[last_index - 1])


@torch.no_grad()
def esd_partial_ddim(unet, alphas_cumprod: torch.Tensor, emb_p: torch.Tensor, emb_0: torch.Tensor,
                     start_code: torch.Tensor, t_enc: int, ddim_steps: int = 50, start_guidance: float = 3.0,
                     prediction_type: str = "epsilon") -> torch.Tensor:
    """z = quick_sample_till_t(emb_p, start_guidance, start_code, t_enc) (train-esd.py lines 205-207, 237, commit
    b8aeab6d4b6b613b88ad0bf219e3697c79003838): `sample_model` (lines 39-65) → DDIMSampler.sample (ddim.py lines
    67-132) → ddim_sampling (lines 135-196) with t_start = −1, till_T = t_enc, eta = 0 → p_sample_ddim (lines
    199-261), on a diffusers UNet: `unet(x, t, encoder_hidden_states).sample`.

    `unet` is the model being trained (the reference samples with `model`). emb_0 is the empty prompt's embedding
    (uc, line 44; used only when start_guidance != 1, as in p_sample_ddim line 205). alphas_cumprod: the
    [num_train_timesteps] schedule. prediction_type='epsilon' is the reference. 'v_prediction' is NOT in the
    reference: CompVis's DDIMSampler at this commit treats every output as ε. For the kit's v-prediction base
    it converts the guided output by ε = √ᾱ_t·v + √(1−ᾱ_t)·x, which is exact for a v-model, before the
    unchanged DDIM update.
    """
    T = alphas_cumprod.shape[0]
    ac = alphas_cumprod.float().to(start_code.device)
    ddim_ts = esd_ddim_timesteps(ddim_steps, T)  # [S]
    ddim_alphas = ac[ddim_ts]
    ddim_alphas_prev = torch.cat([ac[:1], ac[ddim_ts[:-1]]])
    timesteps = ddim_ts[:-1]  # timesteps[:t_start] with t_start = -1 (ddim.py line 155)
    total_steps = timesteps.shape[0]
    till = t_enc if t_enc is not None else 0  # ddim.py lines 166-169
    img = start_code
    b = img.shape[0]
    guided = start_guidance != 1.0 and emb_0 is not None
    for i, step in enumerate(torch.flip(timesteps, [0]).tolist()):
        index = total_steps - i - 1
        ts = torch.full((b,), step, device=img.device, dtype=torch.long)
        if not guided:
            e_t = unet(img, ts, encoder_hidden_states=emb_p).sample
        else:
            x_in, t_in = torch.cat([img] * 2), torch.cat([ts] * 2)
            c_in = torch.cat([emb_0.expand(b, -1, -1), emb_p.expand(b, -1, -1)])
            e_t_uncond, e_t = unet(x_in, t_in, encoder_hidden_states=c_in).sample.chunk(2)
            e_t = e_t_uncond + start_guidance * (e_t - e_t_uncond)
        a_t = ddim_alphas[index]
        if prediction_type == "v_prediction":  # not in the reference (see the docstring)
            e_t = a_t.sqrt() * e_t + (1 - a_t).sqrt() * img
        elif prediction_type != "epsilon":
            raise ValueError(f"unknown prediction_type {prediction_type!r}")
        a_prev = ddim_alphas_prev[index]
        sqrt_one_minus_at = (1.0 - a_t).sqrt()
        pred_x0 = (img - sqrt_one_minus_at * e_t) / a_t.sqrt()
        dir_xt = (1.0 - a_prev).sqrt() * e_t  # sigma_t = 0 (eta = 0)
        img = a_prev.sqrt() * pred_x0 + dir_xt
        if index + 1 == till:  # ddim.py lines 194-195
            break
    return img


def esd_loss(e_n: torch.Tensor, e_0: torch.Tensor, e_p: torch.Tensor, negative_guidance: float = 1.0) -> torch.Tensor:
    """criteria(e_n, e_0 − negative_guidance·(e_p − e_0)), criteria = torch.nn.MSELoss() (mean over all elements)
    (train-esd.py lines 211, 244-247, commit b8aeab6d4b6b613b88ad0bf219e3697c79003838). e_0, e_p come from the
    frozen model under no_grad (lines 235-240); e_n from the trained model (line 243)."""
    return F.mse_loss(e_n, (e_0 - (negative_guidance * (e_p - e_0))).detach())


def esd_loss_esd_sd(e_n: torch.Tensor, e_0: torch.Tensor, e_p: torch.Tensor, negative_guidance: float = 2.0,
                    e_from: torch.Tensor | None = None) -> torch.Tensor:
    """The later diffusers script's loss, for comparison (esd_sd.py lines 165-191 at the snapshot HEAD
    25613d27892326e0c7770f7f3555bea4be150089): MSE(e_n, e_from − η(e_p − e_0)) with e_from = e_p when no
    `--erase_from` is given, i.e. target e_p − η(e_p − e_0) (not e_0 − η(e_p − e_0) as in train-esd.py)."""
    e_from = e_p if e_from is None else e_from
    return F.mse_loss(e_n, (e_from - (negative_guidance * (e_p - e_0))).detach())


def esd_reference_step(unet, base_unet, alphas_cumprod, emb_p, emb_0, rng: torch.Generator | None = None,
                       ddim_steps: int = 50, start_guidance: float = 3.0, negative_guidance: float = 1.0,
                       latent_shape=(1, 4, 64, 64), prediction_type: str = "epsilon"):
    """One iteration of train-esd.py lines 218-247 (commit b8aeab6d) up to the loss: returns (loss, z, t_ddpm,
    t_enc). The caller does backward / Adam. The draws come in the reference's order: t_enc, t_ddpm,
    start_code."""
    t_enc = esd_draw_t_enc(ddim_steps, rng)
    t_ddpm = esd_timestep_from_t_enc(t_enc, ddim_steps, rng, alphas_cumprod.shape[0])
    start_code = torch.randn(tuple(latent_shape), generator=rng)
    z = esd_partial_ddim(unet, alphas_cumprod, emb_p, emb_0, start_code, t_enc, ddim_steps, start_guidance,
                         prediction_type)
    with torch.no_grad():
        e_0 = base_unet(z, t_ddpm, encoder_hidden_states=emb_0).sample
        e_p = base_unet(z, t_ddpm, encoder_hidden_states=emb_p).sample
    e_n = unet(z, t_ddpm, encoder_hidden_states=emb_p).sample
    return esd_loss(e_n, e_0, e_p, negative_guidance), z, t_ddpm, t_enc
