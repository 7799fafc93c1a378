"""The project's own contracts: packaging agrees with the conda env, CI runs the README's command,
notebooks are committed clean and hold no library logic, the CLI lists its subcommands."""

import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _bench(name: str):
    """bench/NAME.py imported as a module (bench/ is scripts, not a package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, ROOT / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _norm(req: str) -> str:
    return re.sub(r"\s+", "", req).lower().replace("_", "-")


def test_environment_yml_lists_the_same_packages_as_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = {_norm(r) for r in project["dependencies"] + project["optional-dependencies"]["dev"]}
    text = (ROOT / "environment.yml").read_text()
    pip_section = text.split("- pip:", 1)[1]
    listed = {_norm(line.strip()[2:]) for line in pip_section.splitlines()
              if line.strip().startswith("- ") and not line.strip().startswith("- -e")}
    assert listed == wanted, f"only in environment.yml: {listed - wanted}; only in pyproject: {wanted - listed}"


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    m = re.search(r"<!-- test-command -->\s*```(?:bash|sh)?\n(.+?)\n\s*```", readme, re.S)
    assert m, "README.md must show the test command in a code block after <!-- test-command -->"
    command = m.group(1).strip()
    ci = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert command in ci, f"{command!r} is not a line of .ci/run"


def test_cli_help_lists_the_subcommands():
    out = subprocess.run([sys.executable, "-m", "unlearnkit", "--help"], capture_output=True, text=True, check=True)
    for sub in ("train-base", "sample", "unlearn", "evaluate", "report", "export", "reproduce"):
        assert sub in out.stdout


def test_cli_help_imports_neither_torch_nor_the_methods():
    # `unlearnkit --help` and `unlearnkit export --help` start in a fraction of a second: nothing heavy loads
    probe = ("import sys\nfrom unlearnkit.app.cli import main\nfor argv in (['--help'], ['export', '--help'], "
             "['unlearn', '--help'], ['report', '--help']):\n    try:\n        main(argv)\n"
             "    except SystemExit:\n        pass\n"
             "print(sorted(m for m in ('torch', 'diffusers', 'unlearnkit.methods') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "[]"
    assert "fmn" in out.stdout and "ovw-" in out.stdout  # unlearn --help still lists the methods (argparse wraps)


def test_the_clis_method_names_are_the_registered_ones():
    from unlearnkit.app.cli import BUILTIN_METHODS, ENTRY_POINT_GROUP
    from unlearnkit.methods import ALIASES, METHODS
    from unlearnkit.methods.base import ENTRY_POINT_GROUP as GROUP

    builtin = [n for n, (cls, _) in METHODS.items() if cls.__module__.startswith("unlearnkit.methods.")]
    assert list(BUILTIN_METHODS) == [*builtin, *ALIASES] and ENTRY_POINT_GROUP == GROUP


def test_the_package_loads_its_public_names_on_first_use():
    out = subprocess.run([sys.executable, "-c", "import sys, unlearnkit\nprint('torch' in sys.modules)"],
                         capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False"]
    import unlearnkit as uk
    import unlearnkit.export  # noqa: F401  (binding the submodule leaves the public name the function)

    assert uk.export is sys.modules["unlearnkit.export"].export and uk.unlearn.__name__ == "unlearn"
    assert not set(uk.__all__) - set(dir(uk))
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        uk.nope


def test_cli_bad_input_is_one_line_and_exit_2(tmp_path):
    out = subprocess.run([sys.executable, "-m", "unlearnkit", "unlearn", "--method", "nope", "--out", str(tmp_path)],
                         capture_output=True, text=True)
    assert out.returncode == 2
    assert out.stderr.strip().count("\n") == 0 and "unknown method 'nope'" in out.stderr


NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


def test_there_are_numbered_notebooks():
    assert len(NOTEBOOKS) >= 10 and all(re.match(r"\d\d_", p.name) for p in NOTEBOOKS)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_clean_and_holds_no_library_logic(path):
    book = json.loads(path.read_text())
    code = [c for c in book["cells"] if c["cell_type"] == "code"]
    assert all(not c.get("outputs") and c.get("execution_count") is None for c in code), "strip the outputs"
    sources = ["".join(c["source"]) for c in code]
    assert "import unlearnkit" in sources[0], "the first code cell imports unlearnkit"
    params = [c for c in code if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(params) == 1, "one papermill parameters cell"
    for line in "".join(params[0]["source"]).splitlines():
        line = line.split("#")[0].strip()
        if line:
            assert re.match(r"^\w+ = (\"[^\"]*\"|'[^']*'|-?[\d.e-]+|\[[^\]]*\]|True|False|None)$", line), \
                f"parameters hold literals only: {line!r}"
    for c, s in zip(code, sources):
        if "answer" in c.get("metadata", {}).get("tags", []):
            continue  # an exercise's answer: writing a method of one's own is the exercise
        assert not re.search(r"^\s*(def|class)\s", s, re.M), f"library logic in a notebook cell: {s[:60]!r}"


# decimals a markdown cell may hold: settings and constants, never a measured number (those are printed by code
# from the run they describe, so when a number changes the sentence changes with it)
MARKDOWN_CONSTANTS = {
    "02_retention_metric.ipynb": [r"what 0\.01, 0\.03 or 0\.3 look like",  # the ladder's reading guide, LPIPS levels
                                  r"± 1\.96"],  # a 95% normal interval
    "06_selective_amnesia.ipynb": [r"weight decay 0\.01"],  # the authors' AdamW setting
    "10_table1.ipynb": [r"forget rate ≤ 0\.2"],  # evaluation.FORGOT_BELOW
    "14_uce_ca_fmn.ipynb": [r"weight decay 0\.01"],
}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_no_measured_number_is_typed_into_markdown(path):
    # a decimal in prose outside LaTeX ($...$) and code spans is a measured number someone typed: it goes stale
    allowed = [re.compile(a) for a in MARKDOWN_CONSTANTS.get(path.name, [])]
    typed = []
    for cell in json.loads(path.read_text())["cells"]:
        if cell["cell_type"] != "markdown":
            continue
        text = re.sub(r"\$\$.*?\$\$|\$[^$]*\$|`[^`]*`", "", "".join(cell["source"]), flags=re.S)
        for a in allowed:
            text = a.sub("", text)
        typed += [text[max(0, m.start() - 30):m.end() + 10] for m in re.finditer(r"(?<![\w.])\d+\.\d+(?![\w.])", text)]
    assert not typed, f"measured numbers typed into markdown (print them from the run instead): {typed}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_every_cell_has_its_own_id(path):
    # nbformat 4.5: a cell without an id (or two cells sharing one) is fixed silently on load today, an error later
    ids = [cell.get("id") for cell in json.loads(path.read_text())["cells"]]
    assert None not in ids and len(set(ids)) == len(ids), f"{path.name}: cells without an id or sharing one"


def test_claims_are_judged_from_the_numbers():
    from unlearnkit.evaluation import claims

    bench = _bench("claims")
    assert bench.claims is claims.claims  # the bench script judges with the package's function

    def r(lpips, lo, hi, forget=0.0, near=None):
        out = {"lpips_ret": lpips, "lpips_ret_ci": (lo, hi), "forget_rate": forget}
        if near:
            out.update(lpips_neighbour=near[0], lpips_neighbour_ci=near[1:], lpips_rest=lpips, lpips_rest_ci=(lo, hi))
        return out

    rows = claims.claims({"ESD": r(0.05, 0.04, 0.06, near=(0.09, 0.08, 0.10)), "SalUn": r(0.04, 0.03, 0.05, forget=0.6),
                          "SA": r(0.03, 0.02, 0.04), "OVW": r(0.01, 0.008, 0.012), "Saddle": r(0.035, 0.03, 0.04),
                          "OVW w/o L_help": r(0.1, 0.09, 0.11)})
    verdict = {(c, m): h for c, m, h, _ in rows}
    assert verdict[("forgets", "SalUn")] is False and verdict[("forgets", "OVW")] is True
    assert verdict[("(a) neighbour pays most", "ESD")] is True
    near = dict(lpips_neighbour_ci=(0.01, 0.02), lpips_rest_ci=(0.03, 0.05))
    assert claims.who_pays_more(near) == "rest" and claims.who_pays_more({**near, "lpips_rest_ci": (0.015, 0.05)}) is None
    assert verdict[("(b) help losses keep integrity", "OVW")] is True  # below ESD and SA (SalUn did not forget)
    assert verdict[("(b) help losses keep integrity", "Saddle")] is False  # 0.035 is above SA's 0.03
    assert verdict[("(c) L_help matters", "OVW")] is True
    unforgotten = claims.claims({"OVW": r(0.01, 0.008, 0.012), "OVW w/o L_help": r(0.1, 0.09, 0.11, forget=0.5)})
    assert [(h, n.endswith("did not forget)")) for c, _, h, n in unforgotten if c.startswith("(c)")] == [(None, True)]
    results = {"ESD": r(0.05, 0.04, 0.06), "OVW": r(0.01, 0.008, 0.012), "OVW w/o L_help": r(0.1, 0.09, 0.11)}
    for m, x in results.items():  # on the training prompts OVW sits above ESD: (b) holds held out only
        x["train"] = {"lpips_ret": 0.07 if m == "OVW" else x["lpips_ret"], "lpips_ret_ci": (0.06, 0.08) if m == "OVW"
                      else x["lpips_ret_ci"]}
    table = claims.claims_table(results)
    assert "| (b) help losses keep integrity | OVW | holds | does not hold |" in table
    assert "| (c) L_help matters | OVW | holds | holds |" in table


def test_a_kinds_rule_is_picked_over_every_pair():
    tune = _bench("tune")

    def row(cfg, forget, lpips):
        return {"method": "ovw", "overrides": cfg, "forget_rate": forget, "lpips_ret": lpips}

    grid = {"ovw": [{}, {"lr": 3e-4}, {"lr": 1e-3}], "sa": [{}]}
    by_pair = {"blue": [row({}, 0.1, 0.007), row({"lr": 3e-4}, 0.0, 0.013), row({"lr": 1e-3}, 0.0, 0.047)],
               "red": [row({}, 0.6, 0.010), row({"lr": 3e-4}, 0.0, 0.013), row({"lr": 1e-3}, 0.1, 0.034)]}
    rule = tune.pick_rule(by_pair, grid)
    # the default forgets blue only; of the two that forget both, 3e-4 has the lower mean lpips_ret
    assert rule["ovw"]["overrides"] == {"lr": 3e-4} and set(rule["ovw"]["rows"]) == {"blue", "red"}
    assert rule["ovw"]["forgets"] and rule["sa"] is None  # SA never ran
    by_pair["red"][1]["forget_rate"] = 0.5
    assert tune.pick_rule(by_pair, grid)["ovw"]["overrides"] == {"lr": 1e-3}
    by_pair["red"][2]["forget_rate"] = 0.7  # none forgets on both: the lowest worst-pair forget rate, marked
    fallback = tune.pick_rule(by_pair, grid)["ovw"]
    assert fallback["overrides"] == {"lr": 3e-4} and fallback["forgets"] is False
    by_pair["red"].append(row({"lr": 1e-3}, 0.0, 0.030))  # the sweep run again: its newest row counts
    assert tune.pick_rule(by_pair, grid)["ovw"]["overrides"] == {"lr": 1e-3}


def test_a_sweep_row_is_appended_to_the_file_as_it_is_on_disk(tmp_path):
    tune = _bench("tune")
    out = tmp_path / "tune-blue.json"
    assert tune.append_row(out, {"n": 1}) == [{"n": 1}]
    out.write_text(json.dumps([{"n": 1}, {"n": 2}]))  # another sweep wrote since this one read the file
    assert tune.append_row(out, {"n": 3}) == [{"n": 1}, {"n": 2}, {"n": 3}] == json.loads(out.read_text())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tune-blue.json"]  # no temp file left


def test_a_kinds_rule_reads_the_rows_of_one_forget_noise(tmp_path, monkeypatch, capsys):
    tune = _bench("tune")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "bench").mkdir()
    import dataclasses

    from unlearnkit.experiments import profile

    up, code = tune.KIND_GRIDS["colour"]["ovw"][1], tune.method_code_hash("ovw")  # the rung at 3x OVW's lr
    shared, own = (tune.sweep_setting(dataclasses.replace(profile("cpu"), forget_noise=n)) for n in ("shared", "per-image"))
    assert own == {**shared, "forget_noise": "per-image"}  # a per-image row's settings say so
    for w in ("blue", "red"):  # shared noise says blue and red forgot at the default; per-image that neither did
        rows = [{"method": "ovw", "overrides": cfg, "profile": prof, "code": code, "forget_rate": rate, "lpips_ret": lp,
                 "lpips_ret_ci": [lp / 2, lp * 2]}
                for prof, cfg, rate, lp in ((shared, {}, 0.1, 0.01), (shared, up, 0.0, 0.02), (own, {}, 0.4, 0.01),
                                            (own, up, 0.1, 0.02))]
        # newest, but measured with another version of OVW or an earlier profile: no rule reads them
        rows += [{**rows[1], "code": "0" * 16, "lpips_ret": 0.001}, {**rows[1], "profile": {}, "lpips_ret": 0.001}]
        (tmp_path / "bench" / f"tune-{w}.json").write_text(json.dumps(rows))
    tune.print_rule(["blue", "red"])
    out = capsys.readouterr().out
    assert "forget images' noise: shared" in out and "| ovw | default | 0.010" in out
    tune.print_rule(["blue", "red"], "per-image")
    out = capsys.readouterr().out  # the newest rows are per-image, but the shared rule above did not read them
    assert "forget images' noise: per-image" in out and f"| ovw | {up} | 0.020" in out


def test_the_claims_summary_counts_held_out_pairs_and_lists_disagreements(tmp_path, capsys):
    summary = _bench("claims_summary")

    def result(lpips, rate, agree, acc=0.9):
        check = {"check": 0.02, "check_ci": [0.0, 0.1], "check_images": 50, "eval": rate, "eval_ci": [rate - 0.1, rate + 0.1],
                 "eval_images": 100, "agree": agree}
        return {"lpips_ret": lpips, "forget_rate": rate, "retain_accuracy": acc, "check_agreement": check}

    new = {"forget": "cross", "neighbour": "star", "retain": "held-out (train beside)",
           "results": {"ESD": result(0.25, 0.24, False), "OVW": result(0.02, 0.0, True),
                       "SA": result(0.80, 0.03, True, acc=0.0), "FMN": result(0.70, 0.9, True, acc=0.0)},
           "claims": [{"claim": "(b) help losses keep integrity", "method": "OVW", "holds": True,
                       "holds_on_training_prompts": False}]}
    (tmp_path / "claims-cross.json").write_text(json.dumps(new))
    (tmp_path / "claims-star.json").write_text(json.dumps({"forget": "star", "results": {}, "claims": []}))
    assert summary.main([str(p) for p in sorted(tmp_path.glob("*.json"))]) == 0
    out = capsys.readouterr().out
    assert "| cross / star | 0.250 / **0.24** | 0.020 / 0.00 |" in out
    assert "| cross / star | — | holds: OVW | — |" in out and "| cross / star | — | fails: OVW | — |" in out
    assert "| cross / star | SA | 0.800 | 0.03 | 0.00 |" in out and "| cross / star | FMN | 0.700" not in out  # FMN did not forget
    assert "3 of 4 (pair, method) runs agree" in out and "| cross | ESD | 0.02 [0.00, 0.10] (50) |" in out
    assert "Before the held-out split (not counted): claims-star.json" in out
    assert "| (b) help losses keep integrity | OVW | 1 of 1 | 0 of 1 |" in out  # held-out vs training prompts
    # a file measured with per-image forget noise is summarised on its own (bench/claims.py --forget-noise per-image)
    (tmp_path / "claims-cross-per-image.json").write_text(json.dumps({**new, "forget_noise": "per-image"}))
    files = [str(p) for p in sorted(tmp_path.glob("*.json"))]
    assert summary.main(files) == 0
    assert "measured with another, left out: claims-cross-per-image.json" in capsys.readouterr().out
    assert summary.main(files + ["--forget-noise", "per-image"]) == 0
    out = capsys.readouterr().out
    assert "left out: claims-cross.json, claims-star.json" in out and "1 of 2 (pair, method)" not in out
    assert "| cross / star | 0.250 / **0.24** | 0.020 / 0.00 |" in out and "Before the held-out split" not in out
    # a pass still under way (bench/claims.py writes each method as it goes) is named, not counted
    (tmp_path / "claims-cross-per-image.json").write_text(json.dumps(
        {**new, "forget_noise": "per-image", "complete": False, "results": {"ESD": new["results"]["ESD"]}}))
    assert summary.main(files + ["--forget-noise", "per-image"]) == 1  # nothing complete on that noise yet
    assert "pass under way, left out (measured so far): claims-cross-per-image.json (ESD)" in capsys.readouterr().out
    for bad, says in ((tmp_path / "missing.json", "no such file"), (ROOT / "README.md", "not a claims file")):
        with pytest.raises(SystemExit) as e:
            summary.main([str(bad)])
        assert e.value.code == 2 and f"{bad}: {says}" in capsys.readouterr().err


def test_claims_writes_each_method_as_it_is_measured_and_reads_it_back(tmp_path, monkeypatch, capsys):
    # bench/claims.py on one pair, with training and evaluation replaced by stand-ins that count their calls: an
    # interrupted pass keeps what it measured, a second call runs only the rest, a changed kind rule only its method
    from types import SimpleNamespace

    from unlearnkit.experiments.tuned import KIND_RULES

    bench, calls, fail_at = _bench("claims"), [], ["sa"]
    lpips = {"esd-x": 0.30, "salun": 0.20, "sa": 0.25, "saddle": 0.02, "ovw": 0.01, "ovw-nohelp": 0.10}

    def until(base, task, m, P, progress, like):
        if m in fail_at:
            raise KeyboardInterrupt  # the pass stopped here
        calls.append(m)
        return SimpleNamespace(pipeline=m, config=SimpleNamespace(lr=1e-4), history=[0] * 10, forget_checks={10: 0.0})

    def evaluate(base, pipe, task, **kw):
        x = lpips[pipe]
        part = {"lpips_ret": x, "lpips_ret_ci": (x * 0.9, x * 1.1), "lpips_neighbour": 2 * x,
                "lpips_neighbour_ci": (1.9 * x, 2.1 * x), "lpips_rest": x, "lpips_rest_ci": (0.9 * x, 1.1 * x),
                "retain_accuracy": 0.9, "n_retain": 40}
        return {**part, "forget_rate": 0.05, "forget_rate_ci": (0.0, 0.15), "n_forget": 40, "train": part}

    monkeypatch.setattr(bench, "run_until_forgotten", until)
    monkeypatch.setattr(bench, "evaluate", evaluate)
    monkeypatch.setattr(bench, "LPIPSDistance", lambda: None)
    out = tmp_path / "claims-circle.json"
    argv = ["--forget", "circle", "--neighbour", "square", "--out", str(out)]
    with pytest.raises(KeyboardInterrupt):
        bench.main(argv)
    d = json.loads(out.read_text())
    assert d["complete"] is False and list(d["results"]) == ["ESD", "SalUn"] and d["claims"] == []
    fail_at.clear()
    calls.clear()
    bench.main(argv)
    assert calls == ["sa", "saddle", "ovw", "ovw-nohelp"]  # ESD and SalUn were read from the file
    d = json.loads(out.read_text())
    assert d["complete"] is True and list(d["results"]) == ["ESD", "SalUn", "SA", "Saddle", "OVW", "OVW w/o L_help"]
    judged = {(c["claim"], c["method"]): c["holds"] for c in d["claims"]}
    assert judged["(b) help losses keep integrity", "OVW"] is True and judged["(c) L_help matters", "OVW"] is True
    assert "read from" in capsys.readouterr().out
    calls.clear()
    bench.main(argv)
    assert calls == []  # everything read back
    monkeypatch.setitem(KIND_RULES["object"], "ovw", {"lr": 1e-3})  # OVW's rule changed: OVW and its ablation again
    bench.main(argv)
    assert calls == ["ovw", "ovw-nohelp"]
    calls.clear()
    bench.main(argv + ["--fresh"])
    assert calls == list(lpips)
    d = json.loads(out.read_text())
    d["neighbour"] = "triangle"  # another pair's file at the same path is not read
    out.write_text(json.dumps(d))
    calls.clear()
    bench.main(argv)
    assert calls == list(lpips)


def test_forget_seeds_bench_reads_seed_ranges():
    fs = _bench("forget_seeds")
    assert fs.parse_seeds("0-3,1000,1002-1003,2") == [0, 1, 2, 3, 1000, 1002, 1003]
    with pytest.raises(ValueError, match="'3-1' is not a seed"):
        fs.parse_seeds("3-1")
    r = fs.summarise({0: [False] * 30, 1: [True] * 3 + [False] * 27}, [0, 1])
    assert r["rate"] == 0.05 and r["images"] == 60 and r["seed_bootstrap"][0] == 0.0


def test_table_claims_judges_a_written_table_as_the_notebook_does(tmp_path, capsys):
    from unlearnkit.evaluation import results_table
    from unlearnkit.evaluation.claims import claims

    tc = _bench("table_claims")

    def r(lpips, rate, neighbour, rest, train):
        ci = lambda v: (round(v * 0.8, 3), round(v * 1.2, 3))  # noqa: E731
        return {"fid": 10.0, "retain_accuracy": 0.9, "forget_rate": rate, "lpips_ret": lpips, "lpips_ret_ci": ci(lpips),
                "integrity": 1 - lpips, "lpips_neighbour": neighbour, "lpips_neighbour_ci": ci(neighbour),
                "lpips_rest": rest, "lpips_rest_ci": ci(rest), "lpips_forget": 0.3, "on": "eval",
                "train": {"lpips_ret": train, "lpips_ret_ci": ci(train)}}

    results = {"ESD": r(0.300, 0.0, 0.500, 0.200, 0.100), "SA": r(0.010, 0.5, 0.010, 0.010, 0.010),
               "OVW": r(0.020, 0.0, 0.030, 0.010, 0.200), "OVW w/o L_help": r(0.100, 0.1, 0.100, 0.100, 0.100)}
    results_table(results, path=tmp_path / "table1_object")
    parsed = tc.parse(None, tmp_path / "table1_object.md")
    assert parsed["ESD"]["lpips_neighbour_ci"] == (0.4, 0.6) and parsed["SA"]["forget_rate"] == 0.5
    rows = {(c, w): (h, t) for c, w, h, t, _ in tc.judged(parsed)}
    # held out: the same verdicts as the rules on the evaluate dicts themselves
    assert {(c, w): h for c, w, h, _ in claims(results) if not c.startswith("forgets")} == {k: v[0] for k, v in rows.items()}
    assert rows["(a) neighbour pays most", "ESD"] == (True, "n/a")  # (a) has no training column in the table
    assert rows["(b) help losses keep integrity", "OVW"] == (True, False)  # OVW 0.2 on training prompts > ESD's 0.1
    assert rows["(c) L_help matters", "OVW"] == (True, False)
    assert tc.main([str(tmp_path / "table1_object.md")]) == 0
    assert "| (b) help losses keep integrity | OVW | holds | does not hold |" in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:
        tc.main([str(ROOT / "pyproject.toml")])
    assert e.value.code == 2 and "no Markdown table" in capsys.readouterr().err
