"""The one per-worker function that touches ``ray.train``: shards, DDP wrapping, reports, checkpoints.

Everything numeric happens in the Ray-free :mod:`cmpl_ray.train.loop`. Each worker holds BOTH networks, each
wrapped for DDP separately by ``prepare_model`` (one module per DDP wrapper, so no ``find_unused_parameters``),
and ONE optimizer over both parameter sets, which is Eq. 6's joint objective. Rank 0 alone logs to MLflow
and writes result files.
"""

from __future__ import annotations

import csv
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
from ..data.decode import DECODER_NAMES
from ..data.epochs import KEY_STRIDE
from ..data.pipeline import ERR_CODES
from . import attempts, results
from . import checkpoint as ckpt
from .build import build_networks, make_optimizer
from .console import format_step, step_event
from .ema import WeightEma
from .identity import check_checkpoint
from .loop import evaluate, per_class_accuracy, pseudo_label_per_class, summarize_eval, train_one_epoch
from .plots import plot_class_gap, plot_pseudo_label_ratio
from .relay import RelayClient
from .tracking import Tracker, write_metrics_json

log = logging.getLogger("cmpl_ray.train")

CHECKPOINT_SCORE = "checkpoint_score"  # what Ray ranks checkpoints by: val_top1 of an evaluated epoch
UNEVALUATED_SCORE = -1.0  # below any top-1: an epoch without evaluation is never the best checkpoint


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


def _run_batches(shard, batch_size: int, start_epoch: int, steps: int, world: int, clock: Any = None, rank: int = 0):
    """The whole run's batches from ONE iteration of the shard: the training loop takes ``steps`` of them per
    epoch (``itertools.islice``), so the decode actor pool and its prefetch carry over epoch boundaries
    instead of restarting every epoch (issue 18: the first batches of every epoch used to wait for a new pool).

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
        yield _flatten_unlabeled(batch)


def _val_source(cfg: Config, config: dict[str, Any], num_classes: int, with_aux: bool, rank: int, world: int):
    """A callable giving one evaluation's batches for this rank: decoded here in threads (``data.val_decode``
    worker: items[rank::world], nothing to start) or read from the "val" shard (ray_data: a new actor pool per
    evaluation). Both give every val video once over the ranks and the same clips."""
    if config.get("val_decode") != "worker":
        shard = ray.train.get_dataset_shard("val")  # this rank's equal share (padded, exact)
        return lambda: shard.iter_torch_batches(batch_size=2, prefetch_batches=2)
    from ..data.lists import VideoItem
    from ..data.pipeline import iter_val_batches

    items = [VideoItem(p, y) for p, y in config["val_items"]]
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


def _restore_state(cfg: Config, config: dict[str, Any]) -> tuple[dict[str, Any] | None, bool]:
    """(checkpoint state or None, whether it is this run's own checkpoint). Ray's restore (a restarted worker
    group or a re-run of the same command) comes first; else ``run.resume``, which the driver read and put in
    the object store (``resume_state``), so every rank gets it on any node whatever the path was relative to."""
    resume = ray.train.get_checkpoint()
    state = None
    if resume is not None:
        with resume.as_directory() as d:
            state = ckpt.load_checkpoint(d)
    elif config.get("resume_state") is not None:
        state = ray.get(config["resume_state"])
    elif cfg.run.resume:  # a caller that did not go through the driver (kept for the Ray-free tools)
        state = ckpt.load_checkpoint(cfg.run.resume)
    if state is not None and config.get("identity") is not None:  # the driver checked too: this is the last guard
        check_checkpoint(state, config["identity"], "restored checkpoint" if resume is not None else cfg.run.resume)
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


def _name_bad_files(epoch_bad, bad_files: dict[str, str], lists: dict[str, list[str]], rank: int) -> None:
    """Record each bad (stream, index, code) once in ``bad_files`` and name its file once on rank 0."""
    for src, idx, code in epoch_bad:
        key = f"{src}:{idx}"
        if key in bad_files:
            continue
        bad_files[key] = ERR_CODES.get(code, str(code))
        if rank == 0:
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


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Ray Train entry point. ``config``: cfg (dict), num_classes, class_names, steps, run_id, tracking_uri."""
    cfg: Config = from_dict(config["cfg"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    _board[0] = config.get("progress_board") if rank == 0 else None
    if not cfg.train.use_gpu:
        torch.set_num_threads(cfg.train.threads_per_worker or max(1, int(cfg.train.cpus_per_worker)))
    torch.manual_seed(cfg.train.seed)
    np.random.seed(cfg.train.seed + rank)
    device = ray.train.torch.get_device()
    num_classes, names, steps = config["num_classes"], config["class_names"], config["steps"]

    primary, aux = build_networks(cfg, num_classes)
    scaler = torch.amp.GradScaler("cuda") if cfg.train.amp == "fp16" and device.type == "cuda" else None

    session, attempt = _worker_group_start(config.get("attempts"), rank)
    start_epoch, global_step, history, best = 0, 0, [], -1.0
    skipped_total, looped_total, bad_files, good_total = 0, 0, {}, 0
    read_by: dict[str, set[str]] = {name: set() for name in DECODER_NAMES.values()}  # "l:3" keys, run-wide
    state, own_checkpoint = _restore_state(cfg, config)
    restarts = attempts.restarts(
        session, attempt, state.get("extra", {}) if state is not None else None, own_checkpoint
    )
    if state is not None:
        ckpt.restore(state, primary=primary, aux=aux, scaler=scaler)  # optimizer: after the move to device
        start_epoch, global_step = state["epoch"] + 1, state["global_step"]
        extra = state.get("extra", {})
        history, best = extra.get("history", []), extra.get("best", -1.0)
        skipped_total, looped_total = extra.get("skipped_total", 0), extra.get("looped_total", 0)
        good_total = extra.get("good_total", 0)
        bad_files = extra.get("bad_files", {})
        read_by.update({name: set(keys) for name, keys in extra.get("read_by", {}).items()})
        if rank == 0:
            say(f"[cmpl-ray] resumed at epoch {start_epoch} (step {global_step})")
    elif restarts and rank == 0:
        say(f"[cmpl-ray] restarted from the beginning (restart {restarts}: no checkpoint yet)")

    if cfg.train.channels_last and device.type == "cuda":  # before DDP wraps (and buckets) the parameters
        primary = primary.to(memory_format=torch.channels_last_3d)
        aux = aux.to(memory_format=torch.channels_last_3d) if aux is not None else None
    primary = ray.train.torch.prepare_model(primary)
    if aux is not None:
        aux = ray.train.torch.prepare_model(aux)
    # one optimizer over both networks (Eq. 6), built after the move so its state lives on the device
    optimizer = make_optimizer(cfg, primary, aux)
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
    # EMA of the (DDP-synchronised, hence identical on every rank) weights: what evaluation measures
    ema = WeightEma([primary, aux], cfg.train.ema_decay) if cfg.train.ema_decay > 0 else None
    if ema is not None and state is not None and state.get("ema"):
        ema.load_state_dict(state["ema"])

    tracker = None
    if rank == 0 and cfg.tracking.enabled:
        # sent once per epoch, before its checkpoint; after a restart (with or without a checkpoint) the redone
        # steps are logged again and the Tracker drops every (metric, step) the run already has, buffered ones too
        relay = RelayClient(config["mlflow_relay"]) if config.get("mlflow_relay") is not None else None
        tracker = Tracker(
            config["tracking_uri"],
            config.get("run_id"),
            os.path.join(config["output_dir"], "mlflow_buffer.jsonl"),
            flush_every=10**9,
            client=relay,
        )
    total_steps = steps * cfg.train.epochs
    t_run = time.perf_counter()

    def log_step(step: int, stats: dict[str, float]) -> None:
        if tracker is not None:
            tracker.log_metrics({f"train/{k}": v for k, v in stats.items()}, step)
        if rank == 0:
            done = step - start_epoch * steps
            eta = (time.perf_counter() - t_run) / max(1, done) * (total_steps - step)
            ev = step_event(step, total_steps, steps, cfg.train.epochs, stats, eta)
            if not _push(ev):
                say(format_step(ev))

    shard = ray.train.get_dataset_shard("train")  # epochs x steps x B_l rows per rank, read once
    clock = config.get("epoch_clock")  # the epoch the decoders' stream starts at (cmpl_ray.data.epochs)
    val_batches = _val_source(cfg, config, num_classes, aux is not None, rank, world)
    semi = cfg.algo.name != "supervised"
    metrics: dict[str, float] = {}
    counts = None
    pseudo: dict[str, dict[str, list[float]]] | None = None  # last epoch's pseudo-labels per class and network
    run_batches = _run_batches(shard, cfg.train.batch_labeled, start_epoch, steps, world, clock, rank)
    for epoch in range(start_epoch, cfg.train.epochs):
        batches = itertools.islice(run_batches, steps)  # this epoch's steps of the run-long stream
        res = train_one_epoch(
            primary,
            aux,
            optimizer,
            batches,
            cfg,
            epoch=epoch,
            steps=steps,
            global_step=global_step,
            total_steps=total_steps,
            device=device,
            scaler=scaler,
            log_fn=log_step,
            ema=ema,
        )
        global_step += res.steps + res.skipped_steps
        if res.pl_counts:  # this epoch's pseudo-labels per class, over every rank (per_class.csv, metrics.json)
            pseudo = {n: pseudo_label_per_class(c) for n, c in _all_reduce_counts(dict(res.pl_counts)).items()}
        # bad samples of every rank -> one warning per file on rank 0, exact counts
        gathered = _gather((res.bad_samples, res.looped_samples, res.steps, res.good_samples, res.read_by))
        for g in gathered:
            for code, keys in g[4].items():
                read_by[DECODER_NAMES[code]].update(f"{src}:{i}" for src, i in keys)
        good_total += sum(g[3] for g in gathered)
        epoch_bad = [b for g in gathered for b in g[0]]
        looped_total += sum(g[1] for g in gathered)
        skipped_total += len(epoch_bad)
        _name_bad_files(epoch_bad, bad_files, config["lists"], rank)
        if len(epoch_bad) >= steps * cfg.train.batch_labeled * world * (1 + (cfg.algo.unlabeled_ratio if semi else 0)):
            raise RuntimeError("every training video of this epoch failed to decode: check data.root and the lists")
        metrics = {f"train_{k}": v for k, v in res.means.items()}
        metrics.update(
            epoch=epoch + 1,
            global_step=global_step,
            skipped_samples=skipped_total,
            good_samples=good_total,
            looped_samples=looped_total,
            skipped_steps=res.skipped_steps,
            epoch_seconds=res.seconds,
            restarts=restarts,
            **{f"files_read_by_{n}": len(k) for n, k in read_by.items()},
        )
        evaluated = (epoch + 1) % cfg.train.eval_every == 0 or epoch + 1 == cfg.train.epochs
        if evaluated:
            eval_p, eval_a = (ema.nets[0], ema.nets[1]) if ema is not None else (primary, aux)
            _broadcast_from_rank0([eval_p, eval_a])
            counts = _all_reduce_counts(evaluate(eval_p, eval_a, val_batches(), num_classes, device))
            ev = summarize_eval(counts, aux is not None)
            best = max(best, ev["val_top1"])
            metrics.update(ev)
        # Ray ranks checkpoints by CHECKPOINT_SCORE: an epoch without evaluation can never be the best one
        metrics.update(
            val_top1_best=best,
            evaluated=float(evaluated),
            **{CHECKPOINT_SCORE: metrics["val_top1"] if evaluated else UNEVALUATED_SCORE},
        )
        history.append({k: float(v) for k, v in metrics.items()})
        if tracker is not None:
            # the train_* epoch means stay in the report (Tune) and metrics.json: MLflow has them per step as train/*
            tracker.log_metrics(
                {
                    k: v
                    for k, v in metrics.items()
                    if not k.startswith("train_") and k not in (CHECKPOINT_SCORE, "evaluated")
                },
                global_step,
            )
            tracker.flush()
        with tempfile.TemporaryDirectory() as tmp:
            checkpoint = None
            if rank == 0:
                extra = {
                    "history": history,
                    "best": best,
                    "skipped_total": skipped_total,
                    "good_total": good_total,
                    "looped_total": looped_total,
                    "bad_files": bad_files,
                    "class_names": names,
                    "restarts": restarts,
                    "session": session,
                    "attempt": attempt,
                    "identity": config.get("identity"),
                    "read_by": {n: sorted(k) for n, k in read_by.items()},
                }
                ckpt.save_checkpoint(
                    tmp,
                    primary=primary,
                    aux=aux,
                    optimizer=optimizer,
                    scaler=scaler,
                    epoch=epoch,
                    global_step=global_step,
                    config=cfg.to_dict(),
                    metrics=metrics,
                    extra=extra,
                    ema=ema,
                )
                checkpoint = ray.train.Checkpoint.from_directory(tmp)
                if evaluated:
                    say(
                        f"[cmpl-ray] epoch {epoch + 1}: val top1 {metrics['val_top1']:.2f} top5 "
                        f"{metrics.get('val_top5', 0):.2f} mean-class {metrics.get('val_mean_class_acc', 0):.2f}"
                        + (f" | aux top1 {metrics['aux_val_top1']:.2f}" if "aux_val_top1" in metrics else "")
                        + f" | skipped {skipped_total}"
                    )
            ray.train.report(metrics, checkpoint=checkpoint)

    if start_epoch >= cfg.train.epochs and history:
        # resumed after the last epoch's checkpoint (e.g. an interrupted sweep re-entering a finished trial):
        # report the final metrics again so Tune records the trial as complete, not stopped at its last report
        ray.train.report({k: v for k, v in history[-1].items()})
    if rank == 0:
        _write_results(
            cfg,
            config,
            history,
            dict(
                skipped_samples=skipped_total,
                looped_samples=looped_total,
                restarts=restarts,
                good_samples=good_total,
                bad_files=bad_files,
                world_size=world,
            ),
            counts,
            pseudo,
            aux is not None,
            tracker,
        )


def _write_results(
    cfg: Config,
    config: dict[str, Any],
    history: list[dict[str, float]],
    totals: dict[str, Any],
    counts: dict[str, torch.Tensor] | None,
    pseudo: dict[str, dict[str, list[float]]] | None,
    has_aux: bool,
    tracker: Tracker | None,
) -> None:
    """Rank 0's result files, written to a local scratch folder and copied to the run's folder on shared
    storage (:mod:`cmpl_ray.train.results`), where the driver reads them on any node; then MLflow artifacts."""
    names, num_classes = config["class_names"], config["num_classes"]
    with tempfile.TemporaryDirectory(prefix="cmpl-result-") as out:
        final = {k: history[-1][k] for k in history[-1]} if history else {}
        final.update(
            epochs=cfg.train.epochs,
            mlflow_run_id=config.get("run_id"),
            num_classes=num_classes,
            history=history,
            **totals,
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
        if config.get("run_folder"):
            results.upload(out, config["run_folder"])
        if tracker is not None:
            for a in artifacts:
                tracker.log_artifact(a)
            tracker.close()
