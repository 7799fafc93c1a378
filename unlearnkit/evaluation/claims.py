"""The paper's claims judged from the numbers: (a) the neighbour pays most, (b) the help losses keep integrity,
(c) L_help matters — each by its intervals, and only for methods that forgot. Used by notebook 10 and
bench/claims.py."""

from __future__ import annotations

from .judges import FORGOT_BELOW
from .stats import format_ci

BASELINES, HELPED = ("ESD", "SalUn", "SA", "UCE", "CA", "CA (noise)", "FMN"), ("OVW", "Saddle")  # rivals: those present


def who_pays_more(r) -> str | None:
    """'neighbour' or 'rest' when that part's LPIPS_ret interval lies wholly above the other's (`evaluate`'s
    `lpips_neighbour_ci`, `lpips_rest_ci`); None when they overlap. The paper's claim (a) holds where it is
    'neighbour'."""
    (lo_n, hi_n), (lo_r, hi_r) = r["lpips_neighbour_ci"], r["lpips_rest_ci"]
    return "neighbour" if lo_n > hi_r else "rest" if lo_r > hi_n else None


def claims(results: dict) -> list[tuple[str, str, bool | None, str]]:
    """[(claim, who, holds (None: not testable), numbers)] from {display name: evaluate dict}."""
    out, forgot = [], {m: r["forget_rate"] <= FORGOT_BELOW for m, r in results.items()}
    for m, r in results.items():
        out.append(("forgets", m, forgot[m], f"forget rate {r['forget_rate']:.2f}"))
    for m, r in results.items():
        if "lpips_neighbour" not in r:
            continue
        holds = who_pays_more(r) == "neighbour" if forgot[m] else None
        out.append(("(a) neighbour pays most", m, holds, f"neighbour {format_ci(r['lpips_neighbour'], r['lpips_neighbour_ci'])}"
                    f" vs rest {format_ci(r['lpips_rest'], r['lpips_rest_ci'])}"))
    for h in HELPED:
        rivals = [b for b in BASELINES if forgot.get(b)]
        if h not in results or not forgot[h] or not rivals:
            out.append(("(b) help losses keep integrity", h, None, "not testable: it or every baseline did not forget"))
            continue
        worse = [b for b in rivals if results[h]["lpips_ret"] >= results[b]["lpips_ret"]]
        out.append(("(b) help losses keep integrity", h, not worse, f"{h} {results[h]['lpips_ret']:.3f} vs "
                    + ", ".join(f"{b} {results[b]['lpips_ret']:.3f}" for b in rivals)))
    a, b = results.get("OVW"), results.get("OVW w/o L_help")
    if a and b:  # like (a) and (b): a comparison of what forgetting cost, so both must have forgotten
        both = forgot["OVW"] and forgot["OVW w/o L_help"]
        out.append(("(c) L_help matters", "OVW", a["lpips_ret_ci"][1] < b["lpips_ret_ci"][0] if both else None,
                    f"with {format_ci(a['lpips_ret'], a['lpips_ret_ci'])}, without {format_ci(b['lpips_ret'], b['lpips_ret_ci'])}"
                    + ("" if both else " (not testable: OVW or OVW w/o L_help did not forget)")))
    return out


def on_training_prompts(results: dict) -> dict:
    """The same results with the retain measurements of the training prompts (`evaluate(on="both")`'s `.train`)."""
    return {m: {**dict(r), **r["train"]} for m, r in results.items()}


def claims_table(results: dict) -> str:
    """Markdown: every claim per method, judged on the held-out retain prompts and, where `evaluate(on="both")`
    measured them, on the training prompts the methods with retain data trained on; with the numbers."""
    held = claims(results)
    train = claims(on_training_prompts(results)) if all("train" in r for r in results.values()) else None
    word = {True: "holds", False: "does not hold", None: "not testable"}
    lines = ["| claim | method | held-out prompts | training prompts | numbers (held out) |", "|---|---|---|---|---|"]
    for k, (claim, who, holds, numbers) in enumerate(held):
        if claim == "forgets" or who == "base":  # the base forgets nothing: no claim is about it
            continue
        lines.append(f"| {claim} | {who} | {word[holds]} | {word[train[k][2]] if train else '—'} | {numbers} |")
    return "\n".join(lines)
