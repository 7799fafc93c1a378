"""UCE, Unified Concept Editing (Gandikota et al. 2024): a closed-form edit of the cross-attention keys and values.

For every W in attn2.to_k / attn2.to_v, with c the erased tokens' embeddings, c* their guide's (the anchor
prompt's, aligned), p the preserved prompts' tokens:

    W' = (λ W + s_e Σ (W c*) cᵀ + s_p Σ (W p) pᵀ)(λ I + s_e Σ c cᵀ + s_p Σ p pᵀ)⁻¹          (docs/METHODS.md, eq. 32)

the minimiser of s_e Σ ‖W'c − W c*‖² + s_p Σ ‖W'p − W p‖² + λ ‖W' − W‖²_F. As its authors compute it
(rohitgandikota/unified-concept-editing, train-scripts/train_erase.py `edit_model` lines 232-312, commit 35e91e28;
the same algebra in trainscripts/uce_sd_erase.py lines 56-82, commit 28c81ed5): λ = 0.5, erase scale 1, preserve
scale max(0.1, 1/#preserved prompts) (train_erase.py lines 427-428, 442). No image, optimiser or backward: `steps=0`.
Which tokens: the authors erase a prompt that is the concept alone (its last word token onwards); on a task's
sentences the kit erases the positions where a forget prompt's tokens differ from its anchor's (the concept's
word; `tokens="concept"`), or every token (`tokens="all"`). The preserved prompts are the task's retain prompts,
every token.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..backbone import tokenize
from .base import Method, UnlearnConfig, register_method


@dataclass
class UCEConfig(UnlearnConfig):
    """UCE (Gandikota et al. 2024): closed form on attn2's K/V. SD: λ 0.5, erase scale 1, seconds on a GPU."""

    steps: int = 0  # closed form: the edit in prepare is the whole method
    params: str = "xattn-kv"  # attn2.to_k and attn2.to_v (the authors' with_to_k=True)
    lamb: float = 0.5  # λ: how strongly W' stays at W
    erase_scale: float = 1.0  # s_e
    preserve_scale: float | None = None  # s_p; None: max(0.1, 1/#retain prompts), the authors' rule
    tokens: str = "concept"  # 'concept': the positions where forget and anchor prompt differ; 'all': every token

    def __post_init__(self):
        super().__post_init__()
        if self.tokens not in ("concept", "all"):
            raise ValueError(f"unknown tokens {self.tokens!r}; choose 'concept' or 'all'")
        if self.lamb <= 0 or self.erase_scale < 0 or (self.preserve_scale is not None and self.preserve_scale < 0):
            raise ValueError("lamb must be > 0, erase_scale and preserve_scale >= 0")


@torch.no_grad()
def uce_edit(W: torch.Tensor, erase: torch.Tensor, guide: torch.Tensor, preserve: torch.Tensor, lamb: float,
             erase_scale: float, preserve_scale: float) -> torch.Tensor:
    """W' of eq. 32 for one projection W [out, D]: erase / guide are aligned token rows [n, D], preserve [m, D].
    Computed in float64 and returned in W's dtype."""
    w, c, c_star, p = (x.double() for x in (W, erase, guide, preserve))
    eye = torch.eye(w.shape[1], dtype=torch.float64, device=w.device)
    mat1 = lamb * w + erase_scale * (c_star @ w.T).T @ c + preserve_scale * (p @ w.T).T @ p
    mat2 = lamb * eye + erase_scale * c.T @ c + preserve_scale * p.T @ p
    return torch.linalg.solve(mat2, mat1.T).T.to(W.dtype)  # mat2 is symmetric: mat1 @ mat2⁻¹


def token_rows(ctx, tokens: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(erase rows of e_f, guide rows of e_a), aligned: the token positions where each forget prompt's ids differ
    from its anchor's (tokens='concept') or every position ('all')."""
    if tokens == "all":
        return ctx.e_f.flatten(0, 1), ctx.e_a.flatten(0, 1)
    ids_f = tokenize(ctx.pipe.tokenizer, ctx.forget_prompts, ctx.e_f.device)
    ids_a = tokenize(ctx.pipe.tokenizer, ctx.anchor_prompts, ctx.e_f.device)
    differ = ids_f != ids_a
    if not differ.any(dim=1).all():
        bad = ctx.forget_prompts[int((~differ.any(dim=1)).nonzero()[0])]
        raise ValueError(f"uce: forget prompt {bad!r} has the same tokens as its anchor; nothing to erase")
    return ctx.e_f[differ], ctx.e_a[differ]


@register_method("uce")
class UCE(Method):
    config_class = UCEConfig
    needs_anchors = True

    def prepare(self, ctx):
        cfg = self.config
        erase, guide = token_rows(ctx, cfg.tokens)
        preserve = ctx.e_r.flatten(0, 1)
        s_p = cfg.preserve_scale if cfg.preserve_scale is not None else max(0.1, 1 / len(ctx.retain_prompts))
        for name, w in ctx.trainable:
            if w.ndim != 2:
                raise ValueError(f"uce edits linear projections; params={cfg.params!r} selected {name!r} {tuple(w.shape)}")
            w.data.copy_(uce_edit(w, erase, guide, preserve, cfg.lamb, cfg.erase_scale, s_p))
        self.state = {"edited": [n for n, _ in ctx.trainable], "erased_tokens": len(erase), "preserve_scale": s_p}
