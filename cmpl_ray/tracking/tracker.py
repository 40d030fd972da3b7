"""MLflow tracking that can never kill training.

The ``cmpl-ray train`` driver creates ONE MLflow run (:func:`.mlflow_run.start_run`) before launching Ray
Train; the rank-0 worker, possibly on another machine and possibly restarted after a failure,
logs metrics into that run id through a :class:`Tracker`. We talk to ``MlflowClient`` directly
(never the fluent ``mlflow.start_run`` global state) so several runs can coexist in one process
(driver + Tune trials + tests).

Failure policy: an unreachable store costs ONE warning (:class:`TrackingWarning`, naming the URI
and the error) and every metric that could not be sent is appended to a local JSONL buffer
(``{"key","value","step","timestamp"}`` per line). Later flushes re-send the buffer first, and
:func:`replay_buffer` sends a leftover buffer to a run afterwards, so nothing is silently lost.

Each (metric, step) reaches the run once, whatever restarts and outages happen (the ONE place that rule lives):
steps only grow per metric key, so the store's highest step per key (:func:`store_max_steps`, one ``get_run``)
says what the run already has. A Tracker asks for it before its first send and again after every failure
(what landed during an outage is unknown), and every send -- live metrics, the buffer, :func:`replay_buffer` --
drops records at or below it, and repeats of a (key, step) within what it sends (the first one wins). So a
restarted rank 0 simply logs every step it runs: the steps a previous attempt already logged, or buffered, are
not sent twice. Caveat: a step below the highest one is dropped even if the store lacks it (a gap, e.g. a buffer
left on another node), never duplicated.

HTTP stores must fail fast: MLflow's defaults (7 retries, exponential backoff, 120 s timeout)
block a training step for minutes. :func:`_fast_http_defaults` sets ``MLFLOW_HTTP_REQUEST_*``
with ``os.environ.setdefault`` (a user's explicit value wins); mlflow 3.17 reads them on every
request, measured: a closed loopback port fails in well under a second.
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
import time
import warnings
from typing import Any

log = logging.getLogger(__name__)

# Per-request limits (mlflow.utils.validation in 3.17).
MAX_PARAMS_PER_BATCH = 100
MAX_METRICS_PER_BATCH = 1000
MAX_PARAM_VAL_LENGTH = 6000
MAX_TAG_VAL_LENGTH = 8000

#: Defaults for fast failure; 1 retry still absorbs a single transient 5xx / reset.
FAST_HTTP_ENV = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",  # int in mlflow 3.17
    "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "0.5",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "5",  # connect+read; a black-holed host costs ~2x this
}


class TrackingWarning(UserWarning):
    """Raised (as a warning, once per Tracker / call) when the MLflow store is unreachable."""


def _fast_http_defaults() -> None:
    for k, v in FAST_HTTP_ENV.items():
        os.environ.setdefault(k, v)


def mlflow_client(uri: str):
    _fast_http_defaults()  # mlflow reads these per request, so setting them here suffices
    from mlflow import MlflowClient  # lazy: importing mlflow costs ~4 s

    return MlflowClient(tracking_uri=uri)


def _as_float(v: Any) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


def _warn(msg: str) -> None:
    warnings.warn(msg, TrackingWarning, stacklevel=3)


def resolve_tracking_uri(uri: str = "") -> str:
    """Make ``uri`` valid from any cwd: workers run elsewhere, so a relative sqlite path would
    silently create a second, empty database there."""
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI", "")
    if not uri:
        return "sqlite:///" + os.path.abspath("mlflow.db")
    if uri.startswith("sqlite:///"):
        path = uri[len("sqlite:///") :]
        if path and not path.startswith("/") and path != ":memory:":
            return "sqlite:///" + os.path.abspath(path)
    return uri


def ui_command(uri: str, sweep: str | None = None) -> str:
    """What a user runs to browse ``uri``: ``cmpl-ray ui`` (loopback server, runs table with the top-1 columns)."""
    uri = resolve_tracking_uri(uri)
    default = resolve_tracking_uri("")
    cmd = "cmpl-ray ui" + ("" if uri == default else f" --store {uri}")
    return cmd + (f" --sweep {sweep}" if sweep else "")


def _stringify(v: Any, limit: int) -> str:
    s = json.dumps(list(v), default=str) if isinstance(v, (list, tuple)) else str(v)
    return s[:limit]


def _append_jsonl(path: str, records: list[dict]) -> None:
    if not records:
        return
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "a+b") as f:  # appends always go to the end, whatever the read position
        torn = False
        if f.seek(0, os.SEEK_END) > 0:  # a torn last line (crash mid-write) must not swallow the first new record
            f.seek(-1, os.SEEK_END)
            torn = f.read(1) != b"\n"
        f.write((("\n" if torn else "") + "".join(json.dumps(r) + "\n" for r in records)).encode("utf-8"))
        f.flush()
        os.fsync(f.fileno())


def _read_jsonl(path: str) -> list[dict]:
    """Records of the buffer; a torn last line (crash mid-write) is skipped, not fatal."""
    if not os.path.exists(path):
        return []
    out = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                r = json.loads(line)
                out.append(
                    {
                        "key": str(r["key"]),
                        "value": float(r["value"]),
                        "step": int(r["step"]),
                        "timestamp": int(r["timestamp"]),
                    }
                )
            except (ValueError, KeyError, TypeError):
                log.warning("skipping malformed metric line in %s: %r", path, line[:200])
    return out


def store_max_steps(client, run_id: str) -> dict[str, int]:
    """Highest step per metric key that ``run_id`` has in the store (keys without metrics are absent).

    One ``get_run``: the store keeps each key's latest metric by (step, timestamp, value), so its step is the
    key's highest. ``client``: an ``MlflowClient``, or anything with ``max_steps(run_id)`` (a
    :class:`~.relay.RelayClient`, which answers with this function on the head node). Errors raise."""
    if hasattr(client, "max_steps"):
        return {str(k): int(v) for k, v in client.max_steps(run_id).items()}
    data = client.get_run(run_id).data
    objs = getattr(data, "_metric_objs", None)  # RunData keeps the Metric objects (with step) only here
    if objs is None:  # a future MLflow without it: the full histories (slower, same answer)
        return {k: max((m.step for m in client.get_metric_history(run_id, k)), default=-1) for k in data.metrics}
    return {str(m.key): int(m.step) for m in objs}


def _unsent(records: list[dict], known: dict[str, int]) -> list[dict]:
    """``records`` minus those the store has (``step <= known[key]``) and minus repeats of a (key, step)."""
    seen: set[tuple[str, int]] = set()
    out = []
    for r in records:
        ks = (r["key"], r["step"])
        if ks in seen or r["step"] <= known.get(r["key"], r["step"] - 1):
            continue
        seen.add(ks)
        out.append(r)
    return out


def _send(client, run_id: str, records: list[dict], known: dict[str, int] | None = None) -> int:
    """Send records in batches of 1000, raising ``known`` (highest step per key in the store) as each lands.
    On failure, raises with ``.sent`` = count already sent."""
    from mlflow.entities import Metric

    sent = 0
    try:
        for i in range(0, len(records), MAX_METRICS_PER_BATCH):
            chunk = records[i : i + MAX_METRICS_PER_BATCH]
            client.log_batch(run_id, metrics=[Metric(r["key"], r["value"], r["timestamp"], r["step"]) for r in chunk])
            sent += len(chunk)
            if known is not None:
                for r in chunk:
                    known[r["key"]] = max(known.get(r["key"], r["step"]), r["step"])
    except Exception as e:
        e.sent = sent  # type: ignore[attr-defined]
        raise
    return sent


def _replay(client, run_id: str, path: str, known: dict[str, int] | None = None) -> int:
    """Send the buffer file's records the store does not have yet (``known``: highest step per key in the store,
    asked when None; raised as batches land); on partial failure rewrite the file with only the unsent tail.
    Returns how many were sent."""
    records = _read_jsonl(path)
    if not records:
        if os.path.exists(path):
            os.remove(path)
        return 0
    if known is None:
        known = store_max_steps(client, run_id)
    records = _unsent(records, known)
    try:
        n = _send(client, run_id, records, known)
    except Exception as e:
        rest = records[getattr(e, "sent", 0) :]
        tmp = path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            f.writelines(json.dumps(r) + "\n" for r in rest)
        os.replace(tmp, path)
        raise
    os.remove(path)
    return n


def replay_buffer(uri: str, run_id: str, buffer_path: str) -> int:
    """Send a buffer file left by a Tracker to ``run_id``; returns how many metrics were sent. Records the run
    already has (step at or below the run's highest for that key) or that repeat a (key, step) are not sent.
    The file is removed once everything is sent (no duplicates on a second call); errors raise."""
    return _replay(mlflow_client(resolve_tracking_uri(uri)), run_id, buffer_path)


class Tracker:
    """Rank-0 metric logger for one existing run; every MLflow error is absorbed.

    Metrics are batched in memory and sent every ``flush_every`` calls (one request instead of
    one per step). After a failure we stop contacting MLflow for ``retry_interval_s`` so a dead
    server costs one timeout per interval, not one per flush; ``close`` always tries once more.

    Pending metrics go through the buffer file (appended, then sent from it), so a crash mid-send loses
    nothing; before sending, records the run already has are dropped (module docstring): a new Tracker on
    the same run (a restarted worker) may log steps again, they are sent once.
    """

    def __init__(
        self,
        uri: str,
        run_id: str | None,
        buffer_path: str,
        flush_every: int = 20,
        retry_interval_s: float = 60.0,
        client: Any = None,
    ):
        self.uri = resolve_tracking_uri(uri)
        self.run_id = run_id
        self.buffer_path = buffer_path
        self.flush_every = max(1, int(flush_every))
        self.retry_interval_s = retry_interval_s
        self.dropped = 0  # non-finite values skipped (MLflow stores inf as +-1.8e308: misleading)
        self.failed_artifacts: list[str] = []
        self._pending: list[dict] = []
        self._pending_tags: dict[str, str] = {}
        self._calls = 0
        self._warned = False
        self._down_until = 0.0
        self._client = client  # e.g. a relay.RelayClient: the store is reached from the head node
        self._nonfinite_keys: set[str] = set()
        self._known: dict[str, int] | None = None  # store's highest step per key; None: ask before sending

    def _get_client(self):
        self._client = self._client or mlflow_client(self.uri)
        return self._client

    def _online(self, force: bool = False) -> bool:
        return self.run_id is not None and (force or time.monotonic() >= self._down_until)

    def _failed(self, what: str, e: BaseException) -> None:
        self._down_until = time.monotonic() + self.retry_interval_s
        self._known = None  # what landed is unknown now: ask the store again once it answers
        if not self._warned:
            self._warned = True
            _warn(
                f"MLflow at {self.uri} unreachable ({what}: {e!r}); training continues, "
                f"metrics are buffered in {self.buffer_path}"
            )
        else:
            log.debug("MLflow still unreachable (%s): %r", what, e)

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        ts = int(time.time() * 1000)
        for k, v in metrics.items():
            v = _as_float(v)
            if not math.isfinite(v):
                self.dropped += 1
                if k not in self._nonfinite_keys:
                    self._nonfinite_keys.add(k)
                    log.warning("dropping non-finite value of metric %r at step %d", k, step)
                continue
            self._pending.append({"key": str(k), "value": v, "step": int(step), "timestamp": ts})
        self._calls += 1
        if self._calls % self.flush_every == 0:
            self.flush()

    def set_tags(self, tags: dict) -> None:
        self._pending_tags.update({str(k): _stringify(v, MAX_TAG_VAL_LENGTH) for k, v in tags.items()})
        self._flush_tags(force=False)

    def _flush_tags(self, force: bool) -> None:
        if not self._pending_tags or not self._online(force):
            return
        from mlflow.entities import RunTag

        try:
            items = [RunTag(k, v) for k, v in self._pending_tags.items()]
            for i in range(0, len(items), MAX_PARAMS_PER_BATCH):
                self._get_client().log_batch(self.run_id, tags=items[i : i + MAX_PARAMS_PER_BATCH])
            self._pending_tags.clear()
        except Exception as e:  # noqa: BLE001
            self._failed("set_tags", e)

    def flush(self, force: bool = False) -> None:
        """Append pending metrics to the buffer file, then send it (older records first) minus what the run
        already has; whatever is not sent stays in the file."""
        pending, self._pending = self._pending, []
        _append_jsonl(self.buffer_path, pending)
        if not self._online(force):
            return
        if os.path.exists(self.buffer_path):
            try:
                client = self._get_client()
                if self._known is None:  # first contact, or the first after a failure
                    self._known = store_max_steps(client, self.run_id)
                _replay(client, self.run_id, self.buffer_path, self._known)
            except Exception as e:  # noqa: BLE001
                self._failed("log_batch", e)
        self._flush_tags(force)

    def log_artifact(self, local_path: str, artifact_path: str | None = None) -> bool:
        """Upload a file/dir; False (path kept in ``failed_artifacts``) if MLflow is down."""
        if self._online(force=True):
            try:
                if os.path.isdir(local_path):
                    self._get_client().log_artifacts(self.run_id, local_path, artifact_path)
                else:
                    self._get_client().log_artifact(self.run_id, local_path, artifact_path)
                return True
            except Exception as e:  # noqa: BLE001
                self._failed("log_artifact", e)
        self.failed_artifacts.append(local_path)
        return False

    def close(self, status: str = "FINISHED") -> None:
        """Final flush (one attempt even during the back-off) and mark the run terminated."""
        self.flush(force=True)
        if self.run_id is None or self._pending_tags or os.path.exists(self.buffer_path):
            return  # store down: leave the run open, the buffer is the record
        try:
            self._get_client().set_terminated(self.run_id, status=status)
        except Exception as e:  # noqa: BLE001
            self._failed("set_terminated", e)

    def __enter__(self) -> Tracker:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close("FAILED" if exc_type else "FINISHED")


def write_metrics_json(path: str, metrics: dict) -> str:
    """Pretty JSON written atomically (tmp + rename): a crash never leaves a half file."""
    os.makedirs(d := os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=d, prefix=".metrics-", suffix=".json")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(metrics, f, indent=2, sort_keys=True, default=str)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return path
