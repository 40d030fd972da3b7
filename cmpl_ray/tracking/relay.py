"""MLflow relay: rank 0 logs through a small Ray actor on the head node instead of dialling the store itself.

Why: on a cluster the MLflow server listens on the head's 127.0.0.1 (nothing exposed), and ``sqlite:///`` stores
live on the head's disk; the rank-0 Train worker runs on a GPU node where neither is reachable. The relay is
pinned to the head node (``node:__internal_head__``) and holds the only ``MlflowClient``; the worker-side
:class:`RelayClient` has the small part of the ``MlflowClient`` API the :class:`~.tracking.Tracker` uses, and
ships artifact files as bytes. Any failure surfaces as an exception in the worker, so the Tracker's
warn-once-and-buffer policy is unchanged. On one machine the relay simply runs there.
"""

from __future__ import annotations

import os
import tempfile
from typing import Any

HEAD_RESOURCE = "node:__internal_head__"


class MlflowRelay:
    """Actor body: a real ``MlflowClient`` for ``uri`` on the head node."""

    def __init__(self, uri: str):
        from .tracker import mlflow_client

        self.uri = uri
        self.client = mlflow_client(uri)

    def log_batch(self, run_id: str, metrics=(), params=(), tags=()) -> None:
        self.client.log_batch(run_id, metrics=list(metrics), params=list(params), tags=list(tags))

    def set_terminated(self, run_id: str, status: str = "FINISHED") -> None:
        self.client.set_terminated(run_id, status=status)

    def log_files(self, run_id: str, files: list[tuple[str, bytes]], artifact_path: str | None) -> None:
        """``files``: (relative path, content); written to a temp tree and logged under ``artifact_path``."""
        with tempfile.TemporaryDirectory() as tmp:
            for rel, data in files:
                p = os.path.join(tmp, rel)
                os.makedirs(os.path.dirname(p), exist_ok=True)
                with open(p, "wb") as f:
                    f.write(data)
            self.client.log_artifacts(run_id, tmp, artifact_path)

    def max_steps(self, run_id: str) -> dict[str, int]:
        from .tracker import store_max_steps

        return store_max_steps(self.client, run_id)


class RelayClient:
    """Worker-side stand-in for ``MlflowClient`` that forwards to an :class:`MlflowRelay` actor."""

    def __init__(self, handle: Any, timeout_s: float = 60.0):
        self.handle, self.timeout_s = handle, timeout_s

    def _call(self, method: str, *args, **kwargs):
        import ray

        return ray.get(getattr(self.handle, method).remote(*args, **kwargs), timeout=self.timeout_s)

    def log_batch(self, run_id: str, metrics=(), params=(), tags=()) -> None:
        self._call("log_batch", run_id, list(metrics or ()), list(params or ()), list(tags or ()))

    def set_terminated(self, run_id: str, status: str = "FINISHED") -> None:
        self._call("set_terminated", run_id, status)

    def log_artifact(self, run_id: str, local_path: str, artifact_path: str | None = None) -> None:
        with open(local_path, "rb") as f:
            self._call("log_files", run_id, [(os.path.basename(local_path), f.read())], artifact_path)

    def log_artifacts(self, run_id: str, local_dir: str, artifact_path: str | None = None) -> None:
        files = []
        for root, _, names in os.walk(local_dir):
            for n in names:
                p = os.path.join(root, n)
                with open(p, "rb") as f:
                    files.append((os.path.relpath(p, local_dir), f.read()))
        self._call("log_files", run_id, files, artifact_path)

    def max_steps(self, run_id: str) -> dict[str, int]:
        """Highest step per metric key of ``run_id`` (:func:`~.tracking.store_max_steps` on the head node)."""
        return dict(self._call("max_steps", run_id))


def start_relay(uri: str):
    """The relay actor on the head node (0 CPUs), or None when Ray cannot place it (then workers log directly)."""
    import ray

    try:
        return ray.remote(num_cpus=0)(MlflowRelay).options(resources={HEAD_RESOURCE: 0.001}).remote(uri)
    except Exception:  # noqa: BLE001 - tracking must never stop training
        return None
