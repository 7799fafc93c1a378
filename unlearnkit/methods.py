"""One config dataclass per method, with commented defaults.

Defaults are sized for the embedded model on 2 CPU cores (each method well under 5 minutes). The
Stable Diffusion defaults from the original papers are in `SD_DEFAULTS`, and in the comments.
Saddle and OVW are the paper's methods *as formulated in unlearnkit* (see shared/paper/METHODS.md).
"""

from __future__ import annotations

from dataclasses import dataclass, fields

PARAM_SETS = ("full", "xattn", "non-xattn")  # which UNet parameters train: all, cross-attention only, all but it


@dataclass
class UnlearnConfig:
    """Fields every method shares."""

    steps: int = 100  # optimiser steps
    lr: float = 1e-4  # Adam learning rate
    batch_size: int = 8  # forget (and retain) examples per step
    params: str = "full"  # one of PARAM_SETS
    help_weight: float = 0.0  # λ_help on L_help (METHODS.md); 0 keeps a baseline as published
    help_uncond_weight: float = 1.0  # β_∅: weight of the unconditional branch inside L_help
    grad_accum: int = 1  # gradient accumulation steps per optimiser step
    max_grad_norm: float = 1.0  # gradient clipping; 0 turns it off
    mixed_precision: str = "auto"  # 'auto' (bf16 on GPU, fp32 on CPU), 'no' or 'bf16'
    seed: int = 0  # seeds noise, timesteps and batch order
    checkpoint_every: int = 0  # steps between checkpoints when an out_dir is given (0: only at the end)
    data_seeds: int = 2  # base-model images per forget / anchor prompt in the training data
    retain_seeds: int = 1  # base-model images per retain prompt in the training data
    data_steps: int = 20  # DDIM steps used to generate the training data
    data_guidance: float = 2.0  # guidance scale used to generate the training data
    gradient_checkpointing: bool = False  # recompute UNet activations in backward (diffusers'); less memory, ~30% slower

    def __post_init__(self):
        for name in ("steps", "batch_size", "grad_accum", "data_seeds", "retain_seeds", "data_steps"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.help_weight < 0 or self.help_uncond_weight < 0:
            raise ValueError("help_weight and help_uncond_weight must be >= 0")
        if self.params not in PARAM_SETS:
            raise ValueError(f"unknown params {self.params!r}; choose one of: {', '.join(PARAM_SETS)}")
        if self.mixed_precision not in ("auto", "no", "bf16"):
            raise ValueError(f"unknown mixed_precision {self.mixed_precision!r}; choose auto, no or bf16")
        if self.checkpoint_every < 0:
            raise ValueError(f"checkpoint_every must be >= 0, got {self.checkpoint_every}")


@dataclass
class GAConfig(UnlearnConfig):
    """Gradient ascent on the forget data: a sanity baseline that collapses without a bound."""

    lr: float = 2e-5
    alpha: float = 0.0  # weight of L_simple on retain data


@dataclass
class ESDConfig(UnlearnConfig):
    """Erased Stable Diffusion (Gandikota et al. 2023). SD: η=1, lr 1e-5, 1000 steps, batch 1."""

    lr: float = 3e-4  # measured on the embedded object task: 1e-4 left forget rate 0.5, 3e-4 brings it to 0
    params: str = "xattn"  # esd-x: cross-attention only; esd-u: 'non-xattn'
    eta: float = 1.0  # negative guidance strength η
    x_t: str = "data"  # 'data': noise the base images x_f (cheaper); 'sample': partial DDIM sampling with c_f

    def __post_init__(self):
        super().__post_init__()
        if self.x_t not in ("data", "sample"):
            raise ValueError(f"unknown x_t {self.x_t!r}; choose 'data' or 'sample'")


@dataclass
class SalUnConfig(UnlearnConfig):
    """SalUn (Fan et al. 2024): random relabelling on a weight-saliency mask. SD: lr 1e-5, α=0.5, 5 epochs."""

    lr: float = 1e-4
    alpha: float = 0.5  # weight of L_simple on retain data
    mask_ratio: float = 0.5  # share of parameters (largest |∇ L_F|) that may change
    mask_batches: int = 4  # forget batches averaged for the saliency gradient

    def __post_init__(self):
        super().__post_init__()
        if not 0 < self.mask_ratio <= 1:
            raise ValueError(f"mask_ratio must be in (0, 1], got {self.mask_ratio}")


@dataclass
class SAConfig(UnlearnConfig):
    """Selective Amnesia (Heng & Soh 2023): surrogate + replay + EWC. SD: λ=50, γ=1, lr 1e-5, 200 epochs-equivalent."""

    lr: float = 1e-4
    lam: float = 50.0  # λ on the Fisher penalty Σ F (θ − θ0)²
    gamma: float = 1.0  # γ on the replay (generative replay of retain data) loss
    fisher_samples: int = 32  # replay examples whose squared gradients average into the diagonal Fisher


@dataclass
class SaddleConfig(UnlearnConfig):
    """Saddle (paper, as formulated in unlearnkit): min_θ max_{μ≥0} λ_help·L_help + μ(τ − L_F)."""

    lr: float = 1e-4
    help_weight: float = 1.0
    tau_mult: float = 2.0  # τ = tau_mult × the base model's forget loss L_F
    mu_lr: float = 2.0  # η_μ: step size of the projected ascent on μ
    mu_init: float = 1.0  # starting multiplier


@dataclass
class OVWConfig(UnlearnConfig):
    """OVW, the paper's overwrite (as formulated in unlearnkit): ε_θ(x_t, c_f) → ε_θ0(x_t, c_a), plus L_help."""

    lr: float = 1e-4
    help_weight: float = 1.0  # 0 gives the paper's "OVW without L_help" (Figure 1)
    x_t: str = "forget"  # noise x_f ('forget'), the anchor images x_a ('anchor') or half of each ('both')

    def __post_init__(self):
        super().__post_init__()
        if self.x_t not in ("forget", "anchor", "both"):
            raise ValueError(f"unknown x_t {self.x_t!r}; choose 'forget', 'anchor' or 'both'")


METHODS = {
    "ga": (GAConfig, {}),
    "esd-x": (ESDConfig, {"params": "xattn"}),
    "esd-u": (ESDConfig, {"params": "non-xattn"}),
    "salun": (SalUnConfig, {}),
    "sa": (SAConfig, {}),
    "saddle": (SaddleConfig, {}),
    "ovw": (OVWConfig, {}),
    "ovw-nohelp": (OVWConfig, {"help_weight": 0.0}),
}
ALIASES = {"esd": "esd-x"}

# the original papers' Stable Diffusion settings, for `unlearn(..., **SD_DEFAULTS[name])` on a GPU
SD_DEFAULTS = {
    "esd-x": dict(steps=1000, lr=1e-5, batch_size=1, x_t="sample", data_steps=50, data_guidance=7.5),
    "esd-u": dict(steps=1000, lr=1e-5, batch_size=1, x_t="sample", data_steps=50, data_guidance=7.5),
    "salun": dict(steps=1000, lr=1e-5, batch_size=8, data_steps=50, data_guidance=7.5),
    "sa": dict(steps=1000, lr=1e-5, batch_size=4, fisher_samples=200, data_steps=50, data_guidance=7.5),
    "saddle": dict(steps=500, lr=1e-5, batch_size=4, data_steps=50, data_guidance=7.5),
    "ovw": dict(steps=500, lr=1e-5, batch_size=4, data_steps=50, data_guidance=7.5),
    "ovw-nohelp": dict(steps=500, lr=1e-5, batch_size=4, data_steps=50, data_guidance=7.5),
    "ga": dict(steps=100, lr=1e-6, batch_size=4, data_steps=50, data_guidance=7.5),
}


def canonical(method: str) -> str:
    """The canonical method name; ValueError listing the known ones for anything else."""
    name = ALIASES.get(method, method)
    if name not in METHODS:
        raise ValueError(f"unknown method {method!r}; known methods: {', '.join([*METHODS, *ALIASES])}")
    return name


def make_config(method: str, **overrides) -> UnlearnConfig:
    """The config of `method` with `overrides`; unknown fields are a ValueError listing the valid ones."""
    cls, preset = METHODS[canonical(method)]
    valid = [f.name for f in fields(cls)]
    unknown = [k for k in overrides if k not in valid]
    if unknown:
        raise ValueError(f"unknown config field {unknown[0]!r} for method {method!r}; valid fields: {', '.join(valid)}")
    return cls(**{**preset, **overrides})
