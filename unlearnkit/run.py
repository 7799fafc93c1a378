"""What a run is, apart from the loop that trains it: its options (how it runs), its identity (what it learns),
its result, the parameters it trains, and callbacks the loop is handed (`Snapshots`)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

import torch

from .methods import LORA_TARGETS, method_code_hash, param_predicate


COMPILE_MODES = (None, "default", "reduce-overhead", "max-autotune")  # torch.compile's modes


@dataclass
class RunOptions:
    """How a run executes, never what it learns: not part of a run's identity (a run resumes under other options)."""

    device: str | None = None  # where to train; None: where the pipeline is
    mixed_precision: str = "auto"  # 'auto' (bf16 on GPU, fp32 on CPU), 'no' or 'bf16'
    gradient_checkpointing: bool = False  # recompute UNet activations in backward (diffusers'); less memory, ~30% slower
    compile: str | None = None  # torch.compile mode of the UNet passes (COMPILE_MODES); the first steps pay for it
    checkpoint_every: int = 0  # steps between checkpoints when an out_dir is given (0: only at the end)
    progress: bool = True  # progress bars

    def __post_init__(self):
        if self.mixed_precision not in ("auto", "no", "bf16"):
            raise ValueError(f"unknown mixed_precision {self.mixed_precision!r}; choose auto, no or bf16")
        if self.compile not in COMPILE_MODES:
            raise ValueError(f"unknown compile {self.compile!r}; choose None or one of: "
                             f"{', '.join(map(str, COMPILE_MODES[1:]))}")
        if self.checkpoint_every < 0:
            raise ValueError(f"checkpoint_every must be >= 0, got {self.checkpoint_every}")


RUN_OPTIONS = tuple(f.name for f in fields(RunOptions))


def split_settings(settings: dict) -> tuple[dict, dict]:
    """(method config overrides, run options) of one dict of keyword arguments."""
    return ({k: v for k, v in settings.items() if k not in RUN_OPTIONS},
            {k: v for k, v in settings.items() if k in RUN_OPTIONS})


@dataclass
class UnlearnResult:
    pipeline: object  # the unlearned pipeline (shares the frozen text encoder / VAE with the base)
    history: list[dict] = field(default_factory=list)  # one dict per step: loss terms and method state (floats)
    method: str = ""
    config: object = None
    seconds: float = 0.0  # wall time of the training loop (data generation, masks and Fisher excluded)
    state: dict = field(default_factory=dict)  # what the method computed: SalUn's mask, SA's Fisher, Saddle's τ, μ
    lora: dict | None = None  # params="lora": the adapter's weights (peft's state dict); `pipeline` has them fused
    lora_config: object = None  # params="lora": its peft LoraConfig
    snapshots: dict = field(default_factory=dict)  # {step: {name: weight}} (a `Snapshots` callback's)
    stop: dict | None = None  # the stopping rule's identity (`stop.key()`), None without one
    code: str = ""  # the hash of the method's code (`methods.method_code_hash`)

    @property
    def stopped(self) -> bool:
        """Whether the stopping rule ended the run (its last check said stop)."""
        return _stopped(self.history)

    stopped_forgotten = stopped  # (until_forgotten's name for it)

    @property
    def forget_checks(self) -> dict[int, float]:
        """`until_forgotten`'s checks, {steps done: forget rate on the held-out seeds}; {} without them."""
        return {h["step"] + 1: h["forget_check"] for h in self.history if "forget_check" in h}


class Snapshots:
    """An `unlearn` callback that keeps CPU copies of the trained weights after the given steps (0: the start),
    e.g. to sample the model after 25%, 50% and 100% of its steps (`quantities.snapshot_images`)."""

    def __init__(self, steps):
        self.steps, self.weights = set(steps), {}

    def __call__(self, step: int, unet) -> None:
        if step in self.steps:
            self.weights[step] = {n: p.detach().cpu().clone() for n, p in unet.named_parameters() if p.requires_grad}


def lora_config(cfg):
    """The peft LoraConfig of a params="lora" run: rank r, alpha r, on the attention projections `lora_targets`."""
    from peft import LoraConfig

    return LoraConfig(r=cfg.lora_rank, lora_alpha=cfg.lora_rank, target_modules=LORA_TARGETS[cfg.lora_targets])


def select_params(unet, which: str) -> list[tuple[str, torch.nn.Parameter]]:
    """(name, parameter) pairs that train: those whose names `which` (a name of `methods.PARAM_SETS` or
    're:<regex>') selects. A ValueError when it selects none."""
    keep = param_predicate(which)
    chosen = [(n, p) for n, p in unet.named_parameters() if keep(n)]
    if not chosen:
        raise ValueError(f"params={which!r} selects no parameter of this UNet; names look like "
                         f"{next(n for n, _ in unet.named_parameters())!r}")
    return chosen


def run_identity(name: str, cfg, base_fp: str, data_fp: str, stop=None) -> dict:
    """What makes two runs the same run: method, config, the method's code, base and data models, stopping rule.
    Checkpoints keep it (resume refuses another) and `run_method`'s cache keys on it."""
    return {"method": name, "config": asdict(cfg), "code": method_code_hash(name), "base": base_fp, "data": data_fp,
            "stop": stop.key() if stop is not None else None}


def _stopped(history: list[dict]) -> bool:
    # the stopping rule's verdict: the last step's check said stop (a resumed run that stopped stays stopped)
    return bool(history) and bool(history[-1].get("stopped", False))
