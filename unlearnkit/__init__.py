"""unlearnkit: erase a concept from a text-to-image diffusion model and measure what else it changed.

Reproduces "Model Integrity when Unlearning with T2I Diffusion Models" (Schioppa, Hoogeboom, Heek 2024)
on an embedded world that runs on a CPU, and on Stable Diffusion with the same code. The layers
(docs/LAYOUT.md): the core (world, tasks, models, sampling, losses, methods, train, export) at the top
level, and above it evaluation/, experiments/, pictures/ and app/.
"""

from . import methods, world
from .catalog import get_task
from .evaluation.attacks import attack
from .evaluation.classifier import load_classifier
from .evaluation.sequence import unlearn_sequence
from .evaluation.stopping import until_forgotten
from .evaluation.suite import evaluate
from .evaluation.tables import results_table
from .export import export
from .methods import register_method
from .models import load_base, load_pipeline
from .pictures.explorer import explore
from .sampling import sample
from .tasks import Task
from .train import RunOptions, unlearn

__version__ = "0.1.0"
__all__ = ["world", "methods", "register_method", "Task", "get_task", "load_base", "load_pipeline", "load_classifier",
           "sample", "unlearn", "RunOptions", "until_forgotten", "evaluate", "results_table", "export",
           "unlearn_sequence", "attack", "explore"]
