"""``cmpl-ray report SWEEP``: a sweep as a paper-style markdown table, read back from the MLflow store.

Reads the parent run (tag ``cmpl.sweep=SWEEP``, ``cmpl.role=sweep``) and its children: the axis values
(tag ``cmpl.axes``), the final and best value of the sweep's metric (metric history; for a ``train_*`` epoch
mean, which only Tune and ``metrics.json`` get, MLflow's per-step ``train/*`` series, named as such), epochs
run and whether ASHA stopped the trial. Works on any store the sweep logged to, so a teammate can print a
colleague's sweep.
"""

from __future__ import annotations

import json
from typing import Any

from ..tracking import tracker as tracking


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, dict):
        return ", ".join(f"{k.split('.')[-1]}={_fmt(x)}" for k, x in v.items())
    return str(v)


def find_sweep_parent(client: Any, name: str, experiment: str | None = None):
    """The newest MLflow parent run of sweep ``name`` (tags ``cmpl.sweep``, ``cmpl.role=sweep``), or None."""
    exps = [client.get_experiment_by_name(experiment)] if experiment else client.search_experiments()
    exp_ids = [e.experiment_id for e in exps if e is not None]
    if not exp_ids:
        return None
    found = client.search_runs(
        exp_ids,
        filter_string=f"tags.`cmpl.sweep` = '{name}' and tags.`cmpl.role` = 'sweep'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    return found[0] if found else None


def sweep_rows(
    name: str, uri: str = "", experiment: str | None = None, metric: str | None = None
) -> tuple[dict, list[dict]]:
    """(parent info, one row per trial) for sweep ``name``; raises LookupError when it is not in the store."""
    uri = tracking.resolve_tracking_uri(uri)
    client = tracking.mlflow_client(uri)
    parent = find_sweep_parent(client, name, experiment)
    if parent is None:
        raise LookupError(f"no sweep named {name!r} in the MLflow store {uri}")
    metric = metric or parent.data.params.get("sweep.metric", "val_top1")
    pick = min if parent.data.params.get("sweep.mode", "max") == "min" else max
    children = client.search_runs(
        [parent.info.experiment_id],
        filter_string=f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'",
        max_results=10000,
    )
    rows = []
    shown = metric
    for c in children:
        hist = [m.value for m in client.get_metric_history(c.info.run_id, metric)]
        if not hist and metric.startswith("train_"):
            # per-epoch train_* means are reported to Tune but not logged to MLflow (one name per quantity:
            # MLflow has train/* per logged step); show that series, under its own name
            hist = [m.value for m in client.get_metric_history(c.info.run_id, "train/" + metric[len("train_") :])]
            shown = "train/" + metric[len("train_") :] if hist else shown
        t = c.data.tags
        rows.append(
            {
                "trial_id": t.get("cmpl.trial_id", c.info.run_id[:8]),
                "values": json.loads(t.get("cmpl.axes", "{}")),
                "final": hist[-1] if hist else None,
                "best": pick(hist) if hist else None,
                "epochs": int(c.data.metrics.get("epoch", 0)),
                "status": t.get("cmpl.tune.status", c.info.status.lower()),
                "best_trial": t.get("cmpl.tune.best") == "true",
                "run_id": c.info.run_id,
            }
        )
    info = {
        "run_id": parent.info.run_id,
        "params": parent.data.params,
        "tags": parent.data.tags,
        "uri": uri,
        "metric": shown,
        "mode": parent.data.params.get("sweep.mode", "max"),
    }
    return info, rows


def markdown(name: str, info: dict, rows: list[dict]) -> str:
    metric, sign = info["metric"], (1 if info["mode"] == "min" else -1)
    axes = sorted({a for r in rows for a in r["values"]})
    head = axes + [f"final {metric}", f"best {metric}", "epochs", "status"]
    out = [
        f"# Sweep {name}",
        "",
        f"space `{info['params'].get('sweep.space_file', '?')}`, preset `{info['params'].get('sweep.preset', '?')}`, "
        f"searcher {info['params'].get('sweep.searcher', '?')}, "
        f"scheduler {info['params'].get('sweep.scheduler.name', '?')}; "
        f"{len(rows)} trials; MLflow parent run `{info['run_id']}`",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]

    def key(r):
        return (r["best"] is None, sign * r["best"] if r["best"] is not None else 0.0)

    for r in sorted(rows, key=key):
        cells = [_fmt(r["values"].get(a, "-")) for a in axes]
        cells += [
            "-" if r["final"] is None else f"{r['final']:.2f}",
            "-" if r["best"] is None else f"{r['best']:.2f}",
            str(r["epochs"]),
            r["status"] + (" (best)" if r["best_trial"] else ""),
        ]
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out) + "\n"


def report(name: str, uri: str = "", experiment: str | None = None, metric: str | None = None) -> str:
    """Markdown table of sweep ``name`` (metric and mode default to the sweep's own)."""
    info, rows = sweep_rows(name, uri, experiment, metric)
    return markdown(name, info, rows)
