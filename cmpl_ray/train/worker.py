"""The one per-worker function that touches ``ray.train``: shards, DDP wrapping, reports, checkpoints.

Everything numeric happens Ray-free: an epoch is :func:`cmpl_ray.train.runner.run_epoch` (shared with the
Ray-free runner), its steps :mod:`cmpl_ray.train.loop`. Each worker holds BOTH networks, each
wrapped for DDP separately by ``prepare_model`` (one module per DDP wrapper, so no ``find_unused_parameters``),
and ONE optimizer over both parameter sets, which is Eq. 6's joint objective. Rank 0 alone logs to MLflow
and writes result files.
"""

from __future__ import annotations

import csv
import dataclasses
import itertools
import logging
import os
import sys
import tempfile
import time
from typing import Any

import numpy as np
import ray.train
import ray.train.torch
import torch
import torch.distributed as dist

from ..config import Config, from_dict, save_config
from ..data.epochs import KEY_STRIDE, RowLedger, split_check
from ..data.pipeline import ERR_CODES
from ..placement import node_label
from ..tracking.relay import RelayClient
from ..tracking.tracker import Tracker, write_metrics_json
from . import attempts, results
from . import checkpoint as ckpt
from .console import format_step, step_event
from .identity import check_checkpoint
from .inputs import WorkerInputs
from .loop import per_class_accuracy
from .plots import plot_class_gap, plot_pseudo_label_ratio
from .runner import CHECKPOINT_SCORE, Collectives, EpochOutcome, Nets, RunCounters, build_nets, run_epoch

log = logging.getLogger("cmpl_ray.train")

_board: list[Any] = [None]  # the driver's progress board (cmpl_ray.train.console), set by rank 0's loop


def say(msg: str) -> None:
    """A progress line for the user: to the driver's board when there is one (waited for, so lines keep their
    order and none is lost when the worker ends), else on stdout. Not print(): Ray Train V2 patches print into
    its logger, which shows it twice."""
    if _push({"kind": "line", "text": msg}, wait=True):
        return
    sys.stdout.write(msg + "\n")
    sys.stdout.flush()


def _push(event: dict[str, Any], wait: bool = False) -> bool:
    if _board[0] is None:
        return False
    try:
        ref = _board[0].push.remote(event)
        if wait:
            ray.get(ref, timeout=30)
        return True
    except Exception:  # noqa: BLE001 - the board is display only: fall back to stdout
        _board[0] = None
        return False


def _all_reduce_counts(counts: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Sum count tensors over ranks (in place; float64 on the CPU after). NCCL reduces only CUDA tensors."""
    if dist.is_available() and dist.is_initialized():
        on = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
        for k in sorted(counts):  # the same order on every rank
            t = counts[k].to(on, torch.float64)
            dist.all_reduce(t)
            counts[k] = t.cpu()
    return counts


def _gather(obj: Any) -> list[Any]:
    if dist.is_available() and dist.is_initialized():
        out = [None] * dist.get_world_size()
        dist.all_gather_object(out, obj)
        return out
    return [obj]


def _flatten_unlabeled(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rows carry (ratio, ...) unlabeled clips each: (B_l, ratio, ...) -> (B_u, ...)."""
    for k in list(batch):
        if k.startswith("u_") or k == "y_u":
            batch[k] = batch[k].flatten(0, 1)
    return batch


def _run_batches(
    shard, batch_size: int, start_epoch: int, steps: int, world: int, clock: Any = None, rank: int = 0, ledger=None
):
    """The whole run's batches from ONE iteration of the shard: the training loop takes ``steps`` of them per
    epoch (``itertools.islice``), so the decode actor pool and its prefetch carry over epoch boundaries
    instead of restarting every epoch (the first batches of an epoch would wait for a new pool).

    Rank 0 first sets the clock to the epoch the stream starts at (``start_epoch`` > 0 after a resume); the
    shards' execution starts only when every rank has asked (``streaming_split``'s barrier), hence after that.
    Every row's key names its epoch, so a row drawn for the wrong epoch could never train unnoticed: with one
    rank the i-th batch must be epoch ``start + i // steps``'s; with several, ``streaming_split`` deals blocks
    to the ranks by row count, so an epoch's last rows may reach a rank in its next epoch's first step."""
    if clock is not None and rank == 0:
        ray.get(clock.set.remote(start_epoch))
    for i, batch in enumerate(shard.iter_torch_batches(batch_size=batch_size, drop_last=True, prefetch_batches=2)):
        if "key" in batch and clock is not None:
            got = batch["key"] // KEY_STRIDE
            want = start_epoch + i // steps
            if bool((got < start_epoch).any()) or (world == 1 and bool((got != want).any())):
                raise RuntimeError(
                    f"step {i} of a stream that starts at epoch {start_epoch} got rows of epoch "
                    f"{int(got.min())}: the epoch clock was not set before the dataset ran"
                )
            if ledger is not None:  # which rows this rank trained, checked over all ranks at the end
                ledger.add(batch["key"].numpy())
        yield _flatten_unlabeled(batch)


def _val_source(cfg: Config, inputs: WorkerInputs, num_classes: int, with_aux: bool, rank: int, world: int):
    """A callable giving one evaluation's batches for this rank: decoded here in threads (``data.val_decode``
    worker: items[rank::world], nothing to start) or read from the "val" shard (ray_data: a new actor pool per
    evaluation). Both give every val video once over the ranks and the same clips."""
    if inputs.val_decode != "worker":
        shard = ray.train.get_dataset_shard("val")  # this rank's equal share (padded, exact)
        return lambda: shard.iter_torch_batches(batch_size=2, prefetch_batches=2)
    from ..data.lists import VideoItem
    from ..data.pipeline import iter_val_batches

    items = [VideoItem(p, y) for p, y in inputs.val_items]
    threads = max(2, cfg.train.threads_per_worker or int(cfg.train.cpus_per_worker))
    return lambda: iter_val_batches(cfg, items, num_classes, with_aux, rank, world, batch_size=2, threads=threads)


def _write_per_class(
    path: str,
    names: list[str],
    counts: dict[str, torch.Tensor],
    has_aux: bool,
    pseudo: dict[str, dict[str, list[float]]] | None = None,
) -> None:
    """Validation top-1 per class, and with ``pseudo`` the last epoch's pseudo-labels per class and network
    (mask rate, precision, recall in %, :func:`~cmpl_ray.train.loop.pseudo_label_per_class`): which classes
    a network labels confidently, and how often rightly."""
    acc_p, acc_a = per_class_accuracy(counts), per_class_accuracy(counts, "aux_") if has_aux else None
    pseudo = pseudo or {}
    cols = [(net, q) for net in sorted(pseudo) for q in ("mask_rate", "precision", "recall")]
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(
            ["class_id", "class_name", "videos", "primary_top1"]
            + (["aux_top1"] if has_aux else [])
            + [f"pl_{q}_{net}" for net, q in cols]
        )
        for i, name in enumerate(names):
            row = [i, name, int(counts["total"][i]), f"{acc_p[i]:.4f}"] + ([f"{acc_a[i]:.4f}"] if has_aux else [])
            w.writerow(row + [f"{pseudo[net][q][i]:.2f}" for net, q in cols])


def _restore_state(cfg: Config, inputs: WorkerInputs) -> tuple[dict[str, Any] | None, bool]:
    """(checkpoint state or None, whether it is this run's own checkpoint). Ray's restore (a restarted worker
    group or a re-run of the same command) comes first; else ``run.resume``, which the driver read and put in
    the object store (``resume_state``), so every rank gets it on any node whatever the path was relative to."""
    resume = ray.train.get_checkpoint()
    state = None
    if resume is not None:
        with resume.as_directory() as d:
            state = ckpt.load_checkpoint(d)
    elif inputs.resume_state is not None:
        state = ray.get(inputs.resume_state)
    elif cfg.run.resume:  # a caller that did not go through the driver (kept for the Ray-free tools)
        state = ckpt.load_checkpoint(cfg.run.resume)
    if state is not None and inputs.identity is not None:  # the driver checked too: this is the last guard
        check_checkpoint(state, inputs.identity, "restored checkpoint" if resume is not None else cfg.run.resume)
    return state, resume is not None


def _broadcast_from_rank0(nets: list[torch.nn.Module | None]) -> None:
    """Make every rank's evaluation weights rank 0's: the ones its checkpoint saves. DDP keeps parameters equal
    but each rank's BatchNorm running statistics (and their EMA) end an epoch on its own last batch. Called by
    every rank, unconditionally, so the collectives always match."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return
    on = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else None
    with torch.no_grad():
        for net in nets:
            if net is None:
                continue
            for t in list(ckpt.unwrap(net).state_dict().values()):
                if on is None or t.device == on:
                    dist.broadcast(t, src=0)
                else:
                    buf = t.to(on)
                    dist.broadcast(buf, src=0)
                    t.copy_(buf.to(t.device))


def _name_bad_files(new_bad: list[tuple[str, int, int]], lists: dict[str, list[str]]) -> None:
    """One warning per file that failed for the first time (rank 0)."""
    for src, idx, code in new_bad:
        lst = lists["labeled" if src == "l" else "unlabeled"]
        say(f"[cmpl-ray] WARNING skipped {lst[idx] if 0 <= idx < len(lst) else idx}: {ERR_CODES.get(code, code)}")


def _worker_group_start(counter: Any, rank: int) -> tuple[str, int]:
    """(driver session, attempt) of this worker-group start: rank 0 asks the counter once, the others get its
    answer, so a group of N workers counts one start, not N."""
    answer = [("", 1)]
    if counter is not None and rank == 0:
        answer = [ray.get(counter.start.remote())]
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.broadcast_object_list(answer, src=0)
    return answer[0]


def _rank0_tracker(cfg: Config, inputs: WorkerInputs, rank: int) -> Tracker | None:
    """Rank 0's MLflow logger, through the driver's relay actor when there is one. Metrics are sent once per
    epoch, before its checkpoint; after a restart the redone steps are logged again and the Tracker drops every
    (metric, step) the run already has, buffered ones too."""
    if rank != 0 or not cfg.tracking.enabled:
        return None
    relay = RelayClient(inputs.mlflow_relay) if inputs.mlflow_relay is not None else None
    buffer = os.path.join(inputs.output_dir, "mlflow_buffer.jsonl")
    return Tracker(inputs.tracking_uri, inputs.run_id, buffer, flush_every=10**9, client=relay)


def _step_logger(cfg: Config, tracker: Tracker | None, rank: int, start_step: int, steps: int):
    """``log_fn`` of the epoch loop: train/* to MLflow, and a progress event (bar or line) for the driver."""
    total_steps, t_run = steps * cfg.train.epochs, time.perf_counter()

    def log_step(step: int, stats: dict[str, float]) -> None:
        if tracker is not None:
            tracker.log_metrics({f"train/{k}": v for k, v in stats.items()}, step)
        if rank == 0:
            eta = (time.perf_counter() - t_run) / max(1, step - start_step) * (total_steps - step)
            ev = step_event(step, total_steps, steps, cfg.train.epochs, stats, eta)
            if not _push(ev):
                say(format_step(ev))

    return log_step


def _log_epoch(tracker: Tracker | None, metrics: dict[str, float], global_step: int) -> None:
    """The epoch's metrics to MLflow; the train_* epoch means stay in the report (Tune) and metrics.json (MLflow
    has them per step as train/*)."""
    if tracker is None:
        return
    hidden = (CHECKPOINT_SCORE, "evaluated")
    tracker.log_metrics(
        {k: v for k, v in metrics.items() if not k.startswith("train_") and k not in hidden}, global_step
    )
    tracker.flush()


def _say_eval(out: EpochOutcome, skipped_total: int) -> None:
    m = out.metrics
    say(
        f"[cmpl-ray] epoch {int(m['epoch'])}: val top1 {m['val_top1']:.2f} top5 {m.get('val_top5', 0):.2f} "
        f"mean-class {m.get('val_mean_class_acc', 0):.2f}"
        + (f" | aux top1 {m['aux_val_top1']:.2f}" if "aux_val_top1" in m else "")
        + f" | skipped {skipped_total}"
    )


def _report(cfg: Config, rank: int, epoch: int, nets: Nets, out: EpochOutcome, extra: dict[str, Any]) -> None:
    """``ray.train.report`` of the epoch, with rank 0's checkpoint (networks, optimizer, EMA, counters)."""
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = None
        if rank == 0:
            ckpt.save_checkpoint(
                tmp, primary=nets.primary, aux=nets.aux, optimizer=nets.optimizer, scaler=nets.scaler, epoch=epoch,
                global_step=out.global_step, config=cfg.to_dict(), metrics=out.metrics, extra=extra, ema=nets.ema,
            )  # fmt: skip
            checkpoint = ray.train.Checkpoint.from_directory(tmp)
            if out.evaluated:
                _say_eval(out, extra["skipped_total"])
        ray.train.report(out.metrics, checkpoint=checkpoint)


RAY_COLLECTIVES = Collectives(reduce_counts=_all_reduce_counts, gather=_gather, sync_eval_weights=_broadcast_from_rank0)


def _record_train_nodes(clock: Any, tracker: Tracker | None) -> None:
    """Which nodes this worker group trains on: to the clock actor (the driver tags every attempt's nodes at the
    end) and, by rank 0, as an MLflow tag now, for a run that never reaches its end (an ASHA-stopped trial)."""
    here = node_label()
    if clock is not None:
        clock.placed.remote("train", here)
    nodes = _gather(here)  # every rank: a collective
    if tracker is not None:
        tracker.set_tags({"cmpl.train_nodes": " ".join(dict.fromkeys(nodes))})


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Ray Train entry point; ``config["inputs"]``: the driver's :class:`~.inputs.WorkerInputs`.

    Its Ray touchpoints: the context (rank, world), ``prepare_model`` (DDP), the dataset shards, the restored
    checkpoint, and one ``ray.train.report`` per epoch; the epoch itself is :func:`~.runner.run_epoch`."""
    inputs: WorkerInputs = config["inputs"]
    cfg: Config = from_dict(inputs.cfg)
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    _board[0] = inputs.progress_board if rank == 0 else None
    if not cfg.train.use_gpu:
        torch.set_num_threads(cfg.train.threads_per_worker or max(1, int(cfg.train.cpus_per_worker)))
    torch.manual_seed(cfg.train.seed)
    np.random.seed(cfg.train.seed + rank)
    device = ray.train.torch.get_device()
    num_classes, steps = inputs.num_classes, inputs.steps

    session, attempt = _worker_group_start(inputs.attempts, rank)
    state, own_checkpoint = _restore_state(cfg, inputs)
    extra = state.get("extra", {}) if state is not None else None
    restarts = attempts.restarts(session, attempt, extra, own_checkpoint)
    counters = RunCounters.from_extra(extra)
    nets = build_nets(cfg, num_classes, device, state, wrap=ray.train.torch.prepare_model)
    start_epoch, global_step = (state["epoch"] + 1, state["global_step"]) if state is not None else (0, 0)
    if rank == 0 and state is not None:
        say(f"[cmpl-ray] resumed at epoch {start_epoch} (step {global_step})")
    elif rank == 0 and restarts:
        say(f"[cmpl-ray] restarted from the beginning (restart {restarts}: no checkpoint yet)")

    tracker = _rank0_tracker(cfg, inputs, rank)
    log_step = _step_logger(cfg, tracker, rank, start_epoch * steps, steps)
    shard = ray.train.get_dataset_shard("train")  # epochs x steps x B_l rows per rank, read once
    clock = inputs.epoch_clock  # the epoch the decoders' stream starts at (cmpl_ray.data.epochs)
    _record_train_nodes(clock, tracker)
    ledger = RowLedger(start_epoch, cfg.train.epochs, steps * cfg.train.batch_labeled * world)
    stream = _run_batches(shard, cfg.train.batch_labeled, start_epoch, steps, world, clock, rank, ledger)
    val_batches = _val_source(cfg, inputs, num_classes, nets.aux is not None, rank, world)
    coll = dataclasses.replace(RAY_COLLECTIVES, world=world)
    out = None
    for epoch in range(start_epoch, cfg.train.epochs):
        out = run_epoch(
            nets, itertools.islice(stream, steps), cfg, counters, epoch=epoch, steps=steps, global_step=global_step,
            total_steps=steps * cfg.train.epochs, device=device, val_batches=val_batches, num_classes=num_classes,
            coll=coll, log_fn=log_step, extra_metrics={"restarts": restarts},
        )  # fmt: skip
        global_step = out.global_step
        if rank == 0:
            _name_bad_files(out.new_bad, inputs.lists)
        _log_epoch(tracker, out.metrics, global_step)
        run_record = {"class_names": inputs.class_names, "restarts": restarts, "session": session,
                      "attempt": attempt, "identity": inputs.identity}  # fmt: skip
        _report(cfg, rank, epoch, nets, out, {**counters.to_extra(), **run_record})

    if start_epoch >= cfg.train.epochs and counters.history:
        # resumed after the last epoch's checkpoint (e.g. an interrupted sweep re-entering a finished trial):
        # report the final metrics again so Tune records the trial as complete, not stopped at its last report
        ray.train.report(dict(counters.history[-1]))
    split = split_check(coll.gather(ledger.packed()))  # every rank: a collective
    if rank == 0 and (split["twice"] or split["missing"] or split["outside"]):
        say(f"[cmpl-ray] WARNING the data split over {world} rank(s) was wrong: {split}")
    if rank == 0:
        totals = dict(
            skipped_samples=counters.skipped_total, looped_samples=counters.looped_total, restarts=restarts,
            good_samples=counters.good_total, bad_files=counters.bad_files, world_size=world, data_split=split,
        )  # fmt: skip
        counts, pseudo = (out.counts, out.pseudo) if out is not None else (None, None)
        _write_results(cfg, inputs, counters.history, totals, counts, pseudo, nets.aux is not None, tracker)


def _write_results(
    cfg: Config,
    inputs: WorkerInputs,
    history: list[dict[str, float]],
    totals: dict[str, Any],
    counts: dict[str, torch.Tensor] | None,
    pseudo: dict[str, dict[str, list[float]]] | None,
    has_aux: bool,
    tracker: Tracker | None,
) -> None:
    """Rank 0's result files, written to a local scratch folder and copied to the run's folder on shared
    storage (:mod:`cmpl_ray.train.results`), where the driver reads them on any node; then MLflow artifacts."""
    names, num_classes = inputs.class_names, inputs.num_classes
    with tempfile.TemporaryDirectory(prefix="cmpl-result-") as out:
        final = {k: history[-1][k] for k in history[-1]} if history else {}
        final.update(
            epochs=cfg.train.epochs, mlflow_run_id=inputs.run_id, num_classes=num_classes, history=history, **totals
        )
        if pseudo:
            final["pseudo_labels_per_class"] = {n: dict(q, classes=names) for n, q in pseudo.items()}
        artifacts = [write_metrics_json(os.path.join(out, "metrics.json"), final)]
        save_config(cfg, os.path.join(out, "config.yaml"))
        artifacts.append(os.path.join(out, "config.yaml"))
        try:
            artifacts.append(plot_pseudo_label_ratio(history, os.path.join(out, "pseudo_label_ratio.png")))
        except Exception as e:  # a plot must never fail a finished run
            log.warning("pseudo-label plot failed: %r", e)
        if counts is not None:
            _write_per_class(os.path.join(out, "per_class.csv"), names, counts, has_aux, pseudo)
            artifacts.append(os.path.join(out, "per_class.csv"))
            if has_aux:
                try:
                    artifacts.append(
                        plot_class_gap(
                            per_class_accuracy(counts),
                            per_class_accuracy(counts, "aux_"),
                            names,
                            os.path.join(out, "class_gap.png"),
                        )
                    )
                except Exception as e:
                    log.warning("class-gap plot failed: %r", e)
        if inputs.run_folder:
            results.upload(out, inputs.run_folder)
        if tracker is not None:
            for a in artifacts:
                tracker.log_artifact(a)
            tracker.close()
