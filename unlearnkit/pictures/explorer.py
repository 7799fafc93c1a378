"""Interactive exploration in JupyterLab: pick a method, a prompt and a seed and see the base model's image
beside the unlearned model's, with the LPIPS map between them and the numbers (`explore`); ESD's target under
sliders for η and t (`esd_sliders`).

In a Jupyter kernel the first choice is drawn as an ordinary figure output, and the controls below it redraw that
same output in place (`display_id`): a notebook run headless by papermill or nbconvert, with no front end to draw
widgets, still saves the figure. Outside a kernel (scripts), or with UNLEARNKIT_STATIC=1 (set by `unlearnkit
reproduce` and the tests), the call returns the static figure of the first choice and draws no controls.
"""

from __future__ import annotations

import os

import matplotlib.pyplot as plt
import torch

from .figures import _finish, _show, image_table
from ..sampling import sample


def live() -> bool:
    """True in a Jupyter kernel with a front end to draw widgets (not under UNLEARNKIT_STATIC=1)."""
    if os.environ.get("UNLEARNKIT_STATIC"):
        return False
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and "IPKernelApp" in shell.config


def _controls(widgets: dict, draw):
    """Show `draw(**values)` once as an ordinary output (a PNG saved in the notebook, front end or not), and return
    the controls: each change redraws that output in place."""
    import ipywidgets as w
    from IPython.display import display

    values = lambda: {k: v.value for k, v in widgets.items()}  # noqa: E731
    handle = display(_once(draw(**values())), display_id=True)  # None outside IPython (nothing to update)

    def redraw(_=None):
        fig = _once(draw(**values()))
        if handle is not None:
            handle.update(fig)

    for widget in widgets.values():
        widget.observe(redraw, names="value")
    return w.HBox(list(widgets.values()))


def _once(fig):
    # the static figure is the call's value: Jupyter shows it as the cell's result, so pyplot must not show it again
    plt.close(fig)
    return fig


def _pipeline(run):
    return getattr(run, "pipeline", run)  # an UnlearnResult or a pipeline


def compare_view(base, unlearned, prompt: str, seed: int, lpips, classifier=None, label: str = "unlearned",
                 steps: int = 20, guidance_scale: float = 2.0, path=None):
    """One prompt and seed: the base's image, the unlearned model's, and the LPIPS map between them, titled with
    the LPIPS distance and (with `classifier`) what the classifier sees in each image. Returns the figure."""
    pair = [sample(p, [prompt], [seed], steps=steps, guidance_scale=guidance_scale, progress=False)
            for p in (base, _pipeline(unlearned))]
    dist = float(lpips(pair[0], pair[1])[0])
    heat = lpips.map(pair[0], pair[1])[0, 0]
    seen = [classifier.predict(x)[0] for x in pair] if classifier is not None else None
    fig, axes = plt.subplots(1, 3, figsize=(6.6, 2.6))
    for ax, img, name, k in zip(axes, pair, ("base", label), (0, 1)):
        _show(ax, img[0])
        said = f"\nclassifier: {' '.join(seen[k].values())}" if seen else ""
        ax.set_title(f"{name}{said}", fontsize=7)
    im = axes[2].imshow(heat.numpy(), cmap="magma", interpolation="nearest")
    axes[2].set_xticks([])
    axes[2].set_yticks([])
    axes[2].set_title(f"LPIPS map (LPIPS {dist:.3f})", fontsize=7)
    fig.colorbar(im, ax=axes[2], fraction=0.046, pad=0.04).ax.tick_params(labelsize=6)
    fig.suptitle(f"'{prompt}', seed {seed}", fontsize=8)
    fig.tight_layout()
    return _finish(fig, path)


def explore(base, runs: dict, task, lpips, classifier=None, seeds=(0, 1, 2, 3), steps: int = 20,
            guidance_scale: float = 2.0, interactive: bool | None = None):
    """Base vs unlearned for any of `runs` ({label: UnlearnResult or pipeline}), any prompt of `task` (forget
    prompts first, then the retain prompts with the neighbour concept first) and any of `seeds`.

    Live (`interactive` None: `live()`, a Jupyter kernel): the first view is shown as a figure output and the
    dropdowns returned below it redraw it in place. Static: the view of the first run, forget prompt and seed is
    drawn and returned."""
    if not runs:
        raise ValueError("runs is empty; pass {label: run_method(...)} for the runs to explore")
    prompts = list(task.forget_prompts) + [p for p in task.retain_prompts if p not in task.forget_prompts]
    show = lambda label, prompt, seed: compare_view(base, runs[label], prompt, seed, lpips, classifier, label,
                                                    steps, guidance_scale)
    if not (live() if interactive is None else interactive):
        return _once(show(next(iter(runs)), prompts[0], seeds[0]))
    import ipywidgets as w

    return _controls(dict(label=w.Dropdown(options=list(runs), description="method"),
                          prompt=w.Dropdown(options=prompts, description="prompt"),
                          seed=w.Dropdown(options=list(seeds), description="seed")), show)


def esd_sliders(base, prompt: str, seed: int = 0, unlearned=None, steps: int = 20, guidance_scale: float = 2.0,
                interactive: bool | None = None):
    """ESD's negatively guided target ε_θ0(∅) − η(ε_θ0(c_f) − ε_θ0(∅)) as x̂0 images, with sliders for η and t
    (live: drawn as a figure output at η = 1, t = 500, the sliders below redraw it), beside the base's conditional
    and unconditional predictions. Static: η = 1, t = 500."""
    from .quantities import esd_panel

    def show(eta, t):
        rows, _ = esd_panel(base, _pipeline(unlearned) if unlearned is not None else None, prompt, seed,
                            timesteps=(t,), etas=(eta,), steps=steps, guidance_scale=guidance_scale)
        return image_table({f"t={t}": torch.cat(list(rows.values()))}, list(rows), title=f"'{prompt}', η={eta:g}")

    if not (live() if interactive is None else interactive):
        return _once(show(1.0, 500))
    import ipywidgets as w

    return _controls(dict(eta=w.FloatSlider(value=1.0, min=0.0, max=4.0, step=0.25, description="η"),
                          t=w.IntSlider(value=500, min=50, max=950, step=50, description="t")), show)
