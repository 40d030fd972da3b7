"""What the driver hands every Ray Train worker (``train_loop_config={"inputs": WorkerInputs(...)}``): typed, so
a missing or misspelled field fails where the driver builds it, not in a worker on another node."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class WorkerInputs:
    cfg: dict[str, Any]
    """The resolved config (``Config.to_dict()``; data sizes derived from the videos already filled in)."""
    num_classes: int
    class_names: list[str]
    steps: int
    """Steps per epoch of each rank."""
    output_dir: str
    """Where the run's local files go (``mlflow_buffer.jsonl``)."""
    identity: dict[str, Any]
    """The run identity (:mod:`cmpl_ray.train.identity`): every restored checkpoint is checked against it."""
    run_folder: str
    """``<storage>/<run.name>``: rank 0 uploads the result files here, where the driver reads them on any node."""
    lists: dict[str, list[str]]
    """Labeled and unlabeled video paths by row index, to name a file that failed to decode."""
    val_decode: str
    """``worker`` (each rank decodes its share of ``val_items``) or ``ray_data`` (the "val" dataset shard)."""
    val_items: list[tuple[str, int]] | None = None
    run_id: str | None = None
    """The MLflow run rank 0 logs into; None when tracking is off."""
    tracking_uri: str = ""
    mlflow_relay: Any = None
    """Actor on the head node that reaches the MLflow store (:mod:`cmpl_ray.tracking.relay`)."""
    epoch_clock: Any = None
    """Actor telling the decoders which epoch the training stream starts at (:mod:`cmpl_ray.data.epochs`)."""
    attempts: Any = None
    """Actor counting worker-group starts, so restarts are exact (:mod:`cmpl_ray.train.attempts`)."""
    progress_board: Any = None
    """Actor rank 0 pushes progress lines to (:mod:`cmpl_ray.train.console`); None: rank 0 prints them."""
    resume_state: Any = None
    """``run.resume``'s checkpoint state, read by the driver and put in the object store (an ObjectRef)."""
