"""Screenshots of a finished run in the MLflow UI for the README (docs/img/mlflow-*.png).

    python scripts/mlflow_screenshots.py --store mlflow.db [--experiment cmpl-ray-demo] [--sweep NAME] [--out docs/img]

Starts ``mlflow server`` on 127.0.0.1 the way ``cmpl-ray ui`` does (``cmpl_ray/ui.py``: a free port, job execution
off, one worker, its own process group stopped as a whole at the end) and opens the pages ``cmpl-ray ui`` links
to, in headless Chromium through Playwright:

- ``mlflow-runs.png``: the experiment's runs table as ``cmpl-ray ui`` opens it (its shared view: the parameters
  that tell the runs apart, ``val_top1``, ``val_mean_class_acc``, ``aux_val_top1``);
- ``mlflow-sweep.png`` (with ``--sweep``): the sweep's trials as ``cmpl-ray ui --sweep`` opens them;
- ``mlflow-run-overview.png``: the newest finished run: parameters, metrics, dataset inputs, logged model;
- ``mlflow-run-charts.png``: the same run's metric charts, ``train/*`` per step;
- ``mlflow-run-charts-val.png``: its top-1 charts (``val_*``, ``aux_val_*``) per evaluation.

Pages are opened with ``?workflowType=machine_learning``: MLflow 3.17's UI otherwise opens every experiment on its
GenAI pages (see cmpl_ray/tracking/runs.py). The UI is a React app that fetches after loading: each shot waits
for a text of the page to render (the run's name, the model, a metric), then up to 10 s for the network to go idle
(the runs page keeps polling) and 2.5 s for charts. The MLflow Assistant side panel is closed first
(localStorage) so the pages get the full width.

Needs the test extra's ``playwright`` (it downloads no browser) and a system Chromium
(``bash scripts/install_browser.sh``; another binary with ``--chromium``).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

from mlflow import MlflowClient

from cmpl_ray import ui
from cmpl_ray.tune.report import find_sweep_parent


def pick_run(db: str, experiment: str, run_id: str | None):

    client = MlflowClient(f"sqlite:///{db}")
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        raise SystemExit(f"no experiment {experiment!r} in {db}")
    if run_id:
        return exp, client.get_run(run_id)
    runs = client.search_runs(
        [exp.experiment_id],
        filter_string="attributes.status = 'FINISHED'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    if not runs:
        raise SystemExit(f"no finished run in experiment {experiment!r} of {db}")
    return exp, runs[0]


def shoot(
    base: str,
    exp_id: str,
    run,
    out: Path,
    chromium: str,
    width: int,
    height: int,
    runs_link: str,
    sweep: tuple[str, str] | None,
) -> list[Path]:
    from playwright.sync_api import TimeoutError as PlaywrightTimeout
    from playwright.sync_api import sync_playwright

    q = "workflowType=machine_learning"
    name = run.data.tags.get("mlflow.runName", run.info.run_id)
    # (file, page, a text that is there once the page's data has rendered, viewport height: the run pages are
    # long and scroll inside the app, so a taller viewport rather than a full-page shot)
    shots = [
        ("mlflow-runs.png", runs_link[len(base) :], name, height // 2),
        ("mlflow-run-overview.png", f"/#/experiments/{exp_id}/runs/{run.info.run_id}?{q}", "primary", height * 11 // 6),
        (
            "mlflow-run-charts.png",
            f"/#/experiments/{exp_id}/runs/{run.info.run_id}/model-metrics?{q}",
            "train/loss",
            height * 3 // 2,
        ),
    ]
    if sweep:  # (link, a trial's run name)
        shots.insert(1, ("mlflow-sweep.png", sweep[0][len(base) :], sweep[1], height // 2))
    done = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        ctx = browser.new_context(viewport={"width": width, "height": height}, device_scale_factor=1)
        # closed assistant panel and the "Model training" mode remembered, as after one click by a user
        ctx.add_init_script(
            "localStorage.setItem('mlflow.assistant.panelOpen_v1', 'false');"
            "localStorage.setItem('mlflow.assistant.fab.autoOpenedOnFirstLoad_v1', 'true');"
            "localStorage.setItem('mlflow.workflowType_v1', '\"machine_learning\"');"
        )
        page = ctx.new_page()
        for fname, path, marker, h in shots:
            page.set_viewport_size({"width": width, "height": h})
            page.goto(base + path)
            page.get_by_text(marker, exact=False).first.wait_for(state="visible", timeout=60_000)
            try:  # the runs page polls, so the network may never be idle for long
                page.wait_for_load_state("networkidle", timeout=10_000)
            except PlaywrightTimeout:
                pass
            page.wait_for_timeout(2500)  # charts and lazy panels render after their data
            for suffix, search in [("", None), ("-val", "top1")] if fname == "mlflow-run-charts.png" else [("", None)]:
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
    ap.add_argument("--sweep", default=None, help="also shoot this sweep's trials (cmpl-ray ui --sweep)")
    ap.add_argument("--out", default="docs/img")
    ap.add_argument("--chromium", default="/usr/bin/chromium")
    ap.add_argument(
        "--size",
        default="1600x900",
        help="viewport WIDTHxHEIGHT (the runs table gets half the height, the run overview twice, its charts 1.5x)",
    )
    args = ap.parse_args(argv)
    db = str(Path(args.store).resolve())
    if not os.path.exists(db):
        raise SystemExit(f"{db}: no such store (run `cmpl-ray demo` first)")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    exp, run = pick_run(db, args.experiment, args.run_id)
    port = ui.free_port()
    base = f"http://127.0.0.1:{port}"
    fd, log_path = tempfile.mkstemp(prefix="mlflow-server-", suffix=".log")
    os.close(fd)
    uri = f"sqlite:///{db}"
    exp_id, key = ui.prepare(uri, experiment=args.experiment)
    sweep = None
    if args.sweep:
        sweep_exp, sweep_key = ui.prepare(uri, sweep=args.sweep)
        parent = find_sweep_parent(MlflowClient(uri), args.sweep)  # the newest sweep of that name, as cmpl-ray ui
        trial = MlflowClient(uri).search_runs(
            [sweep_exp], filter_string=f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'", max_results=1
        )[0]
        sweep = (ui.link(base, sweep_exp, sweep_key), trial.data.tags["mlflow.runName"])
    proc = ui.start_server(uri, port, log_path)
    try:
        print(f"mlflow server {base} healthy after {ui.wait_healthy(base, proc):.1f} s", flush=True)
        w, h = (int(x) for x in args.size.split("x"))
        shoot(base, exp.experiment_id, run, out, args.chromium, w, h, ui.link(base, exp_id, key), sweep)
    except BaseException:
        print(f"server log: {log_path}", file=sys.stderr)
        raise
    finally:
        ui.stop_server(proc)
    os.remove(log_path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
