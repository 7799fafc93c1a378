"""The method contract, the config fields every method shares, and the registry.

A method is one class (a `Method` subclass) with its config dataclass, found by name. The loop
(`unlearnkit.train`) owns the data, the UNets, the optimiser and the checkpoints; a method says which UNet
passes a step needs and which loss it makes from their outputs. The whole contract:

    prepare(ctx)            once, before the first step: masks, a Fisher diagonal, a bound, or a closed-form
                            edit of `ctx.unet` (with `steps=0` that edit is the whole method: the loop then
                            generates no images, builds no optimiser and runs no backward)
    step(ctx, forget) -> loss
                            queue this step's UNet passes and return `loss(out)`. Three queued passes, each
                            returning a handle whose output is `out[handle]`:
                              ctx.train(x_t, t, emb)    the UNet being trained, with gradients
                              ctx.frozen(x_t, t, emb)   the frozen base model, without gradients
                              ctx.current(x_t, t, emb)  the UNet being trained as it is now, without gradients
                            `loss(out)` returns a scalar tensor, or (scalar, {name: tensor or float}) to log.
                            `out.help` is L_help (docs/METHODS.md, eq. 5) when `help_weight` > 0, else None.
                            `out.rows(handle)`: where that input's rows sit in its model's one batched pass
                            (for what a method records inside the pass: Forget-Me-Not's attention maps).
    mask_gradients(params)  after backward, before clipping (SalUn's saliency mask)
    after_step(log)         after the optimiser step (Saddle's multiplier)
    finish(ctx)             after the last step: undo what prepare put on the UNet (Forget-Me-Not's hooks)
    state                   what the method computed ({name: tensor, ...}); `resume_keys` go into checkpoints

`register_method(name)` makes a method known to `uk.unlearn`, `run_method` and the CLI; a method in a user's own
file runs through the kit without touching it (the CLI loads it with `--import`, an installed package through
the `unlearnkit.methods` entry-point group):

    @register_method("my-esd")
    class MyESD(Method):
        config_class = ESDConfig

        def step(self, ctx, forget):
            pred = ctx.train(forget.x_t, forget.t, ctx.e_f[forget.idx])     # a pass of the trained UNet
            cond = ctx.frozen(forget.x_t, forget.t, ctx.e_f[forget.idx])     # a pass of the frozen base
            return lambda out: losses.regression_loss(out[pred], out[cond].neg())

A run's identity is its method's name, its config and a hash of its code (`method_code_hash`): editing a method
makes `run_method` train it again. How a run executes (device, precision, checkpoints) is `run.RunOptions`.
Defaults are sized for the embedded model on 2 CPU cores; the original papers' Stable Diffusion settings are in
`SD_DEFAULTS` (and in the comments).
"""

from __future__ import annotations

import hashlib
import re
import sys
import types
from dataclasses import dataclass, fields, is_dataclass

# what trains, by parameter name: every parameter, the cross-attention only (ESD-x), all but it, ESD-u's set, the
# cross-attention's key and value projections (UCE's closed-form edit), or the LoRA adapters. Any other set:
# params="re:<regex>", the parameters whose names the regex matches (re.search).
PARAM_SETS = {
    "full": lambda name: True,
    "xattn": lambda name: "attn2" in name,
    "non-xattn": lambda name: "attn2" not in name,
    # ESD-u as its authors train it: all but the cross-attention, the time embedding and the output layers
    # (rohitgandikota/erasing, train-scripts/train-esd.py lines 163-168: 'attn2', 'time_embed', 'out.' excluded)
    "esd-u": lambda name: ("attn2" not in name and "time_embed" not in name
                           and not name.startswith(("conv_norm_out.", "conv_out."))),  # CompVis out. = these two
    "xattn-kv": lambda name: re.search(r"attn2\.to_[kv]\.", name) is not None,
    "lora": lambda name: "lora_" in name,
}
# LoRA adapters go on the attention projections of: both attentions, the self-attention only, the cross-attention only
LORA_TARGETS = {"attn": r".*attn[12]\.(to_q|to_k|to_v|to_out\.0)", "attn1": r".*attn1\.(to_q|to_k|to_v|to_out\.0)",
                "attn2": r".*attn2\.(to_q|to_k|to_v|to_out\.0)"}


def param_predicate(params: str):
    """The name predicate of `params` (a name of PARAM_SETS or 're:<regex>'); a ValueError for anything else."""
    if params in PARAM_SETS:
        return PARAM_SETS[params]
    if isinstance(params, str) and params.startswith("re:"):
        try:
            pattern = re.compile(params[3:])
        except re.error as e:
            raise ValueError(f"params={params!r} is not a valid regular expression ({e})") from e
        return lambda name: pattern.search(name) is not None
    raise ValueError(f"unknown params {params!r}; choose one of: {', '.join(PARAM_SETS)}, or 're:<regex>' "
                     "(the parameters whose names match)")


@dataclass
class UnlearnConfig:
    """Fields every method shares: what a run learns (its identity; how it runs is `run.RunOptions`)."""

    steps: int = 100  # optimiser steps; 0: a closed-form method, whose `prepare` is the whole edit
    lr: float = 1e-4  # learning rate
    optimizer: str = "adam"  # 'adam' or 'adamw' (decoupled weight decay, `weight_decay`)
    weight_decay: float = 0.0  # with optimizer="adamw": its decoupled weight decay
    batch_size: int = 8  # forget (and retain) examples per step
    params: str = "full"  # what trains: a name of PARAM_SETS, or 're:<regex>' over parameter names
    lora_rank: int = 4  # with params="lora": the adapters' rank r (lora_alpha = r, so their scale is 1)
    lora_targets: str = "attn"  # with params="lora": one of LORA_TARGETS (esd-x: attn2, esd-u: attn1)
    help_weight: float = 0.0  # λ_help on L_help (docs/METHODS.md, eq. 5); 0 keeps a baseline as published
    help_uncond_weight: float = 1.0  # β_∅: weight of the unconditional branch inside L_help
    grad_accum: int = 1  # gradient accumulation steps per optimiser step
    max_grad_norm: float = 1.0  # gradient clipping; 0 turns it off
    seed: int = 0  # seeds noise, timesteps and batch order
    data_seeds: int = 2  # base-model images per forget / anchor prompt in the training data
    retain_seeds: int = 1  # base-model images per retain prompt in the training data
    data_steps: int = 20  # DDIM steps used to generate the training data
    data_guidance: float = 2.0  # guidance scale used to generate the training data

    def __post_init__(self):
        if self.steps < 0:
            raise ValueError(f"steps must be >= 0 (0: a closed-form method, its prepare is the edit), got {self.steps}")
        for name in ("batch_size", "grad_accum", "data_seeds", "retain_seeds", "data_steps"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.optimizer not in ("adam", "adamw"):
            raise ValueError(f"unknown optimizer {self.optimizer!r}; choose 'adam' or 'adamw'")
        if self.weight_decay < 0 or (self.weight_decay and self.optimizer != "adamw"):
            raise ValueError(f"weight_decay={self.weight_decay} needs optimizer='adamw' and a value >= 0")
        if self.help_weight < 0 or self.help_uncond_weight < 0:
            raise ValueError("help_weight and help_uncond_weight must be >= 0")
        param_predicate(self.params)
        if self.lora_rank <= 0:
            raise ValueError(f"lora_rank must be > 0, got {self.lora_rank}")
        if self.lora_targets not in LORA_TARGETS:
            raise ValueError(f"unknown lora_targets {self.lora_targets!r}; choose one of: {', '.join(LORA_TARGETS)}")


class Method:
    """One unlearning method. Subclass it, set `config_class`, write `step` (and/or `prepare`), `register_method`
    it. The contract is the module docstring's (`unlearnkit.methods.base`)."""

    config_class: type = UnlearnConfig
    needs_anchors: bool = False  # the task must give one anchor prompt per forget prompt
    adds_help: bool = True  # the loop adds help_weight·L_help to the loss; False: the method uses `out.help` itself
    resume_keys: tuple = ()  # entries of `state` that change during training and go into checkpoints

    def __init__(self, config: UnlearnConfig):
        self.config = config
        self.state: dict = {}

    def prepare(self, ctx) -> None:
        """One-off work before the first step (saliency masks, a Fisher diagonal, a loss bound, a closed-form edit)."""

    def step(self, ctx, forget):
        """Queue this step's UNet passes; return `loss(out)`. `forget` is the step's forget batch (a `Draw`)."""
        raise NotImplementedError(f"{type(self).__name__} must define step(ctx, forget) (or train with steps=0 "
                                  "and make its edit in prepare)")

    def mask_gradients(self, params: list) -> None:
        """Change the gradients in place after backward, before clipping (SalUn's saliency mask)."""

    def after_step(self, log: dict) -> None:
        """Update the method's state after the optimiser step (Saddle's multiplier); may add to `log`."""

    def finish(self, ctx) -> None:
        """After the last step, before the pipeline is handed back: remove what `prepare` put on `ctx.unet`."""


# name -> (Method subclass, preset config overrides); variants are presets of one class
METHODS: dict[str, tuple[type[Method], dict]] = {}
ALIASES = {"esd": "esd-x"}
ENTRY_POINT_GROUP = "unlearnkit.methods"  # an installed package's methods: `[project.entry-points."unlearnkit.methods"]`
_entry_points_loaded = False


def register_method(name: str, **preset):
    """Class decorator: make a `Method` subclass known as `name` (with `preset` config overrides).

    Registering a name twice replaces the earlier method (so a notebook cell can be run again).
    """
    if not name or not isinstance(name, str):
        raise ValueError(f"a method name must be a non-empty string, got {name!r}")

    def add(cls):
        if not (isinstance(cls, type) and issubclass(cls, Method)):
            raise ValueError(f"register_method({name!r}) takes a subclass of unlearnkit.methods.Method, got {cls!r}")
        valid = {f.name for f in fields(cls.config_class)}
        unknown = [k for k in preset if k not in valid]
        if unknown:
            raise ValueError(f"preset field {unknown[0]!r} of method {name!r} is not a field of "
                             f"{cls.config_class.__name__}; valid fields: {', '.join(sorted(valid))}")
        METHODS[name] = (cls, dict(preset))
        return cls

    return add


def load_entry_points() -> None:
    """Import the modules that installed packages list under the `unlearnkit.methods` entry-point group (once);
    each registers its methods. A module that fails to import is named in the error."""
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    _entry_points_loaded = True
    from importlib.metadata import entry_points

    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            ep.load()
        except Exception as e:
            raise ImportError(f"the {ENTRY_POINT_GROUP!r} entry point {ep.name!r} ({ep.value}) failed to import: "
                              f"{type(e).__name__}: {e}; fix or uninstall the package that declares it") from e


def canonical(method: str) -> str:
    """The canonical method name; ValueError listing the known ones for anything else."""
    name = ALIASES.get(method, method)
    if name not in METHODS:
        load_entry_points()
    if name not in METHODS:
        raise ValueError(f"unknown method {method!r}; known methods: {', '.join([*METHODS, *ALIASES])} (a method of "
                         "your own: register_method it, or `unlearnkit --import your_module ...` on the command line)")
    return name


# fields that moved from a method's config to run.RunOptions (how a run executes, not what it learns), and the
# stopping rule that replaced a config field
RUN_OPTION_FIELDS = ("mixed_precision", "gradient_checkpointing", "checkpoint_every")
MOVED = {"until_forgotten": "until_forgotten is a stopping rule now: pass stop=unlearnkit.until_forgotten(N) to "
                            "uk.unlearn (run_method and the CLI still take until_forgotten=N)"}


def make_config(method: str, **overrides) -> UnlearnConfig:
    """The config of `method` with `overrides`; unknown fields are a ValueError listing the valid ones."""
    cls, preset = METHODS[canonical(method)]
    valid = [f.name for f in fields(cls.config_class)]
    unknown = [k for k in overrides if k not in valid]
    if unknown:
        if unknown[0] in MOVED:
            raise ValueError(MOVED[unknown[0]])
        raise ValueError(f"unknown config field {unknown[0]!r} for method {method!r}; valid fields: {', '.join(valid)}"
                         f" (run options: {', '.join(RUN_OPTION_FIELDS)})")
    return cls.config_class(**{**preset, **overrides})


def make_method(method: str, **overrides) -> Method:
    """A fresh instance of `method` with its config (presets, then `overrides`)."""
    cls, _ = METHODS[canonical(method)]
    return cls(make_config(method, **overrides))


def _digest(h, obj, seen) -> None:
    # what a function, class or module level value *does*, as loaded (not the file on disk, which a running
    # kernel may not have re-imported): byte code, constants, names; line numbers and comments left out
    if id(obj) in seen:
        return
    seen.add(id(obj))
    if isinstance(obj, (staticmethod, classmethod)):
        obj = obj.__func__
    if isinstance(obj, property):
        for f in (obj.fget, obj.fset):
            if f is not None:
                _digest(h, f, seen)
        return
    code = getattr(obj, "__code__", obj)
    if isinstance(code, types.CodeType):
        h.update(code.co_code)
        h.update(repr((code.co_names, code.co_varnames)).encode())
        for c in code.co_consts:
            _digest(h, c, seen) if isinstance(c, types.CodeType) else h.update(repr(c).encode())
        h.update(repr(getattr(obj, "__defaults__", None)).encode())
    elif isinstance(obj, type):
        h.update(obj.__qualname__.encode())
        if is_dataclass(obj):
            h.update(repr([(f.name, f.default) for f in fields(obj)]).encode())
        for name, value in sorted(vars(obj).items()):
            if callable(value) or isinstance(value, (staticmethod, classmethod, property)):
                h.update(name.encode())
                _digest(h, value, seen)
            elif not name.startswith("__"):
                h.update(f"{name}={value!r}".encode())


def method_code_hash(method: str) -> str:
    """A hash of `method`'s code as loaded: its class and each base class up to `Method`, its config class and
    theirs, and the functions and constants of the modules that define them (helpers beside a method count).
    Part of a run's identity: editing a method (and importing it again) makes `run_method` train it again."""
    cls, _ = METHODS[canonical(method)]
    h, seen = hashlib.sha1(), set()
    for klass in [*cls.__mro__, *cls.config_class.__mro__]:
        if klass in (Method, UnlearnConfig, object):
            continue
        _digest(h, klass, seen)
        module = sys.modules.get(klass.__module__)
        for name, value in sorted(vars(module).items()) if module is not None else ():
            if getattr(value, "__module__", None) == klass.__module__ and (callable(value) or isinstance(value, type)):
                _digest(h, value, seen)
            elif isinstance(value, (int, float, str, tuple, dict)) and not name.startswith("__"):
                h.update(f"{name}={value!r}".encode())
    return h.hexdigest()[:16]
