"""Run identity: which config a run was trained with, so that a changed config never resumes, reports or
logs into another run.

Why: Ray Train V2 restores a run by ``name`` + ``storage_path`` alone. Without an identity, re-running
``cmpl-ray train`` with only ``algo.name`` changed restores the finished supervised run and reports its numbers
as FixMatch's, or dies half-way in the checkpoint loader, and the MLflow run found by the same two tags
collects all three.

The identity of a run is its resolved config (after ``resolve_data``: the derived crop and short sides are in
it) minus the keys that may change between attempts without changing what is trained (:data:`VOLATILE_PREFIXES`,
:data:`VOLATILE_KEYS`), plus a digest of the three list files' contents (a re-split under the same path is a
different run). Its fingerprint (sha256, 16 hex) is written to ``<storage>/<run.name>/cmpl-run.json`` before any
training, into every checkpoint and as the MLflow tag ``cmpl.fingerprint``. That file also holds a random
``uid`` per attempt (the MLflow run is found by it, so ``--fresh`` starts a new MLflow run) and, once the last
epoch is done, the final metrics (an identical re-run prints them instead of training).

``train.epochs`` is part of the identity: the LR schedule (cosine over all steps) and the step count per
round (``train.passes``) depend on it, so "extending" a run would not give the run the new config describes.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import uuid
from collections.abc import Iterable
from typing import Any

from ..files import read_text_or_none, write_text

FILE = "cmpl-run.json"
VOLATILE_PREFIXES = ("run.", "tracking.")
VOLATILE_KEYS = frozenset(
    {
        "train.log_every",
        "train.cpus_per_worker",
        "train.worker_resource",
        "train.threads_per_worker",
        "train.max_bad_steps",
        "train.aux_stream",
        "data.decode_actors",
        "data.cpus_per_decoder",
        "data.decode_resource",
        "data.decode_timeout_s",
        "data.val_decode",
    }
)
"""Changing these changes where results go or how fast they come, not what is trained (a run may move to a
bigger machine or get more decoders and still resume: a clip depends on its row's key, not on its decoder,
see cmpl_ray/data/epochs.py). ``data.decode_batch`` is not among them: it sets the block size that
``streaming_split`` deals to the ranks, so with several workers it changes which rows each rank trains on."""


class RunMismatch(RuntimeError):
    """The stored run was trained with another config; the CLI prints this and exits with code 2."""


def lists_digest(*lists: Iterable[Any]) -> str:
    """sha256 (16 hex) over the (path, label) items of the labeled, unlabeled and val lists, in order."""
    h = hashlib.sha256()
    for i, items in enumerate(lists):
        h.update(f"#list{i}\n".encode())
        for it in items:
            h.update(f"{it.path}\t{it.label}\n".encode())
    return h.hexdigest()[:16]


def identity(flat_cfg: dict[str, Any], digest: str | None = None) -> dict[str, Any]:
    """The keys that define what a run trains (``Config.flat()`` minus :data:`VOLATILE_*`), JSON-normalised."""
    out = {k: v for k, v in flat_cfg.items() if not k.startswith(VOLATILE_PREFIXES) and k not in VOLATILE_KEYS}
    if digest is not None:
        out["data.lists_digest"] = digest
    return json.loads(json.dumps(out, sort_keys=True, default=str))  # tuples -> lists, as a file round-trip gives


def fingerprint(ident: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()[:16]


def diff(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """``["algo.name: supervised -> fixmatch", ...]`` for every key whose value differs (or is missing)."""
    keys = sorted(set(old) | set(new))
    return [f"{k}: {old.get(k, '<unset>')} -> {new.get(k, '<unset>')}" for k in keys if old.get(k) != new.get(k)]


def run_dir(store: str, name: str) -> str:
    return f"{store.rstrip('/')}/{name}" if "://" in store else os.path.join(store, name)


def _has_checkpoints(d: str) -> bool:
    if "://" in d:
        import pyarrow.fs as pafs

        fs, p = pafs.FileSystem.from_uri(d)
        try:
            infos = fs.get_file_info(pafs.FileSelector(p, allow_not_found=True))
        except OSError:
            return False
        return any(os.path.basename(i.path).startswith("checkpoint_") for i in infos)
    return os.path.isdir(d) and any(n.startswith("checkpoint_") for n in os.listdir(d))


def _way_out(name: str) -> str:
    return (
        f"either give this run its own name (--set run.name={name}-2) or start it over with --fresh "
        f"(the old run's folder is kept, renamed)"
    )


def check(store: str, name: str, ident: dict[str, Any]) -> dict[str, Any] | None:
    """The stored record of run ``name`` when it was trained with ``ident`` (resume it, or report it if
    complete); None when no run of that name exists yet. Raises :class:`RunMismatch` listing the differing
    keys when one exists with another config, or with checkpoints but no record (made by an older cmpl-ray)."""
    d = run_dir(store, name)
    text = read_text_or_none(f"{d}/{FILE}")
    if text is None:
        if _has_checkpoints(d):
            raise RunMismatch(
                f"run {name!r} in {store} has checkpoints but no {FILE} (an older cmpl-ray made it), so "
                f"its config cannot be checked against this one; {_way_out(name)}"
            )
        return None
    rec = json.loads(text)
    if rec.get("fingerprint") != fingerprint(ident):
        changes = diff(rec.get("identity", {}), ident)
        raise RunMismatch(
            f"run {name!r} in {store} was trained with another config ({len(changes)} key(s) differ: "
            + "; ".join(changes[:12])
            + (" ..." if len(changes) > 12 else "")
            + f"); refusing to resume or report it as this config's run; {_way_out(name)}"
        )
    return rec


def begin(store: str, name: str, ident: dict[str, Any], record: dict[str, Any] | None) -> dict[str, Any]:
    """Write (or keep) the run's record before training; returns it (``uid`` identifies the MLflow run)."""
    rec = record or {
        "fingerprint": fingerprint(ident),
        "identity": ident,
        "uid": uuid.uuid4().hex[:12],
        "created": time.strftime("%Y-%m-%d %H:%M:%S"),
        "status": "running",
    }
    if record is None:
        write_text(f"{run_dir(store, name)}/{FILE}", json.dumps(rec, indent=1, sort_keys=True))
    return rec


def complete(store: str, name: str, rec: dict[str, Any], metrics: dict[str, Any]) -> None:
    """Mark the run complete with its final metrics (an identical re-run prints them instead of training)."""
    rec = {
        **rec,
        "status": "complete",
        "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
        "metrics": json.loads(json.dumps(metrics, default=str)),
    }
    write_text(f"{run_dir(store, name)}/{FILE}", json.dumps(rec, indent=1, sort_keys=True))


def move_aside(store: str, name: str) -> str | None:
    """``--fresh``: rename ``<store>/<name>`` to ``<name>.old-<time>`` (nothing is deleted); returns the new path."""
    d = run_dir(store, name)
    new = f"{d}.old-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:4]}"  # two --fresh in a second: distinct
    if "://" in d:
        import pyarrow.fs as pafs

        fs, p = pafs.FileSystem.from_uri(d)
        if fs.get_file_info(p).type == pafs.FileType.NotFound:
            return None
        fs.move(p, pafs.FileSystem.from_uri(new)[1])
        return new
    if not os.path.exists(d):
        return None
    os.replace(d, new)
    return new


def check_checkpoint(state: dict[str, Any], ident: dict[str, Any], where: str) -> None:
    """Refuse a checkpoint (``--resume``, or the one Ray Train restores) trained with another config."""
    old = (state.get("extra") or {}).get("identity")
    if old is None:  # written before identities existed: compare what its config says
        cfg = state.get("config") or {}
        old = identity(
            {f"{s}.{k}": v for s, sec in cfg.items() if isinstance(sec, dict) for k, v in sec.items()},
            ident.get("data.lists_digest"),
        )
    if fingerprint(old) != fingerprint(ident):
        changes = diff(old, ident)
        raise RunMismatch(
            f"{where}: the checkpoint was trained with another config ({len(changes)} key(s) differ: "
            + "; ".join(changes[:12])
            + "); refusing to resume it under this config"
        )
