"""Forget-Me-Not (Zhang, Wang, Xu, Wang, Shi 2023): attention re-steering. Push the cross-attention that image
queries pay to the concept's tokens towards zero, on the concept's own images.

    L_FMN(θ) = ‖ cat_l A_l(x_t^f, c_f, t)[:, :, :, S] ‖₂                                  (docs/METHODS.md, eq. 35)

A_l ∈ [B, heads, Q, T] is the softmax attention of cross-attention layer l (every module named `…attn2`), S the
concept's token positions of the prompt and, with `use_pooler`, the end-of-text position(s); the norm is the
Euclidean norm of every selected probability over layers, heads, queries and the batch: not squared, not averaged.
The denoising output is not used: no diffusion loss, no retain term. As its authors run it (SHI-Labs/Forget-Me-Not,
src/train_attn.py lines 131-154, 272-327 and 530-573, configs/attn.yaml, commit a4a81e82): x_t noises the concept's
images at t ~ U{0..T-1}, the whole UNet trains (only_optimize_ca false), AdamW with weight decay 1e-2, clipping at
1.0, a constant learning rate. Not as theirs: the kit puts the concept's own words in the prompt where the shipped
config first learns textual-inversion tokens for it (use_ti, their optional first stage); with a batch of more than
one the kit selects each row's own positions (the reference's mask tiling matches rows only at batch 1, which its
config uses). The attention maps are computed by forward hooks from the layer's own query and key projections, the
same function of the same inputs as inside the attention, so the loss and its gradient are the reference's
(tests/test_parity.py); the attention's output is the UNet's own.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..backbone import tokenize
from .base import Method, UnlearnConfig, register_method


@dataclass
class FMNConfig(UnlearnConfig):
    """Forget-Me-Not (Zhang et al. 2023). SD: 35 steps, lr 2e-6, batch 1, AdamW (configs/attn.yaml)."""

    # the authors' 2e-6 is for SD-2.1 at 35 steps. On the embedded object task (cpu profile, 50 steps, measured
    # 2026-12-02): 1e-5 kept triangle (forget rate 1.0), 1e-4 forgot it and every retain concept with it (lpips_ret
    # 0.70, retain accuracy 0.0); the default sits between, the equal-budget rule picks per task (bench/tune.py)
    lr: float = 3e-5
    optimizer: str = "adamw"
    weight_decay: float = 1e-2
    use_pooler: bool = True  # also steer the attention away from the end-of-text position(s) (the authors' default)

    def __post_init__(self):
        super().__post_init__()
        if not isinstance(self.use_pooler, bool):
            raise ValueError(f"use_pooler must be True or False, got {self.use_pooler!r}")


def concept_positions(tokenizer, prompts: list[str], concept: str, use_pooler: bool = True, device=None) -> torch.Tensor:
    """A bool [N, T] over the padded prompt ids: every occurrence of `concept`'s token ids and, with `use_pooler`,
    every position holding the end-of-text id (with SD 1.x's tokenizer, which pads with it, every padding position,
    as in the reference). A prompt without the concept's tokens is a ValueError naming it."""
    ids = tokenize(tokenizer, prompts, device)
    word = tokenizer(concept, add_special_tokens=False).input_ids
    if not word:
        raise ValueError(f"fmn: the concept {concept!r} has no tokens")
    n = len(word)
    word = torch.tensor(word, device=ids.device)
    at = torch.zeros_like(ids, dtype=torch.bool)
    for i in range(ids.shape[1] - n + 1):
        hit = (ids[:, i:i + n] == word).all(dim=1)
        at[:, i:i + n] |= hit[:, None]
    missing = [p for p, a in zip(prompts, at.any(dim=1)) if not a]
    if missing:
        raise ValueError(f"fmn: the forget prompt {missing[0]!r} does not contain the concept {concept!r}; give the "
                         "task the forget concept its prompts use (Task.forget_concept)")
    if use_pooler:
        at |= ids == tokenizer.eos_token_id
    return at


class AttentionMaps:
    """Forward hooks on every cross-attention (`…attn2`) of a UNet that keep its softmax attention [B, heads, Q, T],
    computed from the layer's own projections of its inputs, on passes with gradients (the trained pass: not the
    no-gradient passes of `ctx.current`, the sampler, or LoRA's base); `grad_only=False`: on every pass (to look at
    the maps, `pictures.quantities.attention_maps`). `names` are the layers, in the order their maps come."""

    def __init__(self, unet, grad_only: bool = True):
        self.maps: list[torch.Tensor] = []
        self.grad_only = grad_only
        self.names = [n for n, _ in unet.named_modules() if n.endswith("attn2")]
        self.handles = [m.register_forward_hook(self._hook, with_kwargs=True)
                        for n, m in unet.named_modules() if n.endswith("attn2")]
        if not self.handles:
            raise ValueError("fmn: the UNet has no cross-attention module named '…attn2'")

    def _hook(self, attn, args, kwargs, output):
        if self.grad_only and not torch.is_grad_enabled():
            return
        hidden = args[0] if args else kwargs["hidden_states"]
        context = kwargs.get("encoder_hidden_states", args[1] if len(args) > 1 else None)
        if context is None:
            raise ValueError("fmn: a cross-attention ran without encoder_hidden_states")
        if hidden.ndim == 4:  # a conv-shaped input, as the attention flattens it
            hidden = hidden.flatten(2).transpose(1, 2)
        query = attn.head_to_batch_dim(attn.to_q(hidden))
        key = attn.head_to_batch_dim(attn.to_k(context))
        probs = attn.get_attention_scores(query, key, None)  # [B·heads, Q, T], row b·heads + h
        self.maps.append(probs.unflatten(0, (hidden.shape[0], attn.heads)))

    def take(self) -> list[torch.Tensor]:
        maps, self.maps = self.maps, []
        return maps

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles, self.maps = [], []


def fmn_loss(maps: list[torch.Tensor], positions: torch.Tensor) -> torch.Tensor:
    """Eq. 35 for maps [B, heads, Q, T] of every layer and positions [B, T] (bool): the Euclidean norm of every
    selected probability."""
    mask = positions[:, None, None, :]
    return torch.cat([m.masked_select(mask) for m in maps]).norm()


@register_method("fmn")
class ForgetMeNot(Method):
    config_class = FMNConfig

    def prepare(self, ctx):
        concept = ctx.task.forget_concept
        if not concept:
            raise ValueError(f"fmn needs the task's forget concept (task {ctx.task.name!r} has none): its loss "
                             "steers the attention away from that word's tokens")
        self.positions = concept_positions(ctx.pipe.tokenizer, ctx.forget_prompts, concept, self.config.use_pooler,
                                           ctx.device)
        self.maps = AttentionMaps(ctx.unet)
        self.state = {"positions": self.positions.sum(dim=1).tolist(), "layers": len(self.maps.handles)}

    def step(self, ctx, forget):
        self.maps.take()  # nothing recorded before this step's pass counts
        pred = ctx.train(forget.x_t, forget.t, ctx.e_f[forget.idx])

        def loss(out):
            rows = out.rows(pred)
            return fmn_loss([m[rows] for m in self.maps.take()], self.positions[forget.idx])
        return loss

    def finish(self, ctx):
        self.maps.remove()
