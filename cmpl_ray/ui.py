"""``cmpl-ray ui``: the MLflow UI opened on the project's runs, with their numbers as columns.

Why a command of our own: MLflow 3.17's UI opens on its GenAI pages, and its runs table shows only attributes
(name, date, dataset, duration, source, models) until a user picks metric and parameter columns by hand. Neither
can be set on the server or per experiment. What 3.17 does offer is a *shared view*: the experiment tag
``mlflow.sharedViewState.<key>`` holds the runs page's state as JSON (search filter, sort, ``selectedColumns``),
and the link ``#/experiments/<id>/runs?viewStateShareKey=<key>`` opens the table in that state, for any browser.
This is what the UI's own "Share" button writes (read from its bundle, ``useSharedExperimentViewState``). So
this command writes such a view (the swept parameters, ``val_top1``, ``val_mean_class_acc``, ``aux_val_top1``,
sorted by the sweep's metric; a sweep's view is filtered to its trials), starts ``mlflow server`` on loopback for a
local store (a remote tracking server is only linked), prints the link with ``workflowType=machine_learning`` and
stops the server's whole process group on Ctrl-C. The page then says "You're viewing a shared view"; "Exit shared
view" goes back to the user's own columns.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from typing import Any

from .tracking import tracker as tracking
from .tracking.runs import UI_PARAM

METRICS = ("val_top1", "val_mean_class_acc", "aux_val_top1")
SHARE_TAG = "mlflow.sharedViewState."
MAX_PARAMS = 8  # more parameter columns push the metrics off a laptop screen
HIDDEN_PARAM_PREFIXES = ("run.", "tracking.", "derived.", "description")
PATH_PARAMS = {"data.root", "data.labeled_list", "data.unlabeled_list", "data.val_list", "data.classes_file"}
SERVER_ENV = {
    "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",  # ~8 s to answer instead of ~20-50 s on 2 cores
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "true",
}


def column(kind: str, name: str) -> str:
    """A runs-table column id as the UI writes it: ``metrics.`val_top1```, ``params.`algo.threshold```."""
    return f"{kind}.`{name}`"


def view_state(params: list[str], metric: str = "val_top1", search_filter: str = "") -> dict[str, Any]:
    """The runs page's state for a shared view: these columns, sorted best ``metric`` first."""
    metrics = [metric] + [m for m in METRICS if m != metric]
    return {
        "searchFilter": search_filter,
        "orderByKey": column("metrics", metric),
        "orderByAsc": False,
        "selectedColumns": [column("params", p) for p in params] + [column("metrics", m) for m in metrics],
    }


def varying_params(runs: list, always: tuple[str, ...] = ("algo.name",)) -> list[str]:
    """Parameters whose values differ between training ``runs`` (what tells them apart), after ``always``; capped.
    Sweep parents are left out: their parameters describe the sweep, not a training run."""
    values: dict[str, set] = {}
    for r in runs:
        if r.data.tags.get("cmpl.role") == "sweep":
            continue
        for k, v in r.data.params.items():
            values.setdefault(k, set()).add(v)
    differ = sorted(
        (k for k, vs in values.items() if len(vs) > 1 and not k.startswith(HIDDEN_PARAM_PREFIXES)),
        key=lambda k: (k in PATH_PARAMS, k),  # file paths (long, often only absolute vs relative) last
    )
    keep = [k for k in always if k in values] + [k for k in differ if k not in always]
    return keep[:MAX_PARAMS]


def share_key(name: str) -> str:
    """A URL- and tag-safe key for a view name."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-") or "view"


def experiment_view(client: Any, experiment: str | None) -> tuple[str, str, dict]:
    """(experiment id, key, state) for an experiment's runs; default: the experiment of the newest run."""
    if experiment:
        exp = client.get_experiment_by_name(experiment)
        if exp is None:
            raise LookupError(f"no experiment named {experiment!r}")
        exp_id = exp.experiment_id
    else:
        exps = [e.experiment_id for e in client.search_experiments()]
        newest = client.search_runs(exps, order_by=["attributes.start_time DESC"], max_results=1) if exps else []
        if not newest:
            raise LookupError("no run in this store yet (run `cmpl-ray demo` or `cmpl-ray train` first)")
        exp_id = newest[0].info.experiment_id
    runs = client.search_runs([exp_id], max_results=200)
    return exp_id, "cmpl-ray-runs", view_state(varying_params(runs))


def sweep_view(client: Any, sweep: str, experiment: str | None) -> tuple[str, str, dict]:
    """(experiment id, key, state) for a sweep: its trials only, the swept axes, sorted by the sweep's metric."""
    from .tune.report import find_sweep_parent

    parent = find_sweep_parent(client, sweep, experiment)
    if parent is None:
        raise LookupError(f"no sweep named {sweep!r} in this store (cmpl-ray tune --name sets it)")
    axes = [a for a in parent.data.params.get("sweep.axes", "").split(",") if a]
    metric = parent.data.params.get("sweep.metric", "val_top1")
    if parent.data.params.get("sweep.mode", "max") == "min" or not metric.startswith(("val_", "aux_val_")):
        metric = "val_top1"  # the view sorts descending: a loss sweep is still shown best top-1 first
    state = view_state(axes[:MAX_PARAMS], metric, f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    return parent.info.experiment_id, share_key(f"cmpl-ray-sweep-{sweep}"), state


def publish(client: Any, experiment_id: str, key: str, state: dict) -> None:
    """Store the view in the experiment (rewritten each time, so its columns follow the runs)."""
    client.set_experiment_tag(experiment_id, SHARE_TAG + key, json.dumps(state))


def link(base: str, experiment_id: str, key: str) -> str:
    return f"{base.rstrip('/')}/#/experiments/{experiment_id}/runs?{UI_PARAM}&viewStateShareKey={key}"


def free_port() -> int:
    """A port nothing listens on now (the kernel's pick)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def start_server(uri: str, port: int, log_path: str) -> subprocess.Popen:
    """``mlflow server`` for ``uri`` on 127.0.0.1 in its own process group (its workers go with it)."""
    cmd = [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--backend-store-uri",
        uri,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
    ]
    with open(log_path, "w") as log:
        return subprocess.Popen(
            cmd, env={**os.environ, **SERVER_ENV}, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )


def wait_healthy(base: str, proc: subprocess.Popen, timeout_s: float = 120.0) -> float:
    """Seconds until ``/health`` answers; raises if the server exits or never answers."""
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
    """Stop the server's process group (SIGTERM, then SIGKILL after 15 s)."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=15)
    except ProcessLookupError:
        pass
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def prepare(uri: str, sweep: str | None = None, experiment: str | None = None) -> tuple[str, str]:
    """Write the view for ``uri`` (a sweep's or an experiment's); (experiment id, share key)."""
    client = tracking.mlflow_client(uri)
    exp_id, key, state = sweep_view(client, sweep, experiment) if sweep else experiment_view(client, experiment)
    publish(client, exp_id, key, state)
    return exp_id, key


def serve(
    uri: str = "", sweep: str | None = None, experiment: str | None = None, port: int = 5000, serve_local: bool = True
) -> int:
    """The command: write the view, serve a local store on loopback until Ctrl-C, print the link."""
    uri = tracking.resolve_tracking_uri(uri)
    try:
        exp_id, key = prepare(uri, sweep, experiment)
    except LookupError as e:
        print(f"[cmpl-ray ui] {e}: {uri}", file=sys.stderr)
        return 1
    remote = uri.startswith(("http://", "https://"))
    if remote or not serve_local:
        print(link(uri if remote else f"http://127.0.0.1:{port}", exp_id, key), flush=True)
        return 0
    if port == 0 or not port_free(port):  # 0: any free port
        free = free_port()
        if port:
            print(f"[cmpl-ray ui] port {port} is taken; using {free}", flush=True)
        port = free
    base = f"http://127.0.0.1:{port}"
    log_path = os.path.join(
        os.path.dirname(uri[len("sqlite:///") :]) if uri.startswith("sqlite:///") else ".", "mlflow-ui.log"
    )
    proc = start_server(uri, port, log_path)
    signal.signal(signal.SIGTERM, _interrupt)  # `kill` stops the server's group too, like Ctrl-C
    try:
        wait_healthy(base, proc)
        print(f"[cmpl-ray ui] MLflow UI for {uri} (log {log_path}); Ctrl-C stops it. Open:", flush=True)
        print(link(base, exp_id, key), flush=True)
        proc.wait()
        print(f"[cmpl-ray ui] the server exited with {proc.returncode}; see {log_path}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        stop_server(proc)
