"""Erase several concepts one after another, and measure what each stage did (beyond the paper).

Stage i unlearns task i starting from stage i−1's model; its retain prompts leave out every prompt an earlier
stage forgot (those are meant to stay forgotten, not to be replayed). After each stage the model is compared
with the *original* base on the prompts no stage forgets, and every concept erased so far is checked again:
does an earlier one come back?
"""

from __future__ import annotations

from dataclasses import replace

from ..tasks import Task
from .stats import format_ci


def stage_tasks(tasks: list[Task]) -> list[Task]:
    """The tasks as the stages see them: task i's retain prompts without any prompt tasks 0..i−1 forgot."""
    if not tasks:
        raise ValueError("tasks is empty; give the tasks to erase in order, e.g. [get_task('object'), ...]")
    forgotten, out = set(), []
    for t in tasks:
        keep = [p for p in t.retain_prompts if p not in forgotten]
        if not keep:
            raise ValueError(f"task {t.name!r} has no retain prompt left once earlier stages' forget prompts are removed")
        out.append(t.keep_retain(keep))
        forgotten |= set(t.forget_prompts)
    return out


def unlearn_sequence(pipe, tasks: list[Task], method: str, run=None, data: str = "previous", **overrides) -> list:
    """Unlearn `tasks` in order with `method`, each stage from the previous stage's model.

    `data`: whose images a stage trains on. 'previous' (default): the model the stage starts from, as a chain of
    `unlearn` calls does. 'original': the original `pipe`'s (sampled once per task for every method; an
    ablation): measured on the embedded world (docs/RESULTS.md), SA and SalUn then bring earlier concepts back
    (the erased triangle's forget rate 0.00 -> 0.80 and 0.72 after the next stage; likely because the original's
    images of the later stages' prompts still show them, e.g. wavy triangles — not tested).
    Returns the stages' `UnlearnResult`s. `run(pipe, task, method, data_from=..., **overrides)` trains one stage
    (default `unlearnkit.unlearn`; the notebooks pass `experiments.run_method` for its cache).
    """
    if data not in ("original", "previous"):
        raise ValueError(f"data={data!r}: choose 'previous' (train each stage on the images of the model it starts "
                         "from) or 'original' (on the original model's images)")
    if run is None:
        from ..train import unlearn as run
    results, current = [], pipe
    for task in stage_tasks(tasks):
        # stage 1 trains on its own model's images either way (and keeps the run cache's key of a single run)
        source = pipe if data == "original" and current is not pipe else None
        result = run(current, task, method, data_from=source, **overrides)
        results.append(result)
        current = result.pipeline
    return results


def common_retain(tasks: list[Task], max_retain: int | None = None) -> Task:
    """A task whose retain prompts are those every task retains (no stage forgets them), in the first task's
    order (its neighbour first), cut to `max_retain`; its forget prompts are the first task's."""
    forgotten = {p for t in tasks for p in t.forget_prompts}
    first = tasks[0]
    common = first.keep_retain([p for p in first.retain_prompts if p not in forgotten]).head(max_retain=max_retain)
    return replace(common, name="+".join(t.name for t in tasks) + "-common")


def evaluate_sequence(base, results: list, tasks: list[Task], max_retain: int | None = None, **evaluate_kw) -> list[dict]:
    """After each stage: LPIPS_ret [CI] and accuracy against the original `base` on the prompts no stage forgets
    (their held-out part, as `evaluate` reads by default),
    and the forget rate of every concept erased so far. Returns one dict per stage:
    {'stage', 'concept', 'lpips_ret', 'lpips_ret_ci', 'retain_accuracy', 'forget_rates': {concept: rate},
    'forget_rates_ci': {concept: (lo, hi)}} (95% bootstrap over the forget prompts × seeds)."""
    from .suite import evaluate

    if len(results) != len(tasks):
        raise ValueError(f"{len(results)} results for {len(tasks)} tasks; pass the tasks unlearn_sequence got")
    common = common_retain(tasks, max_retain)
    rows = []
    for i, result in enumerate(results):
        row = {"stage": i + 1, "concept": tasks[i].forget_concept or tasks[i].name, "forget_rates": {},
               "forget_rates_ci": {}}
        for k in range(i + 1):
            # an earlier concept needs only its forget rate: one retain prompt per concept stands in for the retain
            # set (every concept stays, so CLIP's zero-shot labels are the same)
            keep = range(len(common.retain_prompts)) if k == i else _one_per_concept(common)
            probe = replace(common, name=f"{tasks[k].name}-probe", forget_prompts=tasks[k].forget_prompts,
                            anchor_prompts=tasks[k].anchor_prompts, forget_concept=tasks[k].forget_concept,
                            kind=tasks[k].kind, relabel_concepts=[]
                            ).keep_retain([common.retain_prompts[j] for j in keep])
            r = evaluate(base, result.pipeline, probe, fid=False, **evaluate_kw)
            row["forget_rates"][tasks[k].forget_concept or tasks[k].name] = r.get("forget_rate")
            row["forget_rates_ci"][tasks[k].forget_concept or tasks[k].name] = r.get("forget_rate_ci")
            if k == i:
                row.update(lpips_ret=r["lpips_ret"], lpips_ret_ci=r["lpips_ret_ci"],
                           retain_accuracy=r.get("retain_accuracy"), n_retain=r["n_retain"])
        rows.append(row)
    return rows


def _one_per_concept(task: Task) -> list[int]:
    # the index of the first retain prompt of each concept (all of them when the task names no concepts)
    if not task.retain_concepts:
        return list(range(len(task.retain_prompts)))
    first = {}
    for i, c in enumerate(task.retain_concepts):
        first.setdefault(c, i)
    return list(first.values())


def sequence_table(rows: dict[str, list[dict]]) -> str:
    """A markdown table: one line per (method, stage) with LPIPS_ret [95% CI], accuracy and every forget rate."""
    concepts = list(dict.fromkeys(c for rs in rows.values() for r in rs for c in r["forget_rates"]))
    lines = ["| method | after stage | LPIPS_ret [95% CI] | accuracy | " + " | ".join(f"forget rate {c}" for c in concepts)
             + " |", "|---|---|---|---|" + "---|" * len(concepts)]
    for label, rs in rows.items():
        for r in rs:
            acc = "–" if r.get("retain_accuracy") is None else f"{r['retain_accuracy']:.3f}"
            rates = [r["forget_rates"].get(c) for c in concepts]
            lines.append(f"| {label} | {r['stage']}: {r['concept']} | {format_ci(r['lpips_ret'], r['lpips_ret_ci'])} | {acc} | "
                         + " | ".join("" if v is None else f"{v:.2f}" for v in rates) + " |")
    return "\n".join(lines)
