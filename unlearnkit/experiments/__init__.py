"""Experiments: profiles, the tuned configs, the run cache and the learning-rate ladder. Above evaluation.

profiles (the sizes of an experiment), tuned (the figures' methods and the configs `bench/tune.py` picked, with
their lab notes), cache (`run_method`), ladder (`run_until_forgotten`), compare (every method on one task).
"""

from .cache import run_method
from .compare import compare_methods
from .ladder import ESCALATE_STEPS, ESCALATION, run_until_forgotten
from .profiles import PROFILES, Profile, profile
from .tuned import FIGURE_METHODS, KIND_RULES, LORA_LR_MULT, TABLE_EXTRAS, TUNED, tuned

__all__ = ["run_method", "compare_methods", "ESCALATE_STEPS", "ESCALATION", "run_until_forgotten", "PROFILES",
           "Profile", "profile", "FIGURE_METHODS", "KIND_RULES", "LORA_LR_MULT", "TABLE_EXTRAS", "TUNED", "tuned"]
