"""Creating, finding and presenting a training run in MLflow: experiment kind, dataset inputs, a link to it.

The driver creates the run (:func:`start_run`) or finds the one to resume (:func:`find_run`: a re-run of the
same command, matched on the run-identity tags); the rank-0 worker then logs into it with ``tracking.Tracker``.

Experiment kind. MLflow 3.17's UI opens an experiment on its GenAI pages ("Overview", "Traces") unless the
browser is in its "Model training" mode. Measured on 3.17.2 (its JS bundle and headless Chromium): the mode is a
per-browser toggle at the top left ("GenAI | Model training", kept in localStorage ``mlflow.workflowType_v1``,
default GenAI) that a ``?workflowType=machine_learning`` URL parameter overrides; the experiment tag
``mlflow.experimentKind`` is read only by UIs without that toggle (older 3.x, Databricks). No server option or
tag changes the 3.17 default, so we do both: tag every experiment we create as ``custom_model_development`` and
print links that carry ``workflowType=machine_learning`` (:func:`run_url`), which open the runs table.

Dataset inputs. The three list files are what a run was trained and validated on; each is logged as an MLflow
dataset whose digest is the file's SHA-256 (first 32 hex digits: MLflow's digest column holds 36 characters;
the full hash is in the profile), so two runs on the same lists show the same digest and an edited list a new one.
The runs table's "Dataset" column shows them with their context (``training`` / ``validation``).
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any

from ..files import read_bytes
from . import tracker as tracking

EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
MODEL_TRAINING = "custom_model_development"
DIGEST_CHARS = 32  # MLflow's datasets.digest column is VARCHAR(36)
UI_PARAM = "workflowType=machine_learning"
ROLES = (
    ("labeled_list", "labeled", "training"),
    ("unlabeled_list", "unlabeled", "training"),
    ("val_list", "val", "validation"),
)


def mark_model_training(client: Any, experiment_id: str, tags: dict[str, str] | None = None) -> None:
    """Tag the experiment as a model-training one unless it already has a kind (a user's choice wins)."""
    if EXPERIMENT_KIND_TAG not in (tags or {}):
        client.set_experiment_tag(experiment_id, EXPERIMENT_KIND_TAG, MODEL_TRAINING)


def list_dataset(path: str, role: str):
    """An MLflow ``Dataset`` for one list file: name = file name, digest = its SHA-256 prefix, profile = counts."""
    from mlflow.entities import Dataset
    from mlflow.types import ColSpec, Schema

    from ..data.lists import parse_list

    data = read_bytes(path)
    sha = hashlib.sha256(data).hexdigest()
    items = parse_list(data.decode("utf-8-sig"), path)
    local = "://" not in path
    source = os.path.abspath(path) if local else path
    schema = Schema([ColSpec("string", "path"), ColSpec("long", "label")])
    profile = {"videos": len(items), "classes": len({it.label for it in items}), "role": role, "sha256": sha}
    return Dataset(
        name=os.path.basename(path),
        digest=sha[:DIGEST_CHARS],
        source_type="local" if local else path.split("://", 1)[0],
        source=json.dumps({"uri": source}),
        schema=json.dumps({"mlflow_colspec": schema.to_dict()}),
        profile=json.dumps(profile),
    )


def list_inputs(data_cfg: Any) -> list:
    """``DatasetInput`` per configured list file (labeled, unlabeled, val), tagged with its context. One file in
    two roles is one input (MLflow keeps one input per dataset and run) tagged with both, e.g. ``labeled+val``."""
    from mlflow.entities import DatasetInput, InputTag
    from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

    roles: dict[str, list[tuple[str, str]]] = {}
    for key, role, context in ROLES:
        path = getattr(data_cfg, key, "")
        if path:
            roles.setdefault(path, []).append((role, context))
    out = []
    for path, rc in roles.items():
        role = "+".join(r for r, _ in rc)
        context = "+".join(dict.fromkeys(c for _, c in rc))
        out.append(
            DatasetInput(
                list_dataset(path, role), tags=[InputTag(MLFLOW_DATASET_CONTEXT, context), InputTag("cmpl.list", role)]
            )
        )
    return out


def log_list_inputs(uri: str, run_id: str | None, cfg: Any) -> bool:
    """Log the run's list files as dataset inputs; False after ONE warning (tracking never stops training)."""
    if not run_id:
        return False
    try:
        tracking.mlflow_client(tracking.resolve_tracking_uri(uri)).log_inputs(run_id, datasets=list_inputs(cfg.data))
        return True
    except Exception as e:  # noqa: BLE001
        tracking._warn(f"could not log the list files as MLflow dataset inputs of run {run_id}: {e!r}")
        return False


def ui_base(uri: str, port: int = 5000) -> str:
    """Where the UI of ``uri`` is served: the server itself, or the ``mlflow ui`` of :func:`tracking.ui_command`."""
    uri = tracking.resolve_tracking_uri(uri)
    return uri.rstrip("/") if uri.startswith(("http://", "https://")) else f"http://127.0.0.1:{port}"


def run_url(uri: str, experiment_id: str, run_id: str | None = None, port: int = 5000) -> str:
    """Link to the experiment's runs table (or one run) in the UI's model-training mode (see module docstring)."""
    page = f"runs/{run_id}" if run_id else "runs"
    return f"{ui_base(uri, port)}/#/experiments/{experiment_id}/{page}?{UI_PARAM}"


# Creating and finding runs (the driver's side; the worker logs into the run through tracking.Tracker).


def start_run(
    uri: str, experiment: str, run_name: str, params: dict, tags: dict | None = None, parent_run_id: str | None = None
) -> str | None:
    """Create (experiment and) run, log ``params`` in batches; run id, or None after ONE warning.

    For sqlite stores the experiment's artifacts go next to the database (``<db dir>/mlruns``)
    instead of MLflow's cwd-relative default, so the db and its artifacts travel together.
    The experiment is tagged as a model-training one (:func:`mark_model_training`).
    """
    from mlflow.entities import Param

    uri = tracking.resolve_tracking_uri(uri)
    try:
        client = tracking.mlflow_client(uri)
        exp = client.get_experiment_by_name(experiment)
        if exp is None:
            db = uri[len("sqlite:///") :] if uri.startswith("sqlite:///") else ""
            art = os.path.join(os.path.dirname(db), "mlruns") if db.startswith("/") else None
            exp_id = client.create_experiment(experiment, artifact_location=art)
        else:
            exp_id = exp.experiment_id
        mark_model_training(client, exp_id, exp.tags if exp is not None else None)
        all_tags = {k: tracking._stringify(v, tracking.MAX_TAG_VAL_LENGTH) for k, v in (tags or {}).items()}
        all_tags["mlflow.runName"] = run_name
        if parent_run_id:
            all_tags["mlflow.parentRunId"] = parent_run_id
        run = client.create_run(exp_id, run_name=run_name, tags=all_tags)
        run_id = run.info.run_id
        items = [Param(str(k), tracking._stringify(v, tracking.MAX_PARAM_VAL_LENGTH)) for k, v in params.items()]
        for i in range(0, len(items), tracking.MAX_PARAMS_PER_BATCH):
            client.log_batch(run_id, params=items[i : i + tracking.MAX_PARAMS_PER_BATCH])
        return run_id
    except Exception as e:  # noqa: BLE001 - any store failure must not stop training
        tracking._warn(f"MLflow at {uri} unreachable, run not created (training continues): {e!r}")
        return None


def tag_run(uri: str, run_id: str, tags: dict[str, Any]) -> None:
    """Set tags on an existing run (the driver's own facts, e.g. which nodes trained); warns, never raises."""
    uri = tracking.resolve_tracking_uri(uri)
    try:
        client = tracking.mlflow_client(uri)
        for k, v in tags.items():
            client.set_tag(run_id, k, tracking._stringify(v, tracking.MAX_TAG_VAL_LENGTH))
    except Exception as e:  # noqa: BLE001 - tracking trouble never fails a finished run
        tracking._warn(f"MLflow at {uri} unreachable, tags {sorted(tags)} not set: {e!r}")


def _tag_filter(tags: dict) -> tuple[str, bool]:
    """MLflow's filter grammar has no escape: a value goes in '...' or "..."; one holding both
    quote kinds cannot be expressed and is checked client-side (returned flag)."""
    parts, exact = [], True
    for k, v in tags.items():
        v = str(v)
        if "'" not in v:
            parts.append(f"tags.`{k}` = '{v}'")
        elif '"' not in v:
            parts.append(f'tags.`{k}` = "{v}"')
        else:
            exact = False
    return " and ".join(parts), exact


def find_run(uri: str, experiment: str, tags: dict) -> str | None:
    """Newest active run in ``experiment`` whose tags all match ``tags`` (to resume the same
    MLflow run when a user re-runs the same command); None if none or unreachable."""
    uri = tracking.resolve_tracking_uri(uri)
    want = {str(k): str(v) for k, v in tags.items()}
    try:
        client = tracking.mlflow_client(uri)
        exp = client.get_experiment_by_name(experiment)
        if exp is None:
            return None
        flt, exact = _tag_filter(want)
        runs = client.search_runs(
            [exp.experiment_id],
            filter_string=flt,
            order_by=["attributes.start_time DESC"],
            max_results=1 if exact else 1000,
        )
        for r in runs:  # newest first
            if all(r.data.tags.get(k) == v for k, v in want.items()):
                return r.info.run_id
        return None
    except Exception as e:  # noqa: BLE001
        tracking._warn(f"MLflow at {uri} unreachable, cannot look up run: {e!r}")
        return None
