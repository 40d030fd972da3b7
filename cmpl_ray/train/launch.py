"""Driver side of ``cmpl-ray train``: connect to Ray, build the datasets, start the MLflow run, fit.

Connects to a running cluster when ``RAY_ADDRESS`` is set (``ray job submit`` sets it) and otherwise starts
a local Ray. Re-running the same command (same ``run.name`` and ``run.storage_path``) resumes from the
latest checkpoint (Ray Train V2 restores a run by name + storage path) only when the config is the same
(:mod:`cmpl_ray.train.identity`): a changed config is refused before any Ray work, a completed run is
reported, not retrained, and the MLflow run is found again by the run's identity so metrics continue in it.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import Config
from ..data.epochs import start_clock
from ..data.pipeline import (
    build_train_dataset,
    build_val_dataset,
    class_names,
    read_split_lists,
    resolve_data,
    resolve_flip_map,
    steps_per_epoch,
    val_decode_mode,
)
from ..placement import start_on_driver_node
from ..tracking import runs as mlflow_run
from ..tracking import tracker as tracking
from . import attempts, console, identity, results


def storage_path(cfg: Config) -> str:
    """Absolute local path or URI for Ray Train checkpoints (default: ``ray_results`` beside output_dir)."""
    if cfg.run.storage_path:
        p = cfg.run.storage_path
        return p if "://" in p else str(Path(p).resolve())
    return str(Path(cfg.run.output_dir).resolve().parent / "ray_results")


_STATE_API: dict[str, bool | None] = {"served": None}  # None: not known (Ray was not started here)


def ensure_ray(num_cpus: int | None = None, dashboard: bool = False, log_file: str | None = None) -> None:
    """Connect to RAY_ADDRESS if set, else start (or reuse) a local Ray.

    ``dashboard=True`` (Tune sweeps) starts the dashboard on 127.0.0.1: Ray Train V2's placement-group
    cleaner asks the State API (served by the dashboard) whether a trial's Train controller is gone; without
    it the 1-CPU placement group of a finished trial leaked and the next trial waited forever on 2 CPUs.
    Plain ``train`` runs without it (measured: +2-4 s start, +~950 MB, 11 more processes) and drops the
    cleaner instead (:func:`_trainer_class`). In the CLI's quiet mode Ray's own output goes to ``log_file``
    (:mod:`cmpl_ray.train.console`); worker lines are still forwarded so the project's ones reach the terminal."""
    import ray

    if ray.is_initialized():
        return
    if console.quiet():
        console.quiet_warnings()  # again: importing Ray put its own warning filter first
        console.quiet_ray_logger(log_file)  # before init: the token-auth warning is logged during it
    kwargs: dict[str, Any] = {"include_dashboard": dashboard, "log_to_driver": True}
    if dashboard:
        kwargs["dashboard_host"] = "127.0.0.1"
    if not os.environ.get("RAY_ADDRESS") and num_cpus:
        kwargs["num_cpus"] = num_cpus
    context = ray.init(**kwargs)
    # a cluster joined through RAY_ADDRESS serves the State API only if its head runs a dashboard
    _STATE_API["served"] = bool(getattr(context, "dashboard_url", None))
    if console.quiet():
        from ray._private.ray_logging import global_worker_stdstream_dispatcher

        console.filter_forwarded(global_worker_stdstream_dispatcher, log_file)


def _trainer_class():
    """``TorchTrainer``, minus Ray Train V2's placement-group cleaner when this process started Ray without the
    State API. The cleaner (a detached actor per run) asks that API every second whether the controller is
    alive; without the dashboard every query fails, it logs "Failed to query Ray Train Controller actor state"
    and retries until the run ends (109 lines in a 2-minute demo), so it could never clean anything here. The
    controller still removes its placement group on a normal exit, and a local Ray ends with its driver."""
    from ray.train.torch import TorchTrainer

    if _STATE_API["served"] is not False:
        return TorchTrainer

    class Trainer(TorchTrainer):
        def _create_default_callbacks(self):
            return [
                c for c in super()._create_default_callbacks() if type(c).__name__ != "PlacementGroupCleanerCallback"
            ]

    return Trainer


def _ordered():
    """Ray Train's default ingest options with ``preserve_order``: the training batches (and, with several
    ranks, which rows each rank gets) follow the rows' order, not which decode actor finishes first, so a
    run is a function of its seed (measured cost: docs/data-pipeline.md)."""
    from ray.train import DataConfig

    opts = DataConfig.default_ingest_options()
    opts.preserve_order = True
    return opts


def preflight(cfg: Config, items, what: str, sample: int = 16) -> None:
    """Fail fast with a clear error when none of a sample of a list's videos can be opened."""
    from ..data.clip_decoder import fetch_video
    from ..data.lists import resolve_path
    from ..data.video_reader import BadVideo, probe

    if not items:
        raise ValueError(f"data.{what}: the list is empty")
    step = max(1, len(items) // sample)
    probes = items[::step][:sample]
    errors = []
    for it in probes:
        try:
            probe(fetch_video(resolve_path(cfg.data.root, it.path)))
            return
        except (BadVideo, OSError) as e:
            errors.append(f"{it.path}: {getattr(e, 'reason', e)}")
    raise RuntimeError(
        f"data.{what}: none of {len(probes)} sampled videos could be opened under data.root="
        f"{cfg.data.root!r}; first errors: {errors[:3]}"
    )


def _say_done(
    metrics: dict[str, Any], wall: float, out_dir: str, run_id: str | None, uri: str, brief: bool = False
) -> None:
    """The end summary (:func:`~cmpl_ray.train.console.summary_lines`); ``brief``: its first line only (a Tune
    trial: the sweep prints its own summary)."""
    log = os.path.join(out_dir, console.LOG_NAME)
    lines = console.summary_lines(
        metrics,
        wall,
        out_dir,
        run_id,
        tracking.ui_command(uri),
        log if console.quiet() and os.path.exists(log) else None,
    )
    for line in lines[:1] if brief else lines:
        print(line, flush=True)


def _start_board():
    """The 0-CPU :class:`~cmpl_ray.train.console.ProgressBoard` actor rank 0 pushes progress to (owned by this
    driver, it ends with it); None if it cannot start, and rank 0 then prints its lines itself."""
    try:
        return start_on_driver_node(console.ProgressBoard)
    except Exception:  # noqa: BLE001 - progress display must never stop training
        return None


def _is_complete(metrics: dict[str, Any], epochs: int) -> bool:
    hist = metrics.get("history") or []
    return bool(hist) and int(hist[-1].get("epoch", 0)) >= epochs


@dataclass
class RunPlan:
    """What the driver knows about a run before any Ray work: its lists, classes, length, identity, places."""

    labeled: list
    unlabeled: list
    val: list
    names: list[str]
    num_classes: int
    flip_map: list[int] | None
    steps: int
    ident: dict[str, Any]
    fingerprint: str
    store: str
    out_dir: str
    uri: str


def plan_run(cfg: Config) -> RunPlan:
    """Read and check the lists (a bad value or unreadable data fails here, before any Ray work) and resolve
    what the config leaves to the data (crop, short sides, steps per epoch)."""
    for key in ("data.root", "run.resume"):  # workers run in another working directory (and on other nodes)
        section, name = key.split(".")
        value = getattr(getattr(cfg, section), name)
        if value and "://" not in value:
            setattr(getattr(cfg, section), name, str(Path(value).resolve()))
    labeled, unlabeled, val = read_split_lists(cfg)
    names = class_names(cfg)
    flip_map = resolve_flip_map(cfg.data.flip_label_map, names)
    preflight(cfg, labeled, "labeled_list")
    if cfg.algo.name != "supervised":
        preflight(cfg, unlabeled, "unlabeled_list")
    resolve_data(cfg, labeled)  # data.crop_size=0 etc.: sizes from the videos, logged and checkpointed resolved
    steps = steps_per_epoch(cfg, len(labeled), len(unlabeled), cfg.train.num_workers)
    ident = identity.identity(cfg.flat(), identity.lists_digest(labeled, unlabeled, val))
    return RunPlan(
        labeled, unlabeled, val, names, cfg.model.num_classes or len(names), flip_map, steps, ident,
        identity.fingerprint(ident), storage_path(cfg), str(Path(cfg.run.output_dir).resolve()),
        tracking.resolve_tracking_uri(cfg.tracking.uri),
    )  # fmt: skip


def _claim_run(cfg: Config, plan: RunPlan, fresh: bool, verbose: bool, live: bool):
    """(run record, ``run.resume``'s state, the stored result of an identical completed run or None).
    A run of the same name with another config raises ``RunMismatch``; so does a ``run.resume`` checkpoint."""
    if fresh:
        moved = identity.move_aside(plan.store, cfg.run.name)
        if moved and verbose:
            print(f"[cmpl-ray] --fresh: the previous run {cfg.run.name!r} was moved to {moved}", flush=True)
    record = identity.check(plan.store, cfg.run.name, plan.ident)
    resume_state = None
    if cfg.run.resume:
        from .checkpoint import load_checkpoint

        resume_state = load_checkpoint(cfg.run.resume)
        identity.check_checkpoint(resume_state, plan.ident, f"run.resume={cfg.run.resume}")
    if record is None or record.get("status") != "complete":
        return record, resume_state, None
    done = {**record.get("metrics", {}), "already_complete": True}
    if verbose:
        print(
            f"[cmpl-ray] run {cfg.run.name!r} already completed with this exact config (fingerprint "
            f"{plan.fingerprint}, finished {record.get('finished')}); not training again. Its result:",
            flush=True,
        )
        wall = float(done.get("wall_seconds", 0.0))
        _say_done(done, wall, plan.out_dir, done.get("mlflow_run_id"), plan.uri, brief=not live)
        print("[cmpl-ray] to train it again: --fresh (keeps the old folder) or --set run.name=<new name>", flush=True)
    return record, resume_state, done


def _mlflow_run_for(
    cfg: Config, plan: RunPlan, record: dict, val_mode: str, extra_tags: dict | None, parent: str | None, verbose: bool
) -> str | None:
    """The run's MLflow run: found again by the attempt's uid (new with every fresh start, so a changed config
    never continues a run), else created with the flattened config and derived sizes as params."""
    if not cfg.tracking.enabled:
        return None
    tags = {"cmpl.run_name": cfg.run.name, "cmpl.storage_path": plan.store, "cmpl.run_uid": record["uid"],
            "cmpl.fingerprint": plan.fingerprint, **(extra_tags or {})}  # fmt: skip
    run_id = mlflow_run.find_run(plan.uri, cfg.tracking.experiment, tags)
    if run_id is not None:
        if verbose:
            print(
                f"[cmpl-ray] resuming run {cfg.run.name!r} (same config, fingerprint {plan.fingerprint}); "
                f"continuing MLflow run {run_id}",
                flush=True,
            )
        return run_id
    derived = {"fingerprint": plan.fingerprint, "steps_per_epoch": plan.steps, "num_classes": plan.num_classes,
               "num_labeled": len(plan.labeled), "num_unlabeled": len(plan.unlabeled), "num_val": len(plan.val),
               "val_decode": val_mode}  # fmt: skip
    params = {**cfg.flat(), **{f"derived.{k}": v for k, v in derived.items()}}
    run_id = mlflow_run.start_run(plan.uri, cfg.tracking.experiment, cfg.run.name, params, tags, parent)
    mlflow_run.log_list_inputs(plan.uri, run_id, cfg)  # the list files as dataset inputs
    return run_id


def _worker_inputs(cfg: Config, plan: RunPlan, run_id: str | None, actors: dict, resume_state, val_mode: str):
    """What every worker gets; the driver's actors travel as handles, ``run.resume``'s state through the object
    store (read here, where the path is, so every rank gets it on any node)."""
    import ray

    from .inputs import WorkerInputs

    return WorkerInputs(
        cfg=cfg.to_dict(), num_classes=plan.num_classes, class_names=plan.names, steps=plan.steps,
        output_dir=plan.out_dir, identity=plan.ident, run_folder=identity.run_dir(plan.store, cfg.run.name),
        lists={"labeled": [it.path for it in plan.labeled], "unlabeled": [it.path for it in plan.unlabeled]},
        val_decode=val_mode, val_items=[(it.path, it.label) for it in plan.val] if val_mode == "worker" else None,
        run_id=run_id, tracking_uri=plan.uri, mlflow_relay=actors["relay"], epoch_clock=actors["clock"],
        attempts=actors["counter"], progress_board=actors["board"],
        resume_state=ray.put(resume_state) if resume_state is not None else None,
    )  # fmt: skip


def _trainer(cfg: Config, plan: RunPlan, inputs, datasets: dict, callbacks: list | None):
    from ray.train import CheckpointConfig, DataConfig, FailureConfig, RunConfig, ScalingConfig

    from .runner import CHECKPOINT_SCORE
    from .worker import train_loop_per_worker

    per_worker = {"CPU": cfg.train.cpus_per_worker}
    if cfg.train.worker_resource:  # only nodes that declare it (the trainer node type)
        per_worker[cfg.train.worker_resource] = 1
    scaling = ScalingConfig(num_workers=cfg.train.num_workers, use_gpu=cfg.train.use_gpu,
                            resources_per_worker=per_worker)  # fmt: skip
    # Ray keeps the best checkpoints by CHECKPOINT_SCORE: an evaluated epoch's val_top1
    keep = CheckpointConfig(num_to_keep=cfg.run.keep_checkpoints, checkpoint_score_attribute=CHECKPOINT_SCORE,
                            checkpoint_score_order="max")  # fmt: skip
    run = RunConfig(name=cfg.run.name, storage_path=plan.store, callbacks=callbacks or None, checkpoint_config=keep,
                    failure_config=FailureConfig(max_failures=cfg.run.max_failures))  # fmt: skip
    return _trainer_class()(
        train_loop_per_worker, train_loop_config={"inputs": inputs}, scaling_config=scaling, run_config=run,
        datasets=datasets,
        dataset_config=DataConfig(datasets_to_split=list(datasets), execution_options={"train": _ordered()}),
    )  # fmt: skip


def _fit(trainer, actors: dict, placements: dict):
    """``trainer.fit()`` while the progress board is drained to the console; the driver's actors end after,
    once ``placements`` holds the nodes that trained and decoded (the clock actor collected them)."""
    import ray

    board, poller = actors["board"], None
    if board is not None:
        poller = console.Poller(lambda: ray.get(board.drain.remote(), timeout=30), console.Console()).start()
    try:
        return trainer.fit()
    finally:
        if poller is not None:
            poller.stop()  # the last lines rank 0 pushed, before the summary
        try:
            placements.update(ray.get(actors["clock"].placements.remote(), timeout=30))
        except Exception:  # noqa: BLE001 - a record of where it ran never fails a run
            pass
        for actor in actors.values():
            if actor is not None:
                ray.kill(actor)


def _final_metrics(cfg: Config, plan: RunPlan, result, wall: float, run_id: str | None, placements: dict):
    """metrics.json as rank 0 wrote it to the run's folder on storage (it may run on another node), plus the
    driver's part: wall time, best (evaluated) and latest checkpoint, fingerprint, MLflow run, the nodes that
    trained and decoded in this session (also MLflow tags); (metrics, best)."""
    from .runner import CHECKPOINT_SCORE

    mpath = os.path.join(plan.out_dir, "metrics.json")
    if os.path.exists(mpath):
        os.remove(mpath)  # only this run's result
    results.download(identity.run_dir(plan.store, cfg.run.name), plan.out_dir)
    metrics = json.loads(Path(mpath).read_text()) if os.path.exists(mpath) else dict(result.metrics or {})
    best = result.get_best_checkpoint(CHECKPOINT_SCORE, "max")
    metrics.update(
        wall_seconds=wall,
        best_checkpoint=best.path if best else None,
        latest_checkpoint=result.checkpoint.path if result.checkpoint else None,
        fingerprint=plan.fingerprint,
        mlflow_run_id=run_id,
        train_nodes=placements.get("train", []),
        decode_nodes=placements.get("decode", []),
    )
    tracking.write_metrics_json(mpath, metrics)
    if run_id and placements:
        mlflow_run.tag_run(plan.uri, run_id, {f"cmpl.{k}_nodes": " ".join(v) for k, v in placements.items()})
    return metrics, best


def run_training(
    cfg: Config,
    *,
    parent_run_id: str | None = None,
    extra_tags: dict[str, str] | None = None,
    callbacks: list | None = None,
    verbose: bool = True,
    fresh: bool = False,
    live: bool = True,
) -> dict[str, Any]:
    """Train with Ray Train and return the final metrics (also in ``<run.output_dir>/metrics.json``).

    ``live``: rank 0's progress is pushed to a board actor and rendered here (a bar per epoch on a terminal,
    :mod:`~cmpl_ray.train.console`); Tune trials pass False and rank 0 prints its lines, forwarded by Ray.

    A run of the same name trained with another config raises :class:`~cmpl_ray.train.identity.RunMismatch`
    (``fresh=True`` moves it aside first and starts over); one already completed with this config returns its
    stored metrics with ``already_complete=True`` and trains nothing."""
    plan = plan_run(cfg)
    record, resume_state, done = _claim_run(cfg, plan, fresh, verbose, live)
    if done is not None:
        return done
    record = identity.begin(plan.store, cfg.run.name, plan.ident, record)
    ensure_ray(log_file=os.path.join(plan.out_dir, console.LOG_NAME))
    world = cfg.train.num_workers
    actors = {"counter": attempts.start_counter(), "clock": start_clock(), "relay": None, "board": None}
    train = build_train_dataset(
        cfg, plan.labeled, plan.unlabeled, plan.num_classes, world, plan.steps, plan.flip_map, actors["clock"],
        epochs=cfg.train.epochs,
    )  # fmt: skip
    datasets = {"train": train}
    val_mode = val_decode_mode(cfg, len(plan.val), world)  # worker: each rank decodes its share, no pool per eval
    if val_mode == "ray_data":
        datasets["val"] = build_val_dataset(cfg, plan.val, plan.num_classes, world, cfg.uses_aux)
    os.makedirs(plan.out_dir, exist_ok=True)
    run_id = _mlflow_run_for(cfg, plan, record, val_mode, extra_tags, parent_run_id, verbose)
    if verbose:
        print(
            f"[cmpl-ray] {cfg.algo.name} ({cfg.algo.scheme if cfg.uses_aux else '-'}): {len(plan.labeled)} labeled, "
            f"{len(plan.unlabeled)} unlabeled, {len(plan.val)} val videos, {plan.num_classes} classes; {world} "
            f"worker(s) x {plan.steps} steps/epoch x {cfg.train.epochs} epochs; evaluation decoded "
            f"{'in the workers' if val_mode == 'worker' else 'by Ray Data'}",
            flush=True,
        )
    if run_id:  # rank 0 logs through an actor on the head node, where the store is reachable (tracking/relay.py)
        from ..tracking.relay import start_relay

        actors["relay"] = start_relay(plan.uri)
    actors["board"] = _start_board() if live and verbose else None
    inputs = _worker_inputs(cfg, plan, run_id, actors, resume_state, val_mode)
    t0 = time.perf_counter()
    placements: dict[str, list[str]] = {}
    result = _fit(_trainer(cfg, plan, inputs, datasets, callbacks), actors, placements)
    wall = time.perf_counter() - t0
    metrics, best = _final_metrics(cfg, plan, result, wall, run_id, placements)
    if run_id:  # best checkpoint folder + MLflow model "primary"; tracking trouble never fails a finished run
        from .mlflow_model import publish_best

        publish_best(cfg, plan.uri, run_id, best, verbose)
    if _is_complete(metrics, cfg.train.epochs):
        identity.complete(plan.store, cfg.run.name, record, metrics)
    if verbose:
        _say_done(metrics, wall, plan.out_dir, run_id, plan.uri, brief=not live)
    return metrics
