"""What a method's step sees (`StepContext`): the encoded data, noise draws, and the queued UNet passes.

Every UNet input a step queues with `ctx.train(...)` or `ctx.frozen(...)` runs as one batched pass of the
trained UNet and one of the frozen base; rows are independent, so the outputs equal separate calls.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .backbone import encode_prompts
from .losses import regression_target


@dataclass
class Draw:
    """A noised mini-batch: x_t = √ᾱ_t x0[idx] + √(1−ᾱ_t) noise, and what the UNet regresses there (ε or v)."""

    idx: torch.Tensor  # rows of the data set
    noise: torch.Tensor  # ε
    t: torch.Tensor  # timesteps
    x_t: torch.Tensor
    target: torch.Tensor


class _Batches:
    """Random mini-batch indices into one data set, with noise and timesteps, all from one generator."""

    def __init__(self, latents, gen):
        self.latents, self.gen = latents, gen

    def draw(self, n, num_timesteps):
        idx = torch.randint(0, len(self.latents), (n,), generator=self.gen)
        noise = torch.randn((n, *self.latents.shape[1:]), generator=self.gen)
        timesteps = torch.randint(0, num_timesteps, (n,), generator=self.gen)
        return idx, noise, timesteps


class _Fused:
    """UNet inputs (x_t, t, embeddings) queued during a step and run as one batch; `add` returns the index
    of that input's output in `run()`'s list."""

    def __init__(self, fn):
        self.fn, self.parts = fn, []

    def add(self, x, t, e) -> int:
        self.parts.append((x, t, e))
        return len(self.parts) - 1

    def run(self) -> list[torch.Tensor]:
        if not self.parts:
            return []
        x, t, e = (torch.cat(z) for z in zip(*self.parts))
        return list(self.fn(x, t, e).split([len(p[0]) for p in self.parts]))


class Outputs:
    """The outputs of one step's queued passes: `out[handle]`, and `out.help` (L_help, or None)."""

    def __init__(self, train: list, frozen: list, help: torch.Tensor | None = None):
        self._parts, self.help = {"train": train, "frozen": frozen}, help

    def __getitem__(self, handle: tuple[str, int]) -> torch.Tensor:
        which, i = handle
        return self._parts[which][i]


class StepContext:
    """The loop's side of the method contract.

    Data (encoded once, on the training device): `x_f`, `e_f` (forget images in the UNet's space and their
    prompt embeddings), `x_r`, `e_r` (retain), `x_a`, `e_a` (anchors, aligned with the forget rows; None
    when the task has none), `e_null` (the empty prompt). `forget_prompts` / `retain_prompts` name each row.
    """

    def __init__(self, pipe, task, cfg, accelerator, unet, base_unet, trainable, data, gen, num_timesteps,
                 alphas_cumprod, prediction_type, fingerprint, cache_dir, compile=None):
        self.pipe, self.task, self.config, self.accelerator = pipe, task, cfg, accelerator
        self.device = accelerator.device
        self.unet = unet  # the trained UNet (wrapped by accelerate)
        self.raw_unet = accelerator.unwrap_model(unet)
        self.base_unet = base_unet  # the frozen base; None with LoRA: the trained UNet with its adapters off
        # the callables of the two passes: the modules, or torch.compile'd views of them (same parameters)
        self._run_unet, self._run_base = unet, base_unet
        if compile is not None:
            self._run_unet = torch.compile(unet, mode=compile)
            self._run_base = torch.compile(base_unet, mode=compile) if base_unet is not None else None
        self.trainable = trainable  # [(name, parameter)] that train
        self.params = [p for _, p in trainable]
        self.num_timesteps, self.alphas_cumprod, self.prediction_type = num_timesteps, alphas_cumprod, prediction_type
        self.fingerprint, self.cache_dir = fingerprint, cache_dir
        self.step = 0  # the optimiser step being made
        self.forget_prompts, self.x_f, self.e_f = data["forget"]
        self.retain_prompts, self.x_r, self.e_r = data["retain"]
        self.anchor_prompts, self.x_a, self.e_a = data.get("anchor", (None, None, None))
        self.e_null = encode_prompts(pipe, [""])
        self._gen = gen
        self._batches = {"forget": _Batches(self.x_f, gen), "retain": _Batches(self.x_r, gen)}
        self.new_step()

    # noise and targets
    def add_noise(self, x0, noise, t):
        a = self.alphas_cumprod[t].view(-1, 1, 1, 1)
        return a.sqrt() * x0 + (1 - a).sqrt() * noise

    def target(self, x0, noise, t):
        """What the UNet regresses at x_t: ε or v (`losses.regression_target`)."""
        return regression_target(self.prediction_type, self.alphas_cumprod, x0, noise, t)

    def draw(self, which: str = "forget", n: int | None = None, generator: torch.Generator | None = None) -> Draw:
        """A noised batch of `n` (default: batch_size) rows of the 'forget' or 'retain' data, from the loop's
        generator (or `generator`, for one-off work that must not move the training draws)."""
        x0 = {"forget": self.x_f, "retain": self.x_r}[which]
        batches = _Batches(x0, generator) if generator is not None else self._batches[which]
        idx, noise, t = batches.draw(n or self.config.batch_size, self.num_timesteps)
        noise, t = noise.to(self.device), t.to(self.device)
        return Draw(idx, noise, t, self.add_noise(x0[idx], noise, t), self.target(x0[idx], noise, t))

    def null(self, n: int) -> torch.Tensor:
        """The empty prompt's embedding, n times."""
        return self.e_null.expand(n, -1, -1)

    def encode_prompts(self, prompts: list[str]) -> torch.Tensor:
        with torch.no_grad():
            return encode_prompts(self.pipe, prompts)

    # UNet passes
    def model(self, x, t, e) -> torch.Tensor:
        """The trained UNet's output now, with gradients (float32)."""
        with self.accelerator.autocast():
            return self._run_unet(x, t, e).sample.float()

    def base(self, x, t, e) -> torch.Tensor:
        """The frozen base UNet's output now, without gradients (float32)."""
        with torch.no_grad(), self.accelerator.autocast():
            if self.base_unet is not None:
                return self._run_base(x, t, e).sample.float()
            self.raw_unet.disable_adapters()  # LoRA: one UNet in memory, the base is it without its adapters
            try:
                return self.raw_unet(x, t, e).sample.float()
            finally:
                self.raw_unet.enable_adapters()

    def train(self, x, t, e) -> tuple[str, int]:
        """Queue an input for this step's pass of the trained UNet; its output is `out[handle]`."""
        return "train", self._train.add(x, t, e)

    def frozen(self, x, t, e) -> tuple[str, int]:
        """Queue an input for this step's pass of the frozen base; its output is `out[handle]`."""
        return "frozen", self._frozen.add(x, t, e)

    def new_step(self):
        self._train, self._frozen = _Fused(self.model), _Fused(self.base)

    def run(self) -> Outputs:
        """Run the queued inputs: one pass of the trained UNet, one of the frozen base."""
        return Outputs(self._train.run(), self._frozen.run())
