"""The contract every unlearning method fulfils, the config fields they share, and the registry.

A method is one class with its config dataclass and its step. The loop (`unlearnkit.train`) owns the data,
the two UNets, the optimiser and checkpoints; a method says which UNet inputs a step needs and which loss it
makes from the outputs. `register_method(name)` makes a method known to `uk.unlearn`, `run_method` and the
CLI, so a method in a user's own file runs through the kit without touching it:

    @register_method("my-esd")
    class MyESD(Method):
        config_class = ESDConfig

        def step(self, ctx, forget):
            pred = ctx.train(forget.x_t, forget.t, ctx.e_f[forget.idx])     # a pass of the trained UNet
            cond = ctx.frozen(forget.x_t, forget.t, ctx.e_f[forget.idx])     # a pass of the frozen base
            return lambda out: losses.regression_loss(out[pred], out[cond].neg())

Defaults are sized for the embedded model on 2 CPU cores; the original papers' Stable Diffusion settings
are in `SD_DEFAULTS` (and in the comments).
"""

from __future__ import annotations

from dataclasses import dataclass, fields

PARAM_SETS = ("full", "xattn", "non-xattn", "lora")  # what trains: all, cross-attention only, all but it, LoRA adapters
# LoRA adapters go on the attention projections of: both attentions, the self-attention only, the cross-attention only
LORA_TARGETS = {"attn": r".*attn[12]\.(to_q|to_k|to_v|to_out\.0)", "attn1": r".*attn1\.(to_q|to_k|to_v|to_out\.0)",
                "attn2": r".*attn2\.(to_q|to_k|to_v|to_out\.0)"}


@dataclass
class UnlearnConfig:
    """Fields every method shares."""

    steps: int = 100  # optimiser steps
    lr: float = 1e-4  # Adam learning rate
    batch_size: int = 8  # forget (and retain) examples per step
    params: str = "full"  # one of PARAM_SETS
    lora_rank: int = 4  # with params="lora": the adapters' rank r (lora_alpha = r, so their scale is 1)
    lora_targets: str = "attn"  # with params="lora": one of LORA_TARGETS (esd-x: attn2, esd-u: attn1)
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
    # N > 0: train until forgotten. Every N steps the loop samples the forget prompts on held-out seeds (train.
    # CHECK_SEEDS, which evaluate never uses; data_steps DDIM steps, data_guidance) and stops once the concept
    # classifier sees the concept in at most train.CHECK_BELOW of them (half the evaluation's bound, for the
    # noise of a sample); `steps` is then the most it trains.
    # Embedded-world concepts only (the classifier judges them). 0: train exactly `steps` steps.
    until_forgotten: int = 0

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
        if self.lora_rank <= 0:
            raise ValueError(f"lora_rank must be > 0, got {self.lora_rank}")
        if self.lora_targets not in LORA_TARGETS:
            raise ValueError(f"unknown lora_targets {self.lora_targets!r}; choose one of: {', '.join(LORA_TARGETS)}")
        if self.mixed_precision not in ("auto", "no", "bf16"):
            raise ValueError(f"unknown mixed_precision {self.mixed_precision!r}; choose auto, no or bf16")
        if self.checkpoint_every < 0:
            raise ValueError(f"checkpoint_every must be >= 0, got {self.checkpoint_every}")
        if self.until_forgotten < 0:
            raise ValueError(f"until_forgotten must be >= 0 (0: train exactly `steps` steps), got {self.until_forgotten}")


class Method:
    """One unlearning method. Subclass it, set `config_class`, write `step`, and `register_method` it.

    The loop calls, in order: `prepare(ctx)` once; per step `step(ctx, forget)`, which queues UNet inputs with
    `ctx.train(x_t, t, emb)` / `ctx.frozen(...)` and returns `loss(out) -> loss or (loss, log)`; `out[h]` is the
    output of queued input `h` and `out.help` the help loss (None when `help_weight` is 0). After backward it
    calls `mask_gradients(params)`, after the optimiser step `after_step(log)`. `state` is what the method
    computed (a mask, a Fisher diagonal, a multiplier); `UnlearnResult.state` returns it.
    """

    config_class: type = UnlearnConfig
    needs_anchors: bool = False  # the task must give one anchor prompt per forget prompt
    adds_help: bool = True  # the loop adds help_weight·L_help to the loss; False: the method uses `out.help` itself
    resume_keys: tuple = ()  # entries of `state` that change during training and go into checkpoints

    def __init__(self, config: UnlearnConfig):
        self.config = config
        self.state: dict = {}

    def prepare(self, ctx) -> None:
        """One-off work before the first step (saliency masks, a Fisher diagonal, a loss bound)."""

    def step(self, ctx, forget):
        """Queue this step's UNet inputs; return `loss(out)`. `forget` is the step's forget batch (see the loop)."""
        raise NotImplementedError(f"{type(self).__name__} must define step(ctx, forget)")

    def mask_gradients(self, params: list) -> None:
        """Change the gradients in place after backward, before clipping (SalUn's saliency mask)."""

    def after_step(self, log: dict) -> None:
        """Update the method's state after the optimiser step (Saddle's multiplier); may add to `log`."""


# name -> (Method subclass, preset config overrides); variants are presets of one class
METHODS: dict[str, tuple[type[Method], dict]] = {}
ALIASES = {"esd": "esd-x"}


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


def canonical(method: str) -> str:
    """The canonical method name; ValueError listing the known ones for anything else."""
    name = ALIASES.get(method, method)
    if name not in METHODS:
        raise ValueError(f"unknown method {method!r}; known methods: {', '.join([*METHODS, *ALIASES])}")
    return name


def make_config(method: str, **overrides) -> UnlearnConfig:
    """The config of `method` with `overrides`; unknown fields are a ValueError listing the valid ones."""
    cls, preset = METHODS[canonical(method)]
    valid = [f.name for f in fields(cls.config_class)]
    unknown = [k for k in overrides if k not in valid]
    if unknown:
        raise ValueError(f"unknown config field {unknown[0]!r} for method {method!r}; valid fields: {', '.join(valid)}")
    return cls.config_class(**{**preset, **overrides})


def make_method(method: str, **overrides) -> Method:
    """A fresh instance of `method` with its config (presets, then `overrides`)."""
    cls, _ = METHODS[canonical(method)]
    return cls(make_config(method, **overrides))
