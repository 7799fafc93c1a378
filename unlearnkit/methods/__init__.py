"""Unlearning methods, one module each: its config dataclass and its step (`Method`), found by name.

Built in: `ga`, `esd-x` / `esd-u`, `salun`, `sa`, `saddle`, `ovw` / `ovw-nohelp`. Add your own with
`register_method` (see `base.py`).
"""

# each module registers its methods; imported in the order the kit lists them
from . import ga, esd, salun, sa, saddle, ovw  # noqa: F401, I001
from .base import (ALIASES, LORA_TARGETS, METHODS, PARAM_SETS, Method, UnlearnConfig, canonical, load_entry_points,
                   make_config, make_method, method_code_hash, param_predicate, register_method)
from .esd import ESDConfig
from .ga import GAConfig
from .ovw import OVWConfig
from .sa import SAConfig
from .saddle import SaddleConfig
from .salun import SalUnConfig

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

__all__ = ["Method", "UnlearnConfig", "register_method", "make_config", "make_method", "canonical", "METHODS",
           "method_code_hash", "param_predicate", "load_entry_points",
           "ALIASES", "PARAM_SETS", "LORA_TARGETS", "SD_DEFAULTS", "GAConfig", "ESDConfig", "SalUnConfig", "SAConfig", "SaddleConfig",
           "OVWConfig"]
