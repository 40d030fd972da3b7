"""The one Tune driver: a search-space file -> Ray Tune trials, each a full ``run_training`` (Ray Train V2).

Pattern (Ray Train V2 + Tune): every trial is a small *driver function* (:func:`trial_fn`) that builds the
config for its sampled values and calls :func:`cmpl_ray.train.launch.run_training`, whose ``TorchTrainer``
forwards each epoch's ``ray.train.report`` to Tune through ``TuneReportCallback``. ASHA (``time_attr=epoch``)
stops weak trials; stopping a trial ends its driver actor and with it the Train controller and workers.

Storage: ``<storage>/<sweep>/`` holds Tune's experiment state (``Tuner.restore``), ``sweep.json`` (what
``--resume`` needs to rebuild the trainable), ``train/`` (each trial's Ray Train run, named
``<sweep>-<trial_id>``, so a trial restarted after an interruption resumes from its own latest checkpoint)
and ``trials/<trial_id>/`` (metrics.json, per-class CSV, plots).

MLflow: one parent run per sweep (space, scheduler, searcher; at the end the best trial and its values),
one child run per trial (created by ``run_training`` with ``parent_run_id``), tagged at the end with
``cmpl.tune.status`` = completed | early_stopped | error and ``cmpl.tune.best`` on the best trial.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from ..config import Config, load_config
from ..files import read_text_or_none, write_text
from ..tracking import runs as mlflow_run
from ..tracking import tracker as tracking
from ..train.console import LOG_NAME
from .space import SweepSpec, load_space, overrides_of, to_tune_space

STATE_FILE = "sweep.json"
PATH_KEYS = ("root", "labeled_list", "unlabeled_list", "val_list", "classes_file")


def _abs(p: str) -> str:
    return p if "://" in p else str(Path(p).resolve())


def sweep_dir(storage: str, name: str) -> str:
    """``<storage>/<name>``: a local absolute path, or a URI (``s3://``, ``gs://``, ``file://``) kept as given."""
    return f"{storage.rstrip('/')}/{name}" if "://" in storage else os.path.join(str(Path(storage).resolve()), name)


def _pin_ray_address() -> None:
    """Point Ray Train V2's detached placement-group cleaner at this cluster.

    The cleaner removes a trial's worker placement group when ASHA stops the trial (its Train controller dies
    with the trial actor). It asks the State API, which auto-detects "the" cluster and fails with "Found
    multiple active Ray instances" when a second Ray runs on the machine: the group then leaked and every later
    trial waited forever. ``RAY_ADDRESS`` is propagated to the controller (and so to the cleaner) by Train V2.
    """
    import ray
    from ray.train.v2._internal import constants

    os.environ.setdefault("RAY_ADDRESS", ray.get_runtime_context().gcs_address)
    constants.ENV_VARS_TO_PROPAGATE.add("RAY_ADDRESS")


def evaluated_reports_callback():
    """Ray Train -> Tune, evaluated epochs only. With ``train.eval_every > 1`` an epoch without evaluation has
    no val_* metric: Tune would refuse a sweep metric missing from a report, and ASHA would rank a trial by a
    number that was not measured at that epoch. The last epoch is always evaluated, so Tune's final result is
    the trial's final one; ASHA's rungs compare ``epoch`` (its ``time_attr``) and accept the gaps."""
    from ray.tune.integration.ray_train import TuneReportCallback

    class EvaluatedReports(TuneReportCallback):
        def after_report(self, run_context, metrics, checkpoint):
            if metrics and metrics[0].get("evaluated", 1.0):
                super().after_report(run_context, metrics, checkpoint)

    return EvaluatedReports()


def trial_fn(config: dict[str, Any], sweep: dict[str, Any]) -> None:
    """One trial: config for the sampled axis values -> ``run_training`` reporting each epoch to Tune."""
    from ray import tune

    from ..train.launch import run_training

    tid = tune.get_context().get_trial_id()
    _pin_ray_address()
    config_path = None
    if sweep.get("config_text") is not None:  # the trial may run on another node: ship the text, not a path
        config_path = os.path.join(tempfile.mkdtemp(prefix="cmpl-trial-"), "config.yaml")
        with open(config_path, "w") as f:
            f.write(sweep["config_text"])
    values = {a: config[a] for a in sweep["axes"]}
    base = sweep["dir"]
    cfg = load_config(
        sweep["preset"],
        config_path,
        overrides_of(sweep["fixed"])
        + sweep["overrides"]
        + overrides_of(values)
        + [
            f"run.name={sweep['name']}-{tid}",
            "run.resume=",
            f"run.output_dir={os.path.join(sweep['local_dir'], 'trials', tid)}",
            f"run.storage_path={base}/train",
        ],
    )
    tags = {"cmpl.sweep": sweep["name"], "cmpl.trial_id": tid, "cmpl.axes": json.dumps(values, sort_keys=True)}
    # a trial re-entered after an interruption resumes its own Train run only if its config is unchanged
    # (RunMismatch fails the trial otherwise); one that had already trained its last epoch is reported
    # straight from its record (identity.complete) without starting a Train worker group (~40 s on CPU)
    res = run_training(
        cfg,
        parent_run_id=sweep.get("parent_run_id"),
        extra_tags=tags,
        callbacks=[evaluated_reports_callback()],
        verbose=True,
        live=False,
    )
    if res.get("already_complete") and res.get("history"):
        tune.report({k: float(v) for k, v in res["history"][-1].items()})


class _StopSeen(logging.Handler):
    """Sees Tune's "Stop signal received" warning. After Ctrl-C Tune returns normally and marks the trials it
    was running TERMINATED in memory (they are saved as RUNNING, so ``--resume`` re-enters them): with every
    trial already generated, this warning is the only sign that the sweep was interrupted, not finished."""

    seen = False

    def emit(self, record: logging.LogRecord) -> None:
        msg = record.getMessage()
        if msg.startswith("Stop signal received") or "has been interrupted" in msg:
            self.seen = True


def _scheduler(spec: SweepSpec, epochs: int):
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    s = spec.scheduler
    if s["name"] == "fifo":
        return FIFOScheduler()
    # max_t one past the last epoch: ASHA never sends STOP on a trial's final report, which would end the trial's
    # driver before run_training copies the result files, publishes the best checkpoint and marks the run complete
    # (the rungs below max_t are the same ones)
    return ASHAScheduler(
        time_attr="epoch",
        max_t=int(s.get("max_t") or epochs + 1),
        grace_period=int(s.get("grace_period", 1)),
        reduction_factor=float(s.get("reduction_factor", 2)),
    )


def _searcher(spec: SweepSpec):
    if spec.searcher != "optuna":
        return None  # grid and random: Tune's BasicVariantGenerator over grid_search / samplers
    from ray.tune.search.optuna import OptunaSearch

    return OptunaSearch(metric=spec.metric, mode=spec.mode, seed=0)


def _save_state(d: str, state: dict[str, Any]) -> None:
    write_text(f"{d}/{STATE_FILE}", json.dumps(state, indent=1))


def _load_state(d: str) -> dict[str, Any]:
    text = read_text_or_none(f"{d}/{STATE_FILE}")
    if text is None:
        raise FileNotFoundError(f"{d}/{STATE_FILE}: no sweep to resume here (check --storage and the sweep name)")
    state = json.loads(text)
    # the space/config files are stored inside the state: a job's upload directory is gone by the next job
    tmp = tempfile.mkdtemp(prefix="cmpl-sweep-")
    for key in ("space", "config"):
        if state.get(f"{key}_text") is not None:
            path = os.path.join(tmp, os.path.basename(state[f"{key}_path"]))
            with open(path, "w") as f:
                f.write(state[f"{key}_text"])
            state[f"{key}_path"] = path
    return state


def _sweep_parent(base_cfg: Config, spec: SweepSpec, state: dict, uri: str, resume: bool) -> str | None:
    """The sweep's MLflow parent run (found again on resume), its params the space, scheduler and overrides."""
    if not base_cfg.tracking.enabled:
        return None
    name, ptags = state["name"], {"cmpl.sweep": state["name"], "cmpl.role": "sweep"}
    parent = mlflow_run.find_run(uri, base_cfg.tracking.experiment, ptags) if resume else None
    if parent is not None:
        return parent
    params = {
        "sweep.space_file": os.path.basename(state["space_path"]),
        "sweep.searcher": spec.searcher,
        "sweep.num_samples": state["num_samples"],
        "sweep.max_concurrent_trials": state["max_concurrent"],
        "sweep.metric": spec.metric,
        "sweep.mode": spec.mode,
        "sweep.axes": ",".join(spec.axes()),
        "sweep.preset": spec.preset,
        **{f"sweep.scheduler.{k}": v for k, v in spec.scheduler.items()},
        **{f"space.{a}": json.dumps({k: v}) for a, (k, v) in spec.space.items()},
        **{f"fixed.{k}": v for k, v in spec.fixed.items()},
        **{f"set.{i}": o for i, o in enumerate(state["overrides"])},
    }
    tags = {**ptags, "cmpl.space": spec.description[:500]}
    return mlflow_run.start_run(uri, base_cfg.tracking.experiment, name, params, tags)


def _tuner(trainable, spec: SweepSpec, epochs: int, state: dict, d: str, resume: bool):
    """A new ``Tuner`` over the space, or the interrupted one restored from ``d`` (unfinished and errored
    trials resumed)."""
    from ray import tune

    if resume and tune.Tuner.can_restore(d):
        return tune.Tuner.restore(d, trainable=trainable, resume_unfinished=True, resume_errored=True)
    return tune.Tuner(
        trainable,
        param_space=to_tune_space(spec),
        tune_config=tune.TuneConfig(
            metric=spec.metric,
            mode=spec.mode,
            num_samples=state["num_samples"],
            scheduler=_scheduler(spec, epochs),
            search_alg=_searcher(spec),
            max_concurrent_trials=state["max_concurrent"],
        ),
        run_config=tune.RunConfig(
            name=state["name"], storage_path=os.path.dirname(d), failure_config=tune.FailureConfig(max_failures=1)
        ),
    )


def run_sweep(
    space_path: str | None = None,
    *,
    preset: str | None = None,
    config_path: str | None = None,
    overrides: list[str] | None = None,
    num_samples: int | None = None,
    name: str | None = None,
    storage: str = "outputs/tune",
    max_concurrent: int | None = None,
    searcher: str | None = None,
    resume: str | None = None,
    num_cpus: int | None = None,
    scheduler: str | None = None,
    verbose: bool = True,
) -> dict[str, Any]:
    """Run (or, with ``resume=NAME``, restore) a sweep; returns a summary (best trial, per-trial rows)."""
    from ray import tune

    from ..train.launch import ensure_ray

    if resume:
        d = sweep_dir(storage, resume)
        state = _load_state(d)
        space_path, preset, config_path = state["space_path"], state["preset"], state["config_path"]
        overrides, num_samples, name = state["overrides"], state["num_samples"], resume
        max_concurrent, searcher = state["max_concurrent"], state["searcher"]
        scheduler = state.get("scheduler")
    if not space_path:
        raise ValueError("a search-space file is required (or --resume SWEEP)")
    spec = load_space(space_path, preset, searcher)
    if scheduler:  # --scheduler fifo runs every trial to the end (benchmarks: ASHA vs full)
        spec.scheduler = {**spec.scheduler, "name": scheduler}
    overrides = list(overrides or [])
    # the whole grid's configs are validated before any trial starts
    base_cfg = load_config(spec.preset, config_path, overrides_of(spec.fixed) + overrides)
    if spec.preset is None and config_path is None:
        raise ValueError(f"{space_path}: no preset: give --preset or a 'preset:' line in the space file")
    name = name or f"{spec.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    d = sweep_dir(storage, name)
    samples = num_samples or spec.num_samples
    mct = max_concurrent or spec.max_concurrent_trials
    uri = tracking.resolve_tracking_uri(base_cfg.tracking.uri)
    state = {
        "space_path": str(Path(space_path).resolve()),
        "preset": spec.preset,
        "config_path": str(Path(config_path).resolve()) if config_path else None,
        "overrides": overrides,
        "num_samples": samples,
        "max_concurrent": mct,
        "searcher": spec.searcher,
        "name": name,
        "scheduler": spec.scheduler["name"],
        "space_text": Path(space_path).read_text(),
        "config_text": Path(config_path).read_text() if config_path else None,
    }
    parent = _sweep_parent(base_cfg, spec, state, uri, bool(resume))
    state["parent_run_id"] = parent
    _save_state(d, state)
    # Tune runs each trial in its own working directory: pin paths and the tracking store to absolute ones
    pinned = [f"tracking.uri={uri}"] + [
        f"data.{k}={_abs(getattr(base_cfg.data, k))}" for k in PATH_KEYS if getattr(base_cfg.data, k)
    ]
    local = d if "://" not in d else str(Path("outputs", "tune", name).resolve())  # trial outputs stay on disk
    sweep = {
        "name": name,
        "dir": d,
        "local_dir": local,
        "axes": spec.axes(),
        "preset": spec.preset,
        "config_text": state["config_text"],
        "fixed": spec.fixed,
        "overrides": overrides + pinned,
        "parent_run_id": parent,
    }
    trainable = tune.with_resources(tune.with_parameters(trial_fn, sweep=sweep), {"CPU": 0.01})
    ensure_ray(num_cpus, dashboard=True, log_file=os.path.join(local, LOG_NAME))  # quiet: Ray's lines go there
    t0 = time.perf_counter()
    tuner = _tuner(trainable, spec, base_cfg.train.epochs, state, d, bool(resume))
    stop, tune_log = _StopSeen(), logging.getLogger("ray.tune.tune")
    tune_log.addHandler(stop)
    try:
        grid = tuner.fit()
    finally:
        tune_log.removeHandler(stop)
    wall = time.perf_counter() - t0
    return summarize(
        grid, spec, base_cfg.train.epochs, uri, parent, name, wall, verbose, storage, samples, interrupted=stop.seen
    )


def summarize(
    grid,
    spec: SweepSpec,
    epochs: int,
    uri: str,
    parent: str | None,
    name: str,
    wall: float,
    verbose: bool,
    storage: str = "",
    samples: int = 1,
    interrupted: bool = False,
) -> dict[str, Any]:
    """Per-trial rows (values, final/best metric, epochs, status), MLflow tags and the parent's summary."""
    rows = []
    for t in grid._experiment_analysis.trials:  # Trial objects: status + last result + per-metric max/min
        m = t.last_result or {}
        ep = int(m.get("epoch", 0) or 0)
        if t.status == "ERROR":
            status = "error"
        elif t.status != "TERMINATED":
            status, interrupted = "unfinished", True
        else:
            status = "completed" if ep >= epochs else "early_stopped"
        agg = (t.metric_analysis or {}).get(spec.metric, {})
        it = (t.metric_analysis or {}).get("time_this_iter_s", {})  # Tune's per-report wall: epoch 1 holds start-up
        rows.append(
            {
                "trial_id": t.trial_id,
                "values": {a: (t.config or {}).get(a) for a in spec.axes()},
                "status": status,
                "epochs": ep,
                "final": m.get(spec.metric),
                "best": agg.get(spec.mode),
                "seconds": m.get("time_total_s"),
                "epoch_s_min": it.get("min"),
                "epoch_s_max": it.get("max"),
            }
        )
    # Tune returns normally after Ctrl-C; trials it never generated or left unfinished mean "interrupted"
    expected = spec.grid_size() * samples
    interrupted = interrupted or len(rows) < expected
    ok = [r for r in rows if r["best"] is not None]
    best_row = (
        (max(ok, key=lambda r: r["best"]) if spec.mode == "max" else min(ok, key=lambda r: r["best"])) if ok else None
    )
    if not interrupted:
        _tag_mlflow(uri, parent, name, rows, best_row, spec, wall)
    summary = {
        "name": name,
        "wall_seconds": wall,
        "trials": rows,
        "best": best_row,
        "interrupted": interrupted,
        "early_stopped": sum(r["status"] == "early_stopped" for r in rows),
        "errors": sum(r["status"] == "error" for r in rows),
        "parent_run_id": parent,
    }
    if interrupted:
        done = sum(r["status"] in ("completed", "early_stopped", "error") for r in rows)
        print(
            f"[cmpl-ray tune] {name} interrupted with {done} of {expected} trials ended; "
            f"resume with: cmpl-ray tune --resume {name}" + (f" --storage {storage}" if storage else ""),
            flush=True,
        )
        return summary
    if verbose:
        print(
            f"[cmpl-ray tune] {name}: {len(rows)} trials in {wall / 60:.1f} min, {summary['early_stopped']} stopped "
            f"early by {spec.scheduler['name']}, {summary['errors']} errors",
            flush=True,
        )
        if best_row:
            print(
                f"[cmpl-ray tune] best {spec.metric} {best_row['best']:.2f}: {best_row['values']} "
                f"(trial {best_row['trial_id']})",
                flush=True,
            )
        print(f"[cmpl-ray tune] table: cmpl-ray report {name}; MLflow: {tracking.ui_command(uri, name)}", flush=True)
    return summary


def _tag_mlflow(
    uri: str, parent: str | None, name: str, rows: list[dict], best_row: dict | None, spec: SweepSpec, wall: float
) -> None:
    if not parent:
        return
    try:
        client = tracking.mlflow_client(uri)
        exp_id = client.get_run(parent).info.experiment_id
        children = client.search_runs(
            [exp_id], filter_string=f"tags.`mlflow.parentRunId` = '{parent}'", max_results=10000
        )
        by_tid = {c.data.tags.get("cmpl.trial_id"): c for c in children}
        for r in rows:
            c = by_tid.get(r["trial_id"])
            if c is None:
                continue
            client.set_tag(c.info.run_id, "cmpl.tune.status", r["status"])
            client.set_tag(c.info.run_id, "cmpl.tune.epochs", str(r["epochs"]))
            if best_row is not None and r is best_row:
                client.set_tag(c.info.run_id, "cmpl.tune.best", "true")
            if c.info.status == "RUNNING":  # stopped by the scheduler: it ended when it last reported, not now
                last = client.get_metric_history(c.info.run_id, "epoch")
                end = max((m.timestamp for m in last), default=None)
                status = "KILLED" if r["status"] != "completed" else "FINISHED"
                client.set_terminated(c.info.run_id, status, end_time=end)
        client.log_metric(parent, "sweep_wall_seconds", wall)
        client.log_metric(parent, "trials", len(rows))
        client.log_metric(parent, "early_stopped", sum(r["status"] == "early_stopped" for r in rows))
        if best_row is not None:
            client.log_metric(parent, f"best_{spec.metric}", best_row["best"])
            client.set_tag(parent, "cmpl.tune.best_trial", best_row["trial_id"])
            client.set_tag(parent, "cmpl.tune.best_values", json.dumps(best_row["values"], sort_keys=True)[:5000])
        client.set_terminated(parent, "FINISHED")
    except Exception as e:  # noqa: BLE001 - tracking trouble never fails a finished sweep
        print(f"[cmpl-ray tune] WARNING could not tag the sweep's MLflow runs: {e!r}", flush=True)
