"""Reference transcription of UCE's closed-form cross-attention edit (Gandikota et al. 2024, "Unified Concept Editing
in Diffusion Models", eq. 7), torch only.

Source: github.com/rohitgandikota/unified-concept-editing. Two versions, one algebra:
  (old) train-scripts/train_erase.py `edit_model` (lines 172-315) and __main__ (lines 317-446), blob
        10ccf0005acdf9d4fccd02de4e551ed3944a201b, last changed in bd5fb515392e986758fa3197e382148227db8f25 and
        identical at 35e91e28df2f2fbcbef105fa079a436641a5142b (the parent of 4502388c597bafb38e409545d75fc275775924b4,
        which replaced it). The paper's code.
  (new) trainscripts/uce_sd_erase.py `UCE` (lines 12-91) and __main__ (lines 93-202), blob
        acfc0554725fcdfbf9db7d30fc204dbd0befe57c at the snapshot HEAD 28c81ed5a3e41277c1a0dc55f738e7ab188e9718
        (last changed in ea9644fd83ed929c47ae26aef2681e2b2f24bedb).

For every cross-attention projection W ∈ {attn2.to_v, attn2.to_k} of the UNet (old: lines 175-194, with_to_k=True;
new: lines 17-20), with c the erase prompt's token embeddings, v* = W_old·c* the ORIGINAL projection of the guide
prompt's aligned embeddings, p the preserve prompts' embeddings:

    W_new = (λ·W + s_e·Σ v* cᵀ + s_p·Σ (W p) pᵀ) · (λ·I + s_e·Σ c cᵀ + s_p·Σ p pᵀ)⁻¹       (old lines 233-312)

Which tokens are used:
  old: erase: rows final_token_idx … 76 − max(0, farthest − final_token_idx) of the 77 CLIP embeddings, where
       final_token_idx = attention_mask.sum() − 2 (the last word token), the guide's rows aligned the same
       way (lines 253-260): the last word token, EOS and all padding. Preserve: all 77 rows (lines 297-303). A
       guide '' becomes ' ' (lines 214-216); no --guided_concepts means ' ' (line 391); the retain list
       always starts with '' (line 422).
  new: the single token at attention_mask.sum() − 2 (lines 34-42); for the empty prompt that is index 0, BOS.
Defaults: old: λ = 0.5 (hard-coded at the call, line 442; edit_model's own default is 0.1), erase_scale 1
(line 329), preserve_scale = max(0.1, 1/len(retain_texts)) when not given (lines 427-428), technique
'replace' (line 324). New: λ 0.5, erase_scale 1, preserve_scale 1 (lines 105-107); guide '' for objects,
'art' for art (lines 136-143). The reference's to_k / to_v have no bias (SD's attn2; the kit's too), so
layer(x) = x Wᵀ.
"""

from __future__ import annotations

import torch

REPO = "rohitgandikota/unified-concept-editing"
COMMIT_OLD = "35e91e28df2f2fbcbef105fa079a436641a5142b"
COMMIT_NEW = "28c81ed5a3e41277c1a0dc55f738e7ab188e9718"
DEFAULTS_OLD = dict(lamb=0.5, erase_scale=1.0, preserve_scale="max(0.1, 1/len(['']+preserve))", technique="replace",
                    with_to_k=True)
DEFAULTS_NEW = dict(lamb=0.5, erase_scale=1.0, preserve_scale=1.0)


@torch.no_grad()
def uce_edit(W: torch.Tensor, erase_embs, target_embs, preserve_embs, lamb: float = 0.5, erase_scale: float = 1.0,
             preserve_scale: float = 1.0, technique: str = "replace") -> torch.Tensor:
    """The new weight of one projection, transcribing train-scripts/train_erase.py `edit_model` lines 232-312
    (commit 35e91e28df2f2fbcbef105fa079a436641a5142b); the same algebra as trainscripts/uce_sd_erase.py lines
    56-82 (commit 28c81ed5).

    W: [out, D], the original weight. erase_embs[i], target_embs[i]: [n_i, D] aligned token rows of the i-th
    erase prompt and its guide (`uce_old_token_rows` or `uce_last_token` pick them). preserve_embs[j]: [m_j, D].

        mat1 = λ·W;  mat2 = λ·I_D                                               (lines 234, 237)
        erase i:   values = layer(new_emb) = target_i Wᵀ   ('replace', line 278)
                   or 'tensor' (lines 267-276): u = layer(old_emb)/‖layer(old_emb)‖ (one Frobenius norm over all
                   rows), new = layer(new_emb), values = new − (Σ u⊙new)·u
                   mat1 += s_e·Σ_rows value cᵀ;  mat2 += s_e·Σ_rows c cᵀ            (lines 281-287)
        preserve j: values = p_j Wᵀ;  mat1 += s_p·Σ value pᵀ;  mat2 += s_p·Σ p pᵀ      (lines 289-310)
        W_new = mat1 @ inverse(mat2)                                             (line 312)

    The values use the original W. In the old script every layer's own targets are computed before that layer
    is overwritten (values[layer_num], lines 264-283). The new script keeps `original_modules` (line 21).
    """
    W = W.detach()
    mat1 = lamb * W
    mat2 = lamb * torch.eye(W.shape[1], device=W.device, dtype=W.dtype)
    for old_emb, new_emb in zip(erase_embs, target_embs):
        context = old_emb.detach()
        if technique == "tensor":
            o_embs = old_emb @ W.T
            u = o_embs / o_embs.norm()
            new_embs = new_emb @ W.T
            new_emb_proj = (u * new_embs).sum()
            value = new_embs - new_emb_proj * u
        else:  # 'replace' and anything else (line 279-280)
            value = new_emb @ W.T
        context_vector = context.reshape(context.shape[0], context.shape[1], 1)
        context_vector_T = context.reshape(context.shape[0], 1, context.shape[1])
        value_vector = value.reshape(value.shape[0], value.shape[1], 1)
        mat1 += erase_scale * (value_vector @ context_vector_T).sum(dim=0)
        mat2 += erase_scale * (context_vector @ context_vector_T).sum(dim=0)
    for p in preserve_embs:
        context = p.detach()
        value = p @ W.T
        context_vector = context.reshape(context.shape[0], context.shape[1], 1)
        context_vector_T = context.reshape(context.shape[0], 1, context.shape[1])
        value_vector = value.reshape(value.shape[0], value.shape[1], 1)
        mat1 += preserve_scale * (value_vector @ context_vector_T).sum(dim=0)
        mat2 += preserve_scale * (context_vector @ context_vector_T).sum(dim=0)
    return mat1 @ torch.inverse(mat2)


def uce_old_token_rows(old_emb: torch.Tensor, new_emb: torch.Tensor, old_mask_sum: int, new_mask_sum: int):
    """The aligned erase / guide rows of train_erase.py lines 253-260 (commit 35e91e28): old_emb, new_emb are one
    prompt's [L, D] text-encoder outputs (L = 77 padded), *_mask_sum = attention_mask.sum().

        final_token_idx = old_mask_sum − 2;  final_token_idx_new = new_mask_sum − 2
        farthest = max(final_token_idx_new, final_token_idx)
        old_emb[final_token_idx : L − max(0, farthest − final_token_idx)]
        new_emb[final_token_idx_new : L − max(0, farthest − final_token_idx_new)]
    """
    final_token_idx, final_token_idx_new = int(old_mask_sum) - 2, int(new_mask_sum) - 2
    farthest = max([final_token_idx_new, final_token_idx])
    old = old_emb[final_token_idx:len(old_emb) - max(0, farthest - final_token_idx)]
    new = new_emb[final_token_idx_new:len(new_emb) - max(0, farthest - final_token_idx_new)]
    return old, new


def uce_last_token(emb: torch.Tensor, mask_sum: int) -> torch.Tensor:
    """trainscripts/uce_sd_erase.py lines 29-42 (commit 28c81ed5): t_emb[0][:, attention_mask.sum() − 2, :], the
    last word token of a [1, L, D] prompt embedding, as a [1, D] row."""
    return emb[:, int(mask_sum) - 2, :]
