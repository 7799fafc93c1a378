"""The integrity report's contents: its numbers from an `Evaluation` (what report.json holds), the Markdown page drawn
from them, and the figure of image pairs (base | edited | LPIPS map). `report.py` runs these; docs/REPORT.md reads
every number."""

from __future__ import annotations

import textwrap

import torch

from .judges import FORGOT_BELOW
from .stats import bootstrap_ci

KEEP_WORST = 10  # worst retain pairs listed in report.json and on the page
PART = {"eval": "the held-out third of each retain concept (the kit's methods never train on them)",
        "train": "the training part of the retain prompts (the ones the kit's methods train on)",
        "all": "every retain prompt"}


def _ci(ci) -> list[float]:
    return [float(ci[0]), float(ci[1])]


def numbers(ev, task, forget: str | None, clip=None) -> dict:
    """report.json's measurements: LPIPS_ret and I with intervals, per concept (neighbour first, a bootstrap
    interval each over its pairs), forgetting, accuracy, FID and CLIPScore, or for each one not measured, why."""
    pairs = ev.retain_pairs
    concepts = sorted(ev.per_concept, key=lambda c: c != task.neighbour_concept)  # stable: neighbour first
    per = []
    for c in concepts:
        v = torch.tensor([p["lpips"] for p in pairs if p["concept"] == c])
        lo, hi = bootstrap_ci(v)
        per.append({"concept": c, "neighbour": c == task.neighbour_concept, "pairs": len(v),
                    "lpips_ret": ev.per_concept[c], "ci": [lo, hi], "integrity": 1 - ev.per_concept[c]})
    lo, hi = ev.lpips_ret_ci
    out = {"prompts": {"n_forget": len(task.forget_prompts) if forget else 0, "n_retain": len(task.retain_prompts),
                       "n_retain_measured": len({p["prompt"] for p in pairs}), "retain_part": ev.on,
                       "retain_part_means": PART[ev.on]},
           "settings": {"sampler": "DDIM, eta 0 (deterministic); each image's initial noise from its seed alone",
                        "steps": ev.steps, "guidance_scale": ev.guidance_scale, "seeds": ev.seeds,
                        "forget_seeds": ev.forget_seeds if forget else None,
                        "forget_noise": ev.forget_noise if forget else None, "lpips_net": ev.lpips_net},
           "lpips_ret": {"value": ev.lpips_ret, "ci": _ci(ev.lpips_ret_ci), "pairs": ev.n_retain},
           "integrity": {"value": ev.integrity, "ci": [1 - hi, 1 - lo]},
           "per_concept": per}
    judge = {"classifier": "the embedded world's concept classifier",
             "clip": "CLIP zero-shot over the task's concepts"}.get(ev.judge)
    why = ("no --forget word: the report then measures retention only" if not forget else
           "no judge: the embedded world's concept classifier reads only its prompts; elsewhere pass --clip MODEL "
           "(CLIP zero-shot over the prompts' concepts)")
    for key in ("forget_rate", "retain_accuracy"):
        if ev.get(key) is None:
            out[key] = {"not_measured": why}
        else:
            out[key] = {"value": ev[key], "ci": _ci(ev[key + "_ci"]), "base": ev["base_" + key],
                        "base_ci": _ci(ev["base_" + key + "_ci"]), "judge": judge}
    if forget:
        out["forget_rate"]["images"] = ev.n_forget
        out["forget_rate"]["forgot"] = ev.forgot
        out["lpips_forget"] = {"value": ev.lpips_forget, "ci": _ci(ev.lpips_forget_ci), "pairs": ev.n_forget}
    else:
        out["lpips_forget"] = {"not_measured": why}
    if ev.fid is not None:
        out["fid"] = {"value": ev.fid, "ci": _ci(ev.fid_ci), "features": ev.fid_features,
                      "real": "the embedded world's renders of the same retain prompts and seeds"}
    else:
        out["fid"] = {"not_measured": "FID needs real images of the prompts: the kit has them only on the embedded "
                                      "world, where it is computed with the classifier judge (--forget)"
                      if ev.judge != "classifier" else "fewer than two retain images (FID needs two a side)"}
    if ev.clip_score is not None:
        out["clip_score"] = {"value": ev.clip_score, "model": str(clip)}
    else:
        out["clip_score"] = {"not_measured": "CLIPScore comes with the CLIP judge: pass --clip MODEL (a local CLIP "
                                             "folder or a hub id in the Hugging Face cache) and --forget, off the "
                                             "embedded world"}
    out["worst_pairs"] = sorted(pairs, key=lambda p: -p["lpips"])[:KEEP_WORST]
    out["retain_pairs"] = pairs
    return out


def forget_figure_rows(task, seeds, k: int) -> list[tuple[str, int]]:
    """Up to `k` forget prompts spread over the list, each with the first seed: the pairs the forget figure draws."""
    prompts = task.forget_prompts
    step = max(1, len(prompts) // max(1, k))
    return [(p, seeds[0]) for p in prompts[::step][:k]]


def pairs_figure(pairs, x0, x, d, maps, title: str, path) -> None:
    """One row per (prompt, seed): the base's image, the edited model's (its LPIPS under it) and the LPIPS map
    (where they differ, square-root colour scale shared by the rows); saved as PNG at `path`."""
    from matplotlib.colors import PowerNorm
    from matplotlib.figure import Figure  # no pyplot: no backend, nothing kept in pyplot's registry

    n = len(pairs)
    vmax = max(float(maps.max()), 1e-6)
    fig = Figure(figsize=(5.4, 1.45 * n + 0.7))
    axes = fig.subplots(n, 3, squeeze=False)
    for i, ((prompt, seed), a, b, m) in enumerate(zip(pairs, x0, x, maps)):
        for ax, img in zip(axes[i][:2], (a, b)):
            ax.imshow(img.permute(1, 2, 0).clamp(0, 1).numpy(), interpolation="nearest")
        heat = axes[i][2].imshow(m.numpy(), cmap="magma", norm=PowerNorm(0.5, vmin=0, vmax=vmax),
                                 interpolation="nearest")
        axes[i][0].set_ylabel(textwrap.fill(prompt, 26) + f"\nseed {seed}", fontsize=6, rotation=0, ha="right",
                              va="center")
        axes[i][1].set_xlabel(f"LPIPS {float(d[i]):.4f}", fontsize=6, labelpad=1)
        for ax in axes[i]:
            ax.set_xticks([])
            ax.set_yticks([])
    for ax, label in zip(axes[0], ("base", "edited", "LPIPS map")):
        ax.set_title(label, fontsize=7)
    bar = fig.colorbar(heat, ax=axes[:, 2].tolist(), fraction=0.05, pad=0.04)
    bar.ax.tick_params(labelsize=5)
    bar.ax.yaxis.get_offset_text().set_fontsize(5)
    fig.suptitle(title, fontsize=7)
    fig.savefig(path, dpi=100, bbox_inches="tight", format="png")


def _n(k: int, word: str) -> str:
    return f"{k} {word}{'' if k == 1 else 's'}"


def _v(x, digits=4) -> str:
    return f"{x:.{digits}f}"


def _with_ci(entry, key="value", ci="ci", digits=4) -> str:
    lo, hi = entry[ci]
    return f"{_v(entry[key], digits)} [{_v(lo, digits)}, {_v(hi, digits)}]"


def page(data: dict) -> str:
    """report.md: the Markdown page of report.json's `data`."""
    m, pr, st = data["models"], data["prompts"], data["settings"]
    edited = f"`{m['base']}` + LoRA `{m['lora']}`" if m["lora"] else f"`{m['edited']}`"
    forget = (f"{pr['n_forget']} with \"{pr['forget_word']}\" (forget prompts)" if pr["forget_word"] else
              "no --forget word (every prompt is a retain prompt)")
    seeds = ", ".join(map(str, st["seeds"]))
    lines = [
        "# Integrity report", "",
        "What did the edit change beyond what it was meant to? For each retain prompt and seed, the base's and the "
        "edited model's images from the same initial noise are compared by LPIPS (0: the same image); LPIPS_ret is "
        "their mean and I = 1 − LPIPS_ret. Every number is explained in unlearnkit's docs/REPORT.md; all of them, "
        "with each pair's LPIPS, are in [report.json](report.json).", "",
        "| | |", "|---|---|",
        f"| base | `{m['base']}`{' (the shipped embedded model)' if m['base'] == 'base' else ''} |",
        f"| edited | {edited} |",
        *([f"| single-file config | `{m['config']}` |"] if m["config"] else []),
        f"| prompts | {pr['source']}: {pr['n']} prompts; {forget}; {pr['n_retain']} retain prompts, "
        f"{pr['n_retain_measured']} measured: {pr['retain_part_means']}"
        + (f"; neighbour concept \"{pr['neighbour']}\"" if pr["neighbour"] else "") + " |",
        f"| sampler | {st['sampler']}; {st['steps']} steps, guidance scale {st['guidance_scale']:g} |",
        f"| seeds | retain images: {seeds}"
        + (f"; forget images: {', '.join(map(str, st['forget_seeds']))}" if st["forget_seeds"] else "")
        + ("; each forget image its own noise (`image_seed`)" if st.get("forget_noise") == "per-image" else "") + " |",
        f"| LPIPS | `{st['lpips_net']}` (network, and the size images are resized to) |",
        f"| made by | unlearnkit {data['unlearnkit']} in {data['seconds']:g} s |", "",
        "## Retention", "",
        "| | value [95% interval] |", "|---|---|",
        f"| LPIPS_ret (↓) | {_with_ci(data['lpips_ret'])} |", f"| I = 1 − LPIPS_ret (↑) | {_with_ci(data['integrity'])} |",
        "", f"Over {_n(data['lpips_ret']['pairs'], 'retain pair')} ({_n(pr['n_retain_measured'], 'prompt')} × "
        f"{_n(len(st['seeds']), 'seed')}); the interval is the percentile bootstrap over the pairs.", "",
        "### Per concept" + (" (neighbour first)" if pr["neighbour"] else ""), "",
        "| concept | pairs | LPIPS_ret [95% interval] | I |", "|---|---|---|---|",
        *[f"| {c['concept']}{' (neighbour)' if c['neighbour'] else ''} | {c['pairs']} | {_with_ci(c, 'lpips_ret')} | "
          f"{_v(c['integrity'])} |" for c in data["per_concept"]],
        "", "## Forgetting", "",
    ]
    fr, acc = data["forget_rate"], data["retain_accuracy"]
    if "not_measured" in fr:
        lines += [f"- Forget rate: not measured: {fr['not_measured']}.",
                  f"- Retain accuracy: not measured: {acc['not_measured']}."]
    else:
        lines += ["| | edited | base |", "|---|---|---|",
                  f"| forget rate (↓): share of forget images that still show \"{pr['forget_word']}\" | "
                  f"{_with_ci(fr, digits=3)} | {_with_ci(fr, 'base', 'base_ci', 3)} |",
                  f"| retain accuracy (↑): share of retain images the judge reads as their prompt | "
                  f"{_with_ci(acc, digits=3)} | {_with_ci(acc, 'base', 'base_ci', 3)} |", "",
                  f"Judge: {fr['judge']}; {_n(fr['images'], 'forget image')}; rates with 95% Wilson intervals."
                  + ("" if fr["forgot"] else " The edited model did **not** forget (forget rate above 0.2): its "
                     "retention numbers say little about the cost of forgetting.")
                  + (f" The base's images do not show the concept either (forget rate at most {FORGOT_BELOW:g}): the forget rate "
                     "cannot tell here whether the edit removed it." if fr["base"] <= FORGOT_BELOW else "")]
    if "value" in data["lpips_forget"]:
        lines += ["", f"LPIPS_forget (how much the forget prompts' images changed): {_with_ci(data['lpips_forget'])} "
                      f"over {_n(data['lpips_forget']['pairs'], 'pair')}."]
    fid, cs = data["fid"], data["clip_score"]
    lines += ["", "## Image quality", "",
              f"- FID: {_with_ci(fid, digits=2)} (features: {fid['features']}; real images: {fid['real']})."
              if "value" in fid else f"- FID: not measured: {fid['not_measured']}.",
              f"- CLIPScore: {cs['value']:.2f} ({cs['model']})." if "value" in cs else
              f"- CLIPScore: not measured: {cs['not_measured']}.", ""]
    figures = data["figures"]
    if figures:
        lines += ["## Figures", ""]
    if "worst_pairs" in figures:
        lines += ["### The worst retain pairs", "", f"![the worst retain pairs]({figures['worst_pairs']})", "",
                  "| # | prompt | seed | concept | LPIPS |", "|---|---|---|---|---|",
                  *[f"| {i} | {p['prompt']} | {p['seed']} | {p['concept']} | {_v(p['lpips'])} |"
                    for i, p in enumerate(data["worst_pairs"], 1)], ""]
    if "forget_pairs" in figures:
        lines += ["### Forget prompts", "", "What the edit did to the concept it was meant to remove:", "",
                  f"![forget prompts]({figures['forget_pairs']})", ""]
    notes = [w for w in data["warnings"] if not w.startswith("did not forget")]  # said under Forgetting
    if notes:
        lines += ["## Warnings", "", *[f"- {w}" for w in notes], ""]
    return "\n".join(lines)
