"""Screenshots of a finished run in the MLflow UI for the README (docs/img/mlflow-*.png).

    python scripts/mlflow_screenshots.py --store outputs/../mlflow.db [--experiment cmpl-ray-demo] [--out docs/img]

Starts ``mlflow server`` on 127.0.0.1 (a free port, the sqlite store given, job execution off and one worker:
it answers in ~8 s instead of ~20 s) in its own process group, which is stopped as a whole at the end (the
server's job workers otherwise stay behind). Headless Chromium through Playwright takes the pages:

- ``mlflow-runs.png``: the experiment's runs table (Dataset and Models columns, plus the top-1 columns);
- ``mlflow-run-overview.png``: the newest finished run: parameters, metrics, dataset inputs, logged model;
- ``mlflow-run-charts.png``: the same run's metric charts, ``train/*`` per step;
- ``mlflow-run-charts-val.png``: its top-1 charts (``val_*``, ``aux_val_*``) per evaluation.

Pages are opened with ``?workflowType=machine_learning``: MLflow 3.17's UI otherwise opens every experiment on its
GenAI pages (see cmpl_ray/train/mlflow_run.py). The UI is a React app that fetches after loading: each shot waits
for a text of the page to render (the run's name, the model, a metric), then up to 10 s for the network to go idle
(the runs page keeps polling) and 2.5 s for charts. The MLflow Assistant side panel is closed first
(localStorage) so the pages get the full width.

A documentation step, not a runtime dependency: ``pip install playwright`` (do not download its browsers) and a
system Chromium (Debian: ``apt-get install -y chromium``; pass another binary with ``--chromium``).
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(db: str, port: int, log_path: str) -> subprocess.Popen:
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", "MLFLOW_DISABLE_TELEMETRY": "true",
           "DO_NOT_TRACK": "true"}
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{db}",
           "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    log = open(log_path, "w")
    return subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def wait_healthy(base: str, proc: subprocess.Popen, timeout_s: float = 90.0) -> float:
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < timeout_s:
        if proc.poll() is not None:
            raise RuntimeError(f"mlflow server exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(f"{base}/health", timeout=2) as r:
                if r.status == 200:
                    return time.perf_counter() - t0
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"mlflow server at {base} not healthy after {timeout_s:.0f} s")


def stop_server(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)  # the server's own group (start_new_session): nothing else
        proc.wait(timeout=15)
    except ProcessLookupError:
        pass
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def pick_run(db: str, experiment: str, run_id: str | None):
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{db}")
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        raise SystemExit(f"no experiment {experiment!r} in {db}")
    if run_id:
        return exp, client.get_run(run_id)
    runs = client.search_runs([exp.experiment_id], filter_string="attributes.status = 'FINISHED'",
                              order_by=["attributes.start_time DESC"], max_results=1)
    if not runs:
        raise SystemExit(f"no finished run in experiment {experiment!r} of {db}")
    return exp, runs[0]


def add_columns(page, metrics: list[str], hide: list[str]) -> None:
    """Show a few metric columns in the runs table (by default 3.17 shows attributes only) and hide empty ones, as
    a user would with the "Columns" menu (toggled by label); best effort: the shot is still taken if it changed."""
    try:
        page.get_by_role("button", name="Columns").click()
        search = page.get_by_placeholder("Search columns")
        for m in metrics + hide:
            search.fill(m)  # the menu then bolds the match: click the label whose whole text is m
            exact = re.compile("^" + re.escape(m) + "$")
            page.locator("*:has(> strong)").filter(has_text=exact).first.click()
        page.keyboard.press("Escape")
    except Exception as e:  # noqa: BLE001 - documentation only
        print(f"could not add metric columns: {e!r}", file=sys.stderr)


def shoot(base: str, exp_id: str, run, out: Path, chromium: str, width: int, height: int) -> list[Path]:
    from playwright.sync_api import TimeoutError as PlaywrightTimeout
    from playwright.sync_api import sync_playwright

    q = "workflowType=machine_learning"
    name = run.data.tags.get("mlflow.runName", run.info.run_id)
    # (file, page, a text that is there once the page's data has rendered, viewport height: the run pages are
    # long and scroll inside the app, so a taller viewport rather than a full-page shot)
    shots = [("mlflow-runs.png", f"/#/experiments/{exp_id}/runs?{q}", name, height // 2),
             ("mlflow-run-overview.png", f"/#/experiments/{exp_id}/runs/{run.info.run_id}?{q}", "primary",
              height * 11 // 6),
             ("mlflow-run-charts.png", f"/#/experiments/{exp_id}/runs/{run.info.run_id}/model-metrics?{q}",
              "train/loss", height * 3 // 2)]
    done = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        ctx = browser.new_context(viewport={"width": width, "height": height}, device_scale_factor=1)
        # closed assistant panel and the "Model training" mode remembered, as after one click by a user
        ctx.add_init_script("localStorage.setItem('mlflow.assistant.panelOpen_v1', 'false');"
                            "localStorage.setItem('mlflow.assistant.fab.autoOpenedOnFirstLoad_v1', 'true');"
                            "localStorage.setItem('mlflow.workflowType_v1', '\"machine_learning\"');")
        page = ctx.new_page()
        for fname, path, marker, h in shots:
            page.set_viewport_size({"width": width, "height": h})
            page.goto(base + path)
            page.get_by_text(marker, exact=False).first.wait_for(state="visible", timeout=60_000)
            try:  # the runs page polls, so the network may never be idle for long
                page.wait_for_load_state("networkidle", timeout=10_000)
            except PlaywrightTimeout:
                pass
            if fname == "mlflow-runs.png":
                add_columns(page, ["val_top1", "aux_val_top1"], hide=["Source"])
            page.wait_for_timeout(2500)  # charts and lazy panels render after their data
            for suffix, search in ([("", None), ("-val", "top1")] if fname == "mlflow-run-charts.png" else [("", None)]):
                clip = None
                if search:  # the evaluation charts: the chart search keeps the val_* / aux_val_* top-1 ones
                    page.get_by_placeholder("Search metric charts").fill(search)
                    page.wait_for_timeout(2500)
                    clip = {"x": 0, "y": 0, "width": width, "height": min(h, 640)}  # one row of charts
                page.mouse.move(width - 5, h // 2)  # no hover toolbar over a chart
                page.wait_for_timeout(300)
                dest = out / fname.replace(".png", f"{suffix}.png")
                page.screenshot(path=str(dest), clip=clip)
                print(f"{dest}  <- {page.url}", flush=True)
                done.append(dest)
        browser.close()
    return done


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--store", default="mlflow.db", help="sqlite file of a finished run (cmpl-ray demo's mlflow.db)")
    ap.add_argument("--experiment", default="cmpl-ray-demo")
    ap.add_argument("--run-id", default=None, help="default: the newest finished run of the experiment")
    ap.add_argument("--out", default="docs/img")
    ap.add_argument("--chromium", default="/usr/bin/chromium")
    ap.add_argument("--size", default="1600x900", help="viewport WIDTHxHEIGHT (the runs table gets half the height, the run overview twice, its charts 1.5x)")
    args = ap.parse_args(argv)
    db = str(Path(args.store).resolve())
    if not os.path.exists(db):
        raise SystemExit(f"{db}: no such store (run `cmpl-ray demo` first)")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    exp, run = pick_run(db, args.experiment, args.run_id)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    fd, log_path = tempfile.mkstemp(prefix="mlflow-server-", suffix=".log")
    os.close(fd)
    proc = start_server(db, port, log_path)
    try:
        print(f"mlflow server {base} healthy after {wait_healthy(base, proc):.1f} s", flush=True)
        w, h = (int(x) for x in args.size.split("x"))
        shoot(base, exp.experiment_id, run, out, args.chromium, w, h)
    except BaseException:
        print(f"server log: {log_path}", file=sys.stderr)
        raise
    finally:
        stop_server(proc)
    os.remove(log_path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
