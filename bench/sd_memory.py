"""Peak GPU memory of every method on Stable Diffusion 1.x at 512 px: computed, not measured (no GPU here).

    python bench/sd_memory.py              # about 10 minutes on 2 CPU cores; Markdown tables, then one JSON line
    python bench/sd_memory.py --size 256   # another image side

Weights, Adam states and each method's extra state are counted from the parameter counts (fp32, as the loop
keeps them). Everything else is counted by running one training step of each method on fake tensors (torch's
FakeTensorMode: real shapes and dtypes, no storage, no arithmetic): the trained UNet's rows, the frozen base's
rows, SA's EWC penalty and the backward, with gradient checkpointing as diffusers does it; also the one-off
setups before Adam's states exist (SalUn's saliency mask, SA's fp32 Fisher) and the data generation. A dispatch
mode adds up the bytes of every tensor when it is made and takes them off when its storage dies, so the peak
includes saved activations, bf16 weight copies, temporaries, activation gradients and the fp32 .grad.

The dtypes are the GPU's: the step runs under CPU bf16 autocast with the ops CUDA's autocast keeps in fp32
(GroupNorm, LayerNorm, nearest upsampling) upcast the same way, and `check_policy` first runs a UNet forward under
both policies (CUDA's on fake CUDA tensors) and stops unless every op gives the same output dtypes. Attention is
the flash kernel, which saves q, k, v, the output and a log-sum-exp (what an H100 runs), never the scores.
Left out: the CUDA context, cuDNN / cuBLAS workspaces and allocator rounding (MARGIN_GIB covers them in the
"fits" columns), and Adam's step itself (fused on CUDA: in place).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import gc as gc_module
import json
import weakref
from unittest import mock

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from unlearnkit import losses
from unlearnkit.backbone import VAE_BATCH
from unlearnkit.methods import SD_DEFAULTS
from unlearnkit.sd import SD15_TEXT, SD15_UNET, SD15_VAE

GIB = 2**30
GPU_GIB = 24 * 10**9 / GIB  # a "24 GB" card: 22.35 GiB
MARGIN_GIB = 1.0  # CUDA context, cuDNN / cuBLAS workspaces and allocator rounding, outside the count
CLIP_VOCAB = 49408  # the real CLIP-L vocabulary (build_tiny_sd's word-level one is tiny)
# per method: (trained parameters, trained-UNet rows with grad, trained-UNet rows without grad, frozen-base rows)
# per unit of batch_size, read off the step in unlearnkit/train.py (GA with alpha=0, Saddle/OVW with L_help)
STEP_ROWS = {
    "ga": ("full", 1, 0, 0),
    "esd-x": ("xattn", 1, 0, 2),
    "esd-u": ("non-xattn", 1, 0, 2),
    "salun": ("full", 2, 1, 0),
    "sa": ("full", 2, 0, 0),
    "saddle": ("full", 3, 0, 2),
    "ovw": ("full", 3, 0, 3),
    "ovw-nohelp": ("full", 1, 0, 1),
}
# state the loop keeps beside Adam, bytes per trainable parameter: SalUn's bool mask (its summed gradients are
# dropped once the mask exists); SA's Fisher (fp32; θ0 is the frozen base's own weights)
EXTRA_BYTES = {"salun": 1, "sa": 4}


class LiveBytes(TorchDispatchMode):
    """Bytes of the live tensors created under it: `now`, `peak` (outside paused windows) and `window_peak`
    (since it was last set). Storages of `modules` (their weights, and views of them) are never counted."""

    def __init__(self, *modules):
        super().__init__()
        self.now = self.peak = self.window_peak = 0
        self.paused = False
        self.seen = {t.untyped_storage()._cdata for m in modules for t in [*m.parameters(), *m.buffers()]}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                storage = t.untyped_storage()
                if storage._cdata not in self.seen:  # views and in-place results share a storage
                    self.seen.add(storage._cdata)
                    self.now += storage.nbytes()
                    weakref.finalize(storage, self._free, storage._cdata, storage.nbytes())
        self.window_peak = max(self.window_peak, self.now)
        if not self.paused:
            self.peak = max(self.peak, self.now)
        return out

    def _free(self, key, nbytes):
        self.seen.discard(key)
        self.now -= nbytes


def cpu_attention_flops():
    """FlopCounterMode's formulas for the CPU flash-attention kernels (torch counts only the GPU ones)."""
    from torch.utils.flop_counter import sdpa_backward_flop_count, sdpa_flop_count

    aten = torch.ops.aten
    return {aten._scaled_dot_product_flash_attention_for_cpu: lambda q, k, v, *a, **kw: sdpa_flop_count(q, k, v),
            aten._scaled_dot_product_flash_attention_for_cpu_backward:
                lambda grad, q, k, v, *a, **kw: sdpa_backward_flop_count(grad, q, k, v)}


# ops CUDA's autocast runs in fp32 that CPU's runs in bf16 (the only difference in the SD UNet; check_policy tests it)
CUDA_FP32_OPS = ("group_norm", "layer_norm", "upsample_nearest2d", "upsample_nearest2d.vec")


@contextlib.contextmanager
def cuda_fp32_ops():
    """While open, CPU autocast upcasts the ops in CUDA_FP32_OPS to fp32 as CUDA's does: CPU bf16 autocast then
    makes the dtypes a GPU makes (checked by check_policy). Open for the whole run: backward recomputes under it."""
    lib = torch.library.Library("aten", "IMPL")

    def fp32(op):
        def kernel(*args, **kwargs):
            with torch._C._ExcludeDispatchKeyGuard(torch._C.DispatchKeySet(torch._C.DispatchKey.AutocastCPU)):
                args = [a.float() if isinstance(a, torch.Tensor) and a.is_floating_point() else a for a in args]
                return op(*args, **kwargs)
        return kernel

    for name in CUDA_FP32_OPS:
        base, _, overload = name.partition(".")
        lib.impl(name, fp32(getattr(getattr(torch.ops.aten, base), overload or "default")), "AutocastCPU")
    try:
        yield
    finally:
        lib._destroy()


def autocast():
    return torch.autocast("cpu", dtype=torch.bfloat16)


@contextlib.contextmanager
def fake_cuda_autocast():
    """torch.autocast('cuda', torch.bfloat16) on fake CUDA tensors (its own check wants a real GPU)."""
    torch.set_autocast_enabled("cuda", True)
    torch.set_autocast_dtype("cuda", torch.bfloat16)
    torch.autocast_increment_nesting()
    try:
        yield
    finally:
        if torch.autocast_decrement_nesting() == 0:
            torch.clear_autocast_cache()
        torch.set_autocast_enabled("cuda", False)


def flash_attention(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, **kwargs):
    # the kernel an H100 runs saves q, k, v, the output and a log-sum-exp (flash in bf16, memory-efficient in
    # fp32), never the 4096x4096 scores; the CPU's flash kernel saves the same tensors
    if attn_mask is not None:
        raise ValueError("flash attention takes no mask; the SD UNet passes none")
    if query.device.type == "cuda":
        q, k, v = (x.to(torch.bfloat16) for x in (query, key, value))
        return torch.ops.aten._scaled_dot_product_flash_attention(q, k, v, dropout_p, is_causal, False, scale=scale)[0]
    if torch.is_autocast_enabled("cpu"):
        query, key, value = (x.to(torch.bfloat16) for x in (query, key, value))
    return torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(query, key, value, dropout_p, is_causal,
                                                                      scale=scale)[0]


class DtypeTrace(TorchDispatchMode):
    """The multiset of (op, output dtypes) of the compute ops run under it (views and device queries left out)."""

    SKIP = ("prim.", "view", "detach", "transpose", ".t.", "expand", "permute", "clone", "squeeze", "slice", "split")

    def __init__(self):
        super().__init__()
        self.ops = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        name = str(func).replace("_for_cpu", "")
        if not any(s in name for s in self.SKIP):
            self.ops[(name, tuple(str(t.dtype) for t in tree_leaves(out) if isinstance(t, torch.Tensor))[:2])] += 1
        return out


def check_policy():
    """Raise unless a UNet forward gives the same ops and output dtypes under CUDA's autocast (fake CUDA tensors)
    and under CPU autocast with cuda_fp32_ops: then the CPU simulation allocates what a GPU would."""
    from diffusers import UNet2DConditionModel
    from torch._subclasses.fake_tensor import FakeTensorMode

    traces = {}
    for device, cast in (("cuda", fake_cuda_autocast), ("cpu", autocast)):
        with FakeTensorMode(allow_non_fake_inputs=True), torch.device(device), cuda_fp32_ops(), \
                mock.patch.object(torch.nn.functional, "scaled_dot_product_attention", flash_attention):
            unet = UNet2DConditionModel(**SD15_UNET)
            x = torch.randn(1, 4, 8, 8), torch.randint(0, 1000, (1,)), torch.randn(1, 77, 768)
            with DtypeTrace() as trace, cast():
                unet(*x)
        traces[device] = trace.ops
    if traces["cuda"] != traces["cpu"]:
        diff = (traces["cuda"] - traces["cpu"]) + (traces["cpu"] - traces["cuda"])
        raise RuntimeError(f"CPU and CUDA autocast differ on the SD UNet: {sorted(diff)[:6]}; extend CUDA_FP32_OPS")


def measure(size: int) -> dict:
    """What one step of each method allocates beyond the weights at `size` px, in bytes, and its FLOPs:
    {"params": counts, "step" / "flops": {(method, batch_size, gc): n}, "salun_mask" / "sa_fisher": {(rows, gc):
    bytes of the one-off setup}, "data": {images: peaks of sampling, decoding, encoding}, "forward_flops": n}."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.utils.flop_counter import FlopCounterMode
    from transformers import CLIPTextConfig, CLIPTextModel

    latent = size // 8
    out = {"step": {}, "flops": {}, "salun_mask": {}, "sa_fisher": {}}
    with FakeTensorMode(allow_non_fake_inputs=True), torch.device("cpu"), cuda_fp32_ops(), \
            mock.patch.object(torch.nn.functional, "scaled_dot_product_attention", flash_attention):
        trained, frozen = UNet2DConditionModel(**SD15_UNET), UNet2DConditionModel(**SD15_UNET).requires_grad_(False)
        vae = AutoencoderKL(**SD15_VAE).requires_grad_(False)
        text = CLIPTextModel(CLIPTextConfig(**SD15_TEXT, vocab_size=CLIP_VOCAB))
        named = list(trained.named_parameters())
        out["params"] = {"full": sum(p.numel() for _, p in named),
                         "xattn": sum(p.numel() for n, p in named if "attn2" in n),
                         "text": sum(p.numel() for p in text.parameters()),
                         "vae": sum(p.numel() for p in vae.parameters())}
        out["params"]["non-xattn"] = out["params"]["full"] - out["params"]["xattn"]
        del text

        def inputs(rows):
            return torch.randn(rows, 4, latent, latent), torch.randint(0, 1000, (rows,)), torch.randn(rows, 77, 768)

        def prepare(params, gc):
            trained.train()
            for name, p in named:
                p.grad = None
                p.requires_grad_(params == "full" or ("attn2" in name) == (params == "xattn"))
            if gc:
                trained.enable_gradient_checkpointing()
            else:
                trained.disable_gradient_checkpointing()
            return [p for _, p in named if p.requires_grad]

        def peak(fn) -> int:
            # the most bytes alive at once while fn() runs, beyond the weights (the fp32 .grad it leaves included)
            gc_module.collect()
            with LiveBytes(trained, frozen, vae) as tracker:
                fn()
            return tracker.peak

        def step(params, grad_rows, nograd_rows, frozen_rows, gc, ewc=False):
            # one step of the loop: [SalUn's no-grad target,] the trained UNet's rows, the frozen base's,
            # [SA's penalty Σ F (θ − θ0)², which keeps θ − θ0 for its backward,] backward
            trainable = prepare(params, gc)
            theta0, fisher = ([torch.empty_like(p) for p in trainable] for _ in range(2))  # counted as method state

            def run():
                if nograd_rows:
                    with torch.no_grad(), autocast():
                        trained(*inputs(nograd_rows))
                with autocast():
                    pred = trained(*inputs(grad_rows)).sample.float()
                if frozen_rows:
                    with torch.no_grad(), autocast():
                        frozen(*inputs(frozen_rows))
                loss = pred.square().mean()
                if ewc:
                    loss = loss + losses.ewc_penalty(trainable, theta0, fisher)
                loss.backward()
            bytes_ = peak(run)
            prepare(params, gc)
            # FLOPs in a second pass: the counter's module hooks hold tensors and would change the memory count
            with FlopCounterMode(display=False, custom_mapping=cpu_attention_flops()) as counter:
                run()
            return bytes_, counter.get_total_flops()

        def grads_only(rows, gc, use_autocast, mask=False):
            # SalUn's mask / SA's Fisher: autograd.grad of L_simple over every weight (returned, then summed into
            # fp32 buffers counted as method state); [SalUn: then saliency_mask over the summed gradients]
            params = prepare("full", gc)
            summed = {n: torch.empty_like(p) for n, p in named}

            def run():
                with autocast() if use_autocast else contextlib.nullcontext():
                    pred = trained(*inputs(rows)).sample.float()
                grads = torch.autograd.grad(pred.square().mean(), params)
                del grads
                if mask:
                    return losses.saliency_mask(summed, 0.5)
            return peak(run)

        for method, (params, g, ng, f) in STEP_ROWS.items():
            for n in sorted({1, SD_DEFAULTS[method]["batch_size"]}):
                for gc in (False, True):
                    out["step"][(method, n, gc)], out["flops"][(method, n, gc)] = step(params, g * n, ng * n, f * n, gc,
                                                                                       ewc=method == "sa")
                    if method == "salun":
                        out["salun_mask"][(n, gc)] = grads_only(n, gc, use_autocast=True, mask=True)
                    if method == "sa":
                        out["sa_fisher"][(1, gc)] = grads_only(1, gc, use_autocast=False)  # fp32, one row at a time
        # data generation (fp32, no autocast): guided sampling of up to 64 images at a time, VAE decode and encode
        out["data"] = {}
        with torch.no_grad():
            for images in (1, 24, 60):
                b = min(images, 64)
                v = min(images, VAE_BATCH)  # backbone.decode_latents / encode_images run the VAE in chunks
                out["data"][images] = {
                    "sample": peak(lambda: frozen(*inputs(2 * b))),
                    "decode": peak(lambda: vae.decode(torch.randn(v, 4, latent, latent))),
                    "encode": peak(lambda: vae.encode(torch.randn(v, 3, size, size))),
                }
            with FlopCounterMode(display=False, custom_mapping=cpu_attention_flops()) as counter, autocast():
                frozen(*inputs(1))
            out["forward_flops"] = counter.get_total_flops()
    return out


def table(m: dict) -> list[dict]:
    """One row per (method, batch size): the peak of training, without and with gradient checkpointing; bytes.
    The peak is the larger of a training step's and the method's one-off setup's (SalUn's mask, SA's Fisher)."""
    P = m["params"]
    weights = 4 * (2 * P["full"] + P["text"] + P["vae"])  # fp32: frozen base UNet, trained copy, text encoder, VAE
    rows = []
    for (method, n, gc), dynamic in m["step"].items():
        T = P[STEP_ROWS[method][0]]
        static = weights + 8 * T + EXTRA_BYTES.get(method, 0) * T  # + Adam m, v (fp32) + the method's state
        setup = 0
        if method == "salun":  # summed grads (fp32) exist, Adam's states and the masks do not yet
            setup = weights + 4 * T + m["salun_mask"][(n, gc)]
        if method == "sa":  # the Fisher sum (fp32) exists, Adam's states do not yet
            setup = weights + 4 * T + m["sa_fisher"][(1, gc)]
        key = "gc" if gc else "no_gc"
        row = next((r for r in rows if (r["method"], r["batch_size"]) == (method, n)), None)
        if row is None:
            row = {"method": method, "batch_size": n, "trainable_m": round(T / 1e6, 1), "static": static}
            rows.append(row)
        row[key] = max(static + dynamic, setup)
        row[f"{key}_step_activations"] = dynamic
        row[f"{key}_setup"] = setup
        row[f"{key}_tflops_per_step"] = round(m["flops"][(method, n, gc)] / 1e12, 2)
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=512, help="image side in pixels (latents are 1/8 of it)")
    args = ap.parse_args(argv)
    check_policy()
    m = measure(args.size)
    rows = table(m)
    P = m["params"]
    gib = lambda b: f"{b / GIB:.1f}"  # noqa: E731
    fits = lambda b: "yes" if b / GIB + MARGIN_GIB <= GPU_GIB else "no"  # noqa: E731
    print(f"SD 1.x at {args.size} px, fp32 weights, bf16 autocast, GiB; computed (bench/sd_memory.py), not measured\n")
    print("| method | trains (M params) | batch | weights + Adam + state | peak | fits 24 GB | peak with GC | fits 24 GB "
          "| TFLOP / step (with GC) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['method']} | {r['trainable_m']} | {r['batch_size']} | {gib(r['static'])} | {gib(r['no_gc'])} | "
              f"{fits(r['no_gc'])} | {gib(r['gc'])} | {fits(r['gc'])} | {r['no_gc_tflops_per_step']} "
              f"({r['gc_tflops_per_step']}) |")
    base = 4 * (P["full"] + P["text"] + P["vae"])  # data is made before the trained copy exists
    print(f"\n| base images in a group | guided sampling (64 at a time) | VAE decode ({VAE_BATCH} at a time) "
          f"| VAE encode ({VAE_BATCH} at a time) |")
    print("|---|---|---|---|")
    for images, d in m["data"].items():
        print(f"| {images} | {gib(base + d['sample'])} | {gib(base + d['decode'])} | {gib(base + d['encode'])} |")
    print(json.dumps({"size": args.size, "params": P, "unet_forward_tflops_per_row": round(m["forward_flops"] / 1e12, 3),
                      "table_gib": [{k: round(v / GIB, 2) if k in ("static", "no_gc", "gc") or k.endswith(("activations", "setup"))
                                     else v for k, v in r.items()} for r in rows],
                      "data_gib": {k: {kk: round((base + vv) / GIB, 2) for kk, vv in d.items()}
                                   for k, d in m["data"].items()}}))


if __name__ == "__main__":
    main()
