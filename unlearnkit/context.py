"""What a method sees (`StepContext`): the encoded data, noise draws, and the queued UNet passes.

Every UNet input a step queues with `ctx.train`, `ctx.frozen` or `ctx.current` runs as one batched pass of that
model; rows are independent, so the outputs equal separate calls. The contract is `methods/base.py`'s docstring.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .backbone import encode_prompts
from .losses import add_noise, regression_target


@dataclass
class Draw:
    """A noised mini-batch: x_t = √ᾱ_t x0[idx] + √(1−ᾱ_t) noise, and what the UNet regresses there (ε or v)."""

    idx: torch.Tensor  # rows of the data set
    noise: torch.Tensor  # ε
    t: torch.Tensor  # timesteps
    x_t: torch.Tensor
    target: torch.Tensor


class _Fused:
    """UNet inputs (x_t, t, embeddings) queued during a step and run as one batch; `add` returns the index
    of that input's output in `run()`'s list."""

    def __init__(self, fn):
        self.fn, self.parts = fn, []

    def add(self, x, t, e) -> int:
        for name, v in (("x_t", x), ("t", t), ("encoder_hidden_states", e)):
            if not isinstance(v, torch.Tensor):
                raise TypeError(f"a queued UNet pass takes tensors (x_t, t, encoder_hidden_states); {name} is a "
                                f"{type(v).__name__}")
        if not (len(x) == len(t) == len(e)):
            raise ValueError(f"a queued UNet pass needs one row per example: x_t has {len(x)}, t {len(t)}, "
                             f"encoder_hidden_states {len(e)}")
        self.parts.append((x, t, e))
        return len(self.parts) - 1

    def rows(self) -> list[slice]:
        """Each input's rows in the batched pass, in queue order."""
        starts = [0]
        for x, _, _ in self.parts:
            starts.append(starts[-1] + len(x))
        return [slice(a, b) for a, b in zip(starts, starts[1:])]

    def run(self) -> list[torch.Tensor]:
        if not self.parts:
            return []
        x, t, e = (torch.cat(z) for z in zip(*self.parts))
        return list(self.fn(x, t, e).split([len(p[0]) for p in self.parts]))


class Outputs:
    """The outputs of one step's queued passes: `out[handle]`, `out.rows(handle)` (where that input's rows sit in
    its model's one batched pass: for what a method records inside the pass, Forget-Me-Not's attention maps), and
    `out.help` (L_help, or None)."""

    def __init__(self, parts: dict[str, list], help: torch.Tensor | None = None, rows: dict[str, list] | None = None):
        self._parts, self.help, self._rows = parts, help, rows or {}

    def _get(self, table, handle):
        try:
            which, i = handle
            return table[which][i]
        except (TypeError, ValueError, KeyError, IndexError):
            raise KeyError(f"out[{handle!r}]: index `out` with a handle that ctx.train / ctx.frozen / ctx.current "
                           "returned during this step") from None

    def __getitem__(self, handle: tuple[str, int]) -> torch.Tensor:
        return self._get(self._parts, handle)

    def rows(self, handle: tuple[str, int]) -> slice:
        """The rows of `handle`'s input in its model's batched pass (a slice of the pass's batch)."""
        return self._get(self._rows, handle)


class StepContext:
    """The loop's side of the method contract.

    Data (encoded once, on the training device): `x_f`, `e_f` (forget images in the UNet's space and their
    prompt embeddings), `x_r`, `e_r` (retain), `x_a`, `e_a` (anchors, aligned with the forget rows; None
    when the task has none), `e_null` (the empty prompt). `forget_prompts` / `retain_prompts` / `anchor_prompts`
    name each row. With `steps=0` there are prompts and embeddings but no images.
    `unet` is the UNet being trained (its weights may be edited in `prepare`), `params` its trainable parameters
    and `trainable` their (name, parameter) pairs; `initial_params()` their values in the base.
    """

    def __init__(self, *, pipe, task, config, accelerator, unet, base_unet, trainable, data, generators,
                 scheduler, prediction_type, fingerprint, data_fingerprint, cache_dir, compile=None):
        self.pipe, self.task, self.config, self.accelerator = pipe, task, config, accelerator
        self.device = accelerator.device
        self._wrapped = unet  # the trained UNet as accelerate wraps it (what runs the passes)
        self.unet = accelerator.unwrap_model(unet)
        self._base_unet = base_unet  # None with LoRA: the base is the trained UNet with its adapters off
        # the callables of the passes: the modules, or torch.compile'd views of them (same parameters)
        self._run_unet, self._run_base = unet, base_unet
        if compile is not None:
            self._run_unet = torch.compile(unet, mode=compile)
            self._run_base = torch.compile(base_unet, mode=compile) if base_unet is not None else None
        self.trainable = trainable  # [(name, parameter)] that train
        self.params = [p for _, p in trainable]
        self.num_timesteps = scheduler.config.num_train_timesteps
        self.alphas_cumprod, self.prediction_type = scheduler.alphas_cumprod.to(self.device), prediction_type
        self.fingerprint, self.data_fingerprint, self.cache_dir = fingerprint, data_fingerprint, cache_dir  # base, data
        self.step = 0  # the optimiser step being made
        self.forget_prompts, self._x_f, self.e_f = data["forget"]
        self.retain_prompts, self._x_r, self.e_r = data["retain"]
        self.anchor_prompts, self._x_a, self.e_a = data.get("anchor", (None, None, None))
        self.e_null = encode_prompts(pipe, [""])
        # the method's draws and L_help's come from separate generators: switching L_help on leaves the forget
        # batches as they were
        self._gen, self.help_generator = generators
        self.new_step()

    # the images (none with steps=0)
    def _images(self, x, name):
        if x is None:
            raise ValueError(f"ctx.{name}: a run with steps=0 (a closed-form method) generates no images; use the "
                             "prompt embeddings (e_f, e_r, e_a) or train with steps > 0")
        return x

    x_f = property(lambda self: self._images(self._x_f, "x_f"))
    x_r = property(lambda self: self._images(self._x_r, "x_r"))
    x_a = property(lambda self: None if self.e_a is None else self._images(self._x_a, "x_a"))

    # noise and targets
    def add_noise(self, x0, noise, t):
        """x_t = √ᾱ_t x0 + √(1−ᾱ_t) noise (`losses.add_noise`)."""
        return add_noise(self.alphas_cumprod, x0, noise, t)

    def target(self, x0, noise, t):
        """What the UNet regresses at x_t: ε or v (`losses.regression_target`)."""
        return regression_target(self.prediction_type, self.alphas_cumprod, x0, noise, t)

    def draw(self, which: str = "forget", n: int | None = None, generator: torch.Generator | None = None) -> Draw:
        """A noised batch of `n` (default: batch_size) rows of the 'forget' or 'retain' data: row indices, noise and
        timesteps from the method's generator (or `generator`, for one-off work that must not move the training
        draws)."""
        if which not in ("forget", "retain"):
            raise ValueError(f"ctx.draw({which!r}): draw 'forget' or 'retain'")
        gen = generator or self._gen
        rows = len(self.x_f if which == "forget" else self.x_r)
        return self.draw_rows(which, torch.randint(0, rows, (n or self.config.batch_size,), generator=gen), gen)

    def draw_rows(self, which: str, idx: torch.Tensor, generator: torch.Generator | None = None) -> Draw:
        """The rows `idx` of the 'forget' or 'retain' data, noised: noise and timesteps from `generator` (default the
        method's)."""
        x0 = self.x_f if which == "forget" else self.x_r
        gen, n = generator or self._gen, len(idx)
        noise = torch.randn((n, *x0.shape[1:]), generator=gen).to(self.device)
        t = torch.randint(0, self.num_timesteps, (n,), generator=gen).to(self.device)
        return Draw(idx, noise, t, self.add_noise(x0[idx], noise, t), self.target(x0[idx], noise, t))

    def null(self, n: int) -> torch.Tensor:
        """The empty prompt's embedding, n times."""
        return self.e_null.expand(n, -1, -1)

    def encode_prompts(self, prompts: list[str]) -> torch.Tensor:
        with torch.no_grad():
            return encode_prompts(self.pipe, prompts)

    def initial_params(self) -> list[torch.Tensor]:
        """The base's values of `params` (θ0), aligned with them: the frozen base's own tensors where there is one
        (no second copy), else (LoRA: the adapters' starting values) a copy."""
        if self._base_unet is not None:
            frozen = dict(self._base_unet.named_parameters())
            return [frozen[n].detach() for n, _ in self.trainable]
        return [p.detach().clone() for p in self.params]

    # UNet passes, now (for prepare)
    def model(self, x, t, e) -> torch.Tensor:
        """The trained UNet's output now, with gradients (float32)."""
        with self.accelerator.autocast():
            return self._run_unet(x, t, e).sample.float()

    def base(self, x, t, e) -> torch.Tensor:
        """The frozen base UNet's output now, without gradients (float32)."""
        with torch.no_grad(), self.accelerator.autocast():
            if self._base_unet is not None:
                return self._run_base(x, t, e).sample.float()
            self.unet.disable_adapters()  # LoRA: one UNet in memory, the base is it without its adapters
            try:
                return self.unet(x, t, e).sample.float()
            finally:
                self.unet.enable_adapters()

    def _current(self, x, t, e) -> torch.Tensor:
        with torch.no_grad():
            return self.model(x, t, e)

    # UNet passes, queued (for step)
    def train(self, x, t, e) -> tuple[str, int]:
        """Queue an input for this step's pass of the trained UNet (with gradients); its output is `out[handle]`."""
        return "train", self._queues["train"].add(x, t, e)

    def frozen(self, x, t, e) -> tuple[str, int]:
        """Queue an input for this step's pass of the frozen base; its output is `out[handle]`."""
        return "frozen", self._queues["frozen"].add(x, t, e)

    def current(self, x, t, e) -> tuple[str, int]:
        """Queue an input for this step's pass of the trained UNet as it is now, without gradients (a target from
        the current model: SalUn's relabelled prediction, Concept Ablation's anchor); its output is `out[handle]`."""
        return "current", self._queues["current"].add(x, t, e)

    def new_step(self):
        self._queues = {"current": _Fused(self._current), "train": _Fused(self.model), "frozen": _Fused(self.base)}

    def run(self) -> Outputs:
        """Run the queued inputs: one pass of the current model (no gradients), of the trained UNet, of the base."""
        return Outputs({k: q.run() for k, q in self._queues.items()}, rows={k: q.rows() for k, q in self._queues.items()})
