"""unlearnkit: erase a concept from a text-to-image diffusion model and measure what else it changed.

Reproduces "Model Integrity when Unlearning with T2I Diffusion Models" (Schioppa, Hoogeboom, Heek 2024)
on an embedded world that runs on a CPU, and on Stable Diffusion with the same code.
"""

from . import methods, world
from .attacks import attack
from .catalog import get_task
from .classifier import load_classifier
from .explorer import explore
from .export import export
from .methods import register_method
from .metrics import evaluate, results_table
from .models import load_base, load_pipeline
from .sampling import sample
from .sequence import unlearn_sequence
from .tasks import Task
from .train import unlearn

__version__ = "0.1.0"
__all__ = ["world", "methods", "register_method", "Task", "get_task", "load_base", "load_pipeline", "load_classifier",
           "sample", "unlearn", "evaluate", "results_table", "export", "unlearn_sequence", "attack", "explore"]
