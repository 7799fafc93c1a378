"""Unlearning methods, one module each: its config dataclass and its step (`Method`), found by name.

Built in: `ga`, `esd-x` / `esd-u`, `salun`, `sa`, `saddle`, `ovw` / `ovw-nohelp` (the paper's comparison), and the
baselines every benchmark now includes: `uce` (closed form), `ca` / `ca-noise` (Concept Ablation), `fmn`
(Forget-Me-Not). Add your own
with `register_method` (see `base.py`).
"""

# each module registers its methods; imported in the order the kit lists them
from . import ga, esd, salun, sa, saddle, ovw, uce, ca, fmn  # noqa: F401, I001
from .base import (ALIASES, LORA_TARGETS, METHODS, PARAM_SETS, Method, UnlearnConfig, canonical, load_entry_points,
                   make_config, make_method, method_code_hash, param_predicate, register_method)
from .ca import CAConfig
from .esd import ESDConfig
from .fmn import FMNConfig
from .ga import GAConfig
from .ovw import OVWConfig
from .sa import SAConfig
from .saddle import SaddleConfig
from .salun import SalUnConfig
from .uce import UCEConfig

# the original papers' Stable Diffusion settings, for `unlearn(..., **SD_DEFAULTS[name])` on a GPU
SD_DEFAULTS = {
    # ESD: rohitgandikota/erasing train-scripts/train-esd.py lines 296-307 (b8aeab6d); no clipping
    "esd-x": dict(steps=1000, lr=1e-5, batch_size=1, x_t="sample", sample_steps=50, sample_guidance=3.0,
                  max_grad_norm=0.0, data_steps=50, data_guidance=7.5),
    "esd-u": dict(steps=1000, lr=1e-5, batch_size=1, x_t="sample", sample_steps=50, sample_guidance=3.0,
                  max_grad_norm=0.0, data_steps=50, data_guidance=7.5),
    "salun": dict(steps=1000, lr=1e-5, batch_size=8, data_steps=50, data_guidance=7.5),
    # SA: clear-nus/selective-amnesia (b736571): lr 1e-5 × 4 GPUs × batch 4 (main_forget.py 707-716), 200 epochs of
    # 1000 pairs ≈ 12,500 steps (forget_brad_pitt.yaml 133), a Fisher of 5000 examples (main_fim.py 349-351)
    "sa": dict(steps=12_500, lr=1.6e-4, batch_size=4, fisher_samples=5000, data_steps=50, data_guidance=7.5),
    # Concept Ablation: nupurkmr9/concept-ablation diffusers/README.md lines 28-42 (c11fb1bd)
    "ca": dict(steps=200, lr=1.6e-5, batch_size=4, data_steps=50, data_guidance=7.5),
    "ca-noise": dict(steps=200, lr=1.6e-5, batch_size=4, data_steps=50, data_guidance=7.5),
    "uce": dict(),
    # Forget-Me-Not: SHI-Labs/Forget-Me-Not configs/attn.yaml lines 9-46 (a4a81e82), for SD-2.1-base
    "fmn": dict(steps=35, lr=2e-6, batch_size=1, data_steps=50, data_guidance=7.5),
    "saddle": dict(steps=500, lr=1e-5, batch_size=4, data_steps=50, data_guidance=7.5),
    "ovw": dict(steps=500, lr=1e-5, batch_size=4, data_steps=50, data_guidance=7.5),
    "ovw-nohelp": dict(steps=500, lr=1e-5, batch_size=4, data_steps=50, data_guidance=7.5),
    "ga": dict(steps=100, lr=1e-6, batch_size=4, data_steps=50, data_guidance=7.5),
}

__all__ = ["Method", "UnlearnConfig", "register_method", "make_config", "make_method", "canonical", "METHODS",
           "method_code_hash", "param_predicate", "load_entry_points",
           "ALIASES", "PARAM_SETS", "LORA_TARGETS", "SD_DEFAULTS", "GAConfig", "ESDConfig", "SalUnConfig", "SAConfig", "SaddleConfig", "UCEConfig", "CAConfig", "FMNConfig",
           "OVWConfig"]
