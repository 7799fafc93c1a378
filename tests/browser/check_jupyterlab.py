"""Real-browser check: notebook 00 in JupyterLab, run by headless Chromium, shows its figure and no error.

    python tests/browser/check_jupyterlab.py [--notebook 00_quickstart.ipynb] [--profile smoke] [--screenshot PATH]

Starts JupyterLab on 127.0.0.1 (a free port, no token) over a scratch copy of notebooks/ (so autosave never
touches the committed notebooks), opens the notebook in headless Chromium through selenium, runs all cells with
UNLEARNKIT_PROFILE=smoke (`--profile cpu`: the embedded reproduction, as a class sees it), waits until every code cell has run and the kernel is idle, fails on any error output in
the page (tracebacks, widgets that could not render), and saves a screenshot: on the cpu profile to
figures/jupyterlab.png (the committed one), on the others to the scratch folder unless --screenshot names a path. Installs Debian's `chromium` and
`chromium-driver` with apt-get when they are missing (CI runs as root). Exit status 0 on success, 1 on failure.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# the notebook as JupyterLab's models hold it: per code cell, its execution count and output types / mime types
CELLS_JS = """
const panel = window.jupyterapp.shell.currentWidget;
if (!panel || !panel.content || !panel.content.model) { return null; }
const cells = panel.content.model.cells, out = [];
for (let i = 0; i < cells.length; i++) {
  const c = cells.get(i);
  if (c.type !== 'code') { continue; }
  out.push({count: c.executionCount, outputs: c.outputs.toJSON().map(o => ({
    type: o.output_type, name: o.name || null, ename: o.ename || null, evalue: o.evalue || null,
    mimes: Object.keys(o.data || {})}))});
}
return {cells: out, kernel: panel.sessionContext.kernelDisplayStatus};
"""
# what the page shows as an error: a rendered traceback, or a widget that could not be displayed
PAGE_ERRORS_JS = """
const found = [];
for (const el of document.querySelectorAll('.jp-OutputArea-output')) {
  const text = el.innerText || '';
  if (/Traceback \\(most recent call last\\)|Error displaying widget|model not found/.test(text)) {
    found.push(text.slice(0, 300));
  }
}
return found;
"""


def ensure_chromium() -> tuple[str, str]:
    """Paths of chromium and chromedriver, installing Debian's packages when either is missing."""
    browser, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if browser and driver:
        return browser, driver
    if os.geteuid() != 0:
        raise SystemExit("chromium and chromedriver are missing; install them "
                         "(apt-get install -y chromium chromium-driver) or run as root")
    print("installing chromium and chromium-driver (apt-get) ...", flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update"], check=True, env=env, stdout=subprocess.DEVNULL)
    subprocess.run(["apt-get", "install", "-y", "chromium", "chromium-driver"], check=True, env=env,
                   stdout=subprocess.DEVNULL)
    return shutil.which("chromium"), shutil.which("chromedriver")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(what: str, check, timeout: float, every: float = 0.5):
    """Call `check` until it returns something truthy; TimeoutError naming `what` after `timeout` seconds."""
    end = time.time() + timeout
    while time.time() < end:
        value = check()
        if value:
            return value
        time.sleep(every)
    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--notebook", default="00_quickstart.ipynb", help="a notebook of notebooks/")
    ap.add_argument("--profile", default="smoke", help="the profile the notebook runs on (smoke: seconds; cpu: minutes)")
    ap.add_argument("--screenshot", default=None, help="where the screenshot goes (default: figures/jupyterlab.png "
                    "on the cpu profile, else the scratch folder)")
    ap.add_argument("--timeout", type=float, default=600, help="seconds for the notebook to run")
    args = ap.parse_args(argv)
    start = time.time()
    browser_path, driver_path = ensure_chromium()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    scratch = Path(tempfile.mkdtemp(prefix="unlearnkit-lab-"))
    shutil.copytree(ROOT / "notebooks", scratch / "notebooks")
    # no "get notified about Jupyter news?" toast over the screenshot
    news = scratch / "settings" / "@jupyterlab" / "apputils-extension" / "notification.jupyterlab-settings"
    news.parent.mkdir(parents=True)
    news.write_text(json.dumps({"fetchNews": "false"}))
    port = free_port()
    if args.screenshot is None:
        args.screenshot = str(ROOT / "figures" / "jupyterlab.png" if args.profile == "cpu" else scratch / "jupyterlab.png")
    env = {**os.environ, "UNLEARNKIT_PROFILE": args.profile,
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
           "JUPYTERLAB_WORKSPACES_DIR": str(scratch / "workspaces"),
           "JUPYTERLAB_SETTINGS_DIR": str(scratch / "settings"),
           "UNLEARNKIT_CACHE": os.environ.get("UNLEARNKIT_CACHE", str(scratch / "cache"))}
    env.pop("MPLBACKEND", None)
    log = open(scratch / "lab.log", "w")
    lab = subprocess.Popen([sys.executable, "-m", "jupyter", "lab", "--no-browser", "--allow-root",
                            "--ip=127.0.0.1", f"--port={port}", "--ServerApp.token=", "--ServerApp.password=",
                            f"--ServerApp.root_dir={scratch / 'notebooks'}", "--LabApp.expose_app_in_browser=True"],
                           env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    driver, failure = None, None
    try:
        def server_up():
            if lab.poll() is not None:
                raise RuntimeError(f"jupyter lab exited with status {lab.returncode}")
            try:
                return urllib.request.urlopen(f"{base}/api/status", timeout=2).status == 200
            except OSError:
                return False

        wait_for("JupyterLab to answer", server_up, 90)
        t_server = time.time()
        options = webdriver.ChromeOptions()
        options.binary_location = browser_path
        for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                     "--window-size=1400,1800"):
            options.add_argument(flag)
        driver = webdriver.Chrome(service=Service(driver_path), options=options)
        driver.get(f"{base}/lab/tree/{args.notebook}")
        js = driver.execute_script
        wait_for("the notebook and its kernel", lambda: (js("return window.jupyterapp ? true : false")
                                                         and (js(CELLS_JS) or {}).get("kernel") == "idle"), 120)
        t_open = time.time()
        js("window.jupyterapp.commands.execute('notebook:run-all-cells')")

        def all_ran():
            state = js(CELLS_JS)
            done = state and state["kernel"] == "idle" and all(c["count"] for c in state["cells"])
            errors = [o for c in (state or {}).get("cells", []) for o in c["outputs"] if o["type"] == "error"]
            if errors:
                raise RuntimeError(f"error output: {errors[0]['ename']}: {errors[0]['evalue']}")
            return state if done else None

        state = wait_for("every cell to run and the kernel to go idle", all_ran, args.timeout, every=1)
        t_run = time.time()
        # the last cell with a figure into view, then let the page settle before reading it and the screenshot
        js("const nb = window.jupyterapp.shell.currentWidget.content; let last = nb.widgets.length - 1;"
           "nb.widgets.forEach((w, i) => { const o = w.model.outputs; if (o && o.toJSON().some("
           "x => x.data && x.data['image/png'])) { last = i; } });"
           "nb.activeCellIndex = last; nb.scrollToItem(last, 'center');")
        time.sleep(2)
        page_errors = js(PAGE_ERRORS_JS)
        images = sum("image/png" in o["mimes"] for c in state["cells"] for o in c["outputs"])
        rendered = js("return document.querySelectorAll('.jp-OutputArea-output img').length")
        if page_errors:
            failure = f"error output in the page: {page_errors[0]!r}"
        elif images < 1 or rendered < 1:
            failure = f"no figure: {images} image/png outputs in the notebook, {rendered} <img> in the page"
    except Exception as e:  # one line for CI, with the screenshot of where it stopped
        failure = f"{type(e).__name__}: {e}"
    finally:
        if driver is not None:
            Path(args.screenshot).parent.mkdir(parents=True, exist_ok=True)
            driver.save_screenshot(args.screenshot)
            driver.quit()
        lab.terminate()
        try:
            lab.wait(20)
        except subprocess.TimeoutExpired:
            lab.kill()
        log.close()
    if failure:
        print(f"check_jupyterlab: FAILED: {failure} (screenshot {args.screenshot}; server log {scratch / 'lab.log'})")
        return 1
    summary = {"notebook": args.notebook, "code_cells": len(state["cells"]), "images": images,
               "img_in_page": rendered, "seconds_total": round(time.time() - start, 1),
               "seconds_server": round(t_server - start, 1), "seconds_open": round(t_open - t_server, 1),
               "seconds_run_all": round(t_run - t_open, 1), "screenshot": args.screenshot}
    print("check_jupyterlab: ok", json.dumps(summary))
    shutil.rmtree(scratch, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
