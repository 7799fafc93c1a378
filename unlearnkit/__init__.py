"""unlearnkit: erase a concept from a text-to-image diffusion model and measure what else it changed.

Reproduces "Model Integrity when Unlearning with T2I Diffusion Models" (Schioppa, Hoogeboom, Heek 2024)
on an embedded world that runs on a CPU, and on Stable Diffusion with the same code. The layers
(docs/LAYOUT.md): the core (world, tasks, models, sampling, losses, methods, train, export) at the top
level, and above it evaluation/, experiments/, pictures/ and app/.

The public names below load on first use (PEP 562), so `import unlearnkit` and the command line's `--help` do not
pay for torch and diffusers; `uk.unlearn`, `from unlearnkit import evaluate` and the rest import their module then.
"""

from __future__ import annotations

import importlib
import sys
import types

__version__ = "0.1.0"

# public name -> (module, attribute; None: the module itself)
_PUBLIC = {
    "world": (".world", None),
    "methods": (".methods", None),
    "register_method": (".methods", "register_method"),
    "Task": (".tasks", "Task"),
    "get_task": (".catalog", "get_task"),
    "load_base": (".models", "load_base"),
    "load_pipeline": (".models", "load_pipeline"),
    "load_classifier": (".evaluation.classifier", "load_classifier"),
    "sample": (".sampling", "sample"),
    "unlearn": (".train", "unlearn"),
    "RunOptions": (".train", "RunOptions"),
    "until_forgotten": (".evaluation.stopping", "until_forgotten"),
    "evaluate": (".evaluation.suite", "evaluate"),
    "report": (".evaluation.report", "report"),
    "results_table": (".evaluation.tables", "results_table"),
    "export": (".export", "export"),
    "unlearn_sequence": (".evaluation.sequence", "unlearn_sequence"),
    "attack": (".evaluation.attacks", "attack"),
    "explore": (".pictures.explorer", "explore"),
}
__all__ = list(_PUBLIC)


def __getattr__(name: str):
    if name not in _PUBLIC:
        raise AttributeError(f"module 'unlearnkit' has no attribute {name!r}")
    module, attr = _PUBLIC[name]
    value = importlib.import_module(module, __name__)
    if attr is not None:
        value = getattr(value, attr)
    globals()[name] = value  # once loaded, an ordinary attribute
    return value


def __dir__():
    return sorted([*globals(), *_PUBLIC])


class _Package(types.ModuleType):
    # importing the submodule unlearnkit.export binds it as the package's attribute `export`, over the function
    # of that name: keep the public name the function, as `from .export import export` did when it ran eagerly
    def __setattr__(self, name, value):
        if name == "export" and isinstance(value, types.ModuleType) and value.__name__ == f"{__name__}.export":
            value = value.export
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
