"""Tracking against a REAL sqlite MLflow store and a REAL dead HTTP port (no mocks).

Creating a fresh sqlite store runs MLflow's migrations (~9 s on 2 cores), so all tests share
one module-scoped database and use distinct experiment names.
"""

from __future__ import annotations

import json
import math
import os
import socket
import time
import warnings

import pytest

from cmpl_ray.tracking import tracker as tracking
from cmpl_ray.tracking.runs import find_run, start_run
from cmpl_ray.tracking.tracker import (
    Tracker,
    TrackingWarning,
    replay_buffer,
    resolve_tracking_uri,
    ui_command,
    write_metrics_json,
)
from cmpl_ray.train import plots


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    d = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{d}/mlflow.db"
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    client.search_experiments()  # create tables once
    return uri, client, d


@pytest.fixture
def dead_http_uri():
    """A loopback port nobody listens on (bound then released: connect gets RST)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return f"http://127.0.0.1:{port}"


def _ours(records):
    return [w for w in records if issubclass(w.category, TrackingWarning)]


def test_resolve_tracking_uri(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert resolve_tracking_uri("") == f"sqlite:///{tmp_path}/mlflow.db"
    assert resolve_tracking_uri("sqlite:///rel/x.db") == f"sqlite:///{tmp_path}/rel/x.db"
    assert resolve_tracking_uri("sqlite:////abs/x.db") == "sqlite:////abs/x.db"
    for u in ("http://h:5000", "https://h", "file:///tmp/mlruns", "databricks"):
        assert resolve_tracking_uri(u) == u
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://env:5000")
    assert resolve_tracking_uri("") == "http://env:5000"
    assert ui_command("http://env:5000") == "cmpl-ray ui"  # the default store (here $MLFLOW_TRACKING_URI)
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    assert ui_command("http://env:5000") == "cmpl-ray ui --store http://env:5000"
    assert ui_command("sqlite:///rel.db", sweep="s1") == f"cmpl-ray ui --store sqlite:///{tmp_path}/rel.db --sweep s1"
    assert ui_command("sqlite:///mlflow.db") == "cmpl-ray ui"  # the default store needs no flag


def test_start_run_params_tags_and_find_run(store):
    uri, client, d = store
    params = {f"p{i:03d}": i for i in range(150)}  # > 100: needs two batches
    params.update({"model.list": [1, 2, 3], "long": "x" * 7000})
    tags = {"cfg_hash": "abc", "k": "v'q", "both": "a'\"b"}  # quotes: filter grammar edge
    rid = start_run(uri, "exp-params", "run-a", params, tags=tags)
    assert rid
    run = client.get_run(rid)
    p = run.data.params
    assert len(p) == 152 and p["p149"] == "149" and p["model.list"] == "[1, 2, 3]"
    assert len(p["long"]) == 6000
    assert run.data.tags["mlflow.runName"] == "run-a"
    assert run.info.artifact_uri.startswith(("file://" + str(d), str(d)))  # next to the db

    child = start_run(uri, "exp-params", "child", {}, parent_run_id=rid)
    assert client.get_run(child).data.tags["mlflow.parentRunId"] == rid

    time.sleep(0.01)
    rid2 = start_run(uri, "exp-params", "run-b", {}, tags=tags)
    assert find_run(uri, "exp-params", {"cfg_hash": "abc", "k": "v'q"}) == rid2  # newest
    assert find_run(uri, "exp-params", {"both": "a'\"b", "cfg_hash": "abc"}) == rid2
    assert find_run(uri, "exp-params", {"k": "v'q"}) == rid2
    assert find_run(uri, "exp-params", {"cfg_hash": "zzz"}) is None
    assert find_run(uri, "no-such-experiment", {"cfg_hash": "abc"}) is None


def test_tracker_logs_metrics_tags_artifacts(store, tmp_path):
    uri, client, _ = store
    rid = start_run(uri, "exp-metrics", "r", {"lr": 0.1})
    buf = tmp_path / "buf.jsonl"
    art = tmp_path / "note.txt"
    art.write_text("hello")
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        tr = Tracker(uri, rid, str(buf), flush_every=3)
        for step in range(10):
            tr.log_metrics({"loss": 1.0 / (step + 1), "acc": step / 10, "bad": math.nan}, step)
        tr.set_tags({"status_note": "ok"})
        assert tr.log_artifact(str(art))
        tr.close()
    assert not _ours(w)
    assert tr.dropped == 10
    hist = client.get_metric_history(rid, "loss")
    assert sorted(m.step for m in hist) == list(range(10))
    assert {m.step: m.value for m in hist}[3] == pytest.approx(0.25)
    assert len(client.get_metric_history(rid, "acc")) == 10
    assert client.get_metric_history(rid, "bad") == []
    run = client.get_run(rid)
    assert run.info.status == "FINISHED" and run.data.tags["status_note"] == "ok"
    assert [f.path for f in client.list_artifacts(rid)] == ["note.txt"]
    assert not buf.exists()


def test_dead_http_store_warns_once_buffers_and_replays(store, tmp_path, dead_http_uri):
    uri, client, _ = store
    buf = tmp_path / "dead" / "buf.jsonl"
    t0 = time.monotonic()
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        assert start_run(dead_http_uri, "e", "r", {"a": 1}) is None
        assert len(_ours(w)) == 1 and dead_http_uri in str(_ours(w)[0].message)
        w.clear()
        # run id from a driver that could reach the store; this worker cannot
        tr = Tracker(dead_http_uri, "0" * 32, str(buf), flush_every=4)
        for step in range(25):
            tr.log_metrics({"loss": float(step), "acc": step / 100}, step)
        tr.set_tags({"a": "b"})
        assert tr.log_artifact(__file__) is False
        tr.close()
        ours = _ours(w)
    elapsed = time.monotonic() - t0
    assert len(ours) == 1, [str(x.message) for x in ours]
    assert dead_http_uri in str(ours[0].message)
    assert elapsed < 15, elapsed
    lines = [json.loads(x) for x in buf.read_text().splitlines()]
    assert len(lines) == 50
    assert set(lines[0]) == {"key", "value", "step", "timestamp"}
    assert sorted((r["key"], r["step"]) for r in lines) == sorted((k, s) for k in ("loss", "acc") for s in range(25))

    # Later: the store is reachable again -> replay into a real run.
    rid = start_run(uri, "exp-replay", "r", {})
    assert replay_buffer(uri, rid, str(buf)) == 50
    assert not buf.exists()
    assert len(client.get_metric_history(rid, "loss")) == 25
    assert len(client.get_metric_history(rid, "acc")) == 25


def test_tracker_without_run_id_only_buffers_then_flush_resends(store, tmp_path):
    uri, client, _ = store
    buf = tmp_path / "b.jsonl"
    tr = Tracker(uri, None, str(buf), flush_every=2)
    for step in range(4):
        tr.log_metrics({"m": step}, step)
    tr.close()
    assert len(buf.read_text().splitlines()) == 4
    # A new Tracker for a real run re-sends the old buffer first, then its own metrics.
    buf.write_text(buf.read_text() + '{"key": "m", "val')  # torn last line is skipped
    rid = start_run(uri, "exp-resend", "r", {})
    tr2 = Tracker(uri, rid, str(buf), flush_every=1)
    tr2.log_metrics({"m": 9.0}, 9)
    tr2.close()
    assert sorted(m.step for m in client.get_metric_history(rid, "m")) == [0, 1, 2, 3, 9]
    assert not buf.exists()


def test_fast_http_env_defaults_respect_user_values(monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "77")
    monkeypatch.delenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", raising=False)
    tracking._fast_http_defaults()
    assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "77"
    assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "1"


def test_write_metrics_json_roundtrip(tmp_path):
    p = tmp_path / "sub" / "metrics.json"
    data = {"top1": 0.5, "per_class": [0.1, 0.9], "name": "cmpl"}
    assert write_metrics_json(str(p), data) == str(p)
    assert json.loads(p.read_text()) == data
    write_metrics_json(str(p), {"top1": 0.6})
    assert json.loads(p.read_text()) == {"top1": 0.6}
    assert [x.name for x in p.parent.iterdir()] == ["metrics.json"]  # no tmp left behind


def _png(path):
    with open(path, "rb") as f:
        head = f.read(8)
    return head == b"\x89PNG\r\n\x1a\n" and os.path.getsize(path) > 1000


def test_plots_write_png(tmp_path):
    hist = [
        {"epoch": e, "pl_correct_ratio_f": 0.1 * e, "pl_correct_ratio_a": 0.08 * e, "mask_rate_f": 0.15 * e}
        for e in range(6)
    ]
    hist.append({"epoch": 6, "top1": 0.3})  # entry without PL keys is skipped
    assert _png(plots.plot_pseudo_label_ratio(hist, str(tmp_path / "fig2.png")))
    assert _png(plots.plot_pseudo_label_ratio([], str(tmp_path / "empty.png")))
    names = [f"class_{i}" for i in range(10)]
    accp = [i / 10 for i in range(10)]
    acca = [1 - i / 10 for i in range(10)]
    assert _png(plots.plot_class_gap(accp, acca, names, str(tmp_path / "fig1.png")))
    many = [f"c{i}" for i in range(400)]
    assert _png(plots.plot_class_gap([0.5] * 400, [0.4] * 400, many, str(tmp_path / "g.png")))
    with pytest.raises(ValueError):
        plots.plot_class_gap([0.1], [0.2, 0.3], ["a"], str(tmp_path / "bad.png"))
    table = {"supervised": [0.2, 0.22], "fixmatch": [0.25, 0.27, 0.26], "cmpl": [0.31]}
    assert _png(plots.plot_comparison(table, str(tmp_path / "cmp.png"), "UCF-101 1%"))


# --- De-duplication of steps across restarts and outages ------------------------------------------------------
# The Train worker's rank 0 creates a new Tracker on every attempt (Ray restarts from the last checkpoint, or from
# scratch when there is none, and re-runs the epochs after it) and logs every step it runs; the Tracker alone must
# keep each (metric, step) in MLflow once. An "attempt" below = a Tracker on the same run and the same buffer file.


class _Switchable:
    """Two REAL clients: one for the store, one for a closed port while ``down`` (an outage with MLflow's own
    connection errors; nothing is faked)."""

    def __init__(self, uri, dead_uri):
        self.up, self.dead, self.down = tracking.mlflow_client(uri), tracking.mlflow_client(dead_uri), False

    def __getattr__(self, name):
        return getattr(self.dead if self.down else self.up, name)


def _steps(client, rid, key):
    return sorted(m.step for m in client.get_metric_history(rid, key))


def _epoch(tr, epoch, steps_per_epoch=4, offset=0.0, evaluate=True):
    """What the worker logs for one epoch: train/* per step, then the epoch metrics at its last step, one flush."""
    first = epoch * steps_per_epoch + 1
    for s in range(first, first + steps_per_epoch):
        tr.log_metrics({"train/loss": offset + s}, s)
    last = first + steps_per_epoch - 1
    tr.log_metrics({"global_step": last, "epoch": epoch + 1, **({"val_top1": offset + last} if evaluate else {})}, last)
    tr.flush()


def test_restart_before_first_checkpoint_logs_each_step_once(store, tmp_path):
    """Gap (a): epoch 1 flushed, crash before its checkpoint: the next attempt starts from scratch and logs
    epoch 1 again; the run must keep epoch 1's steps once (the first values), then go on."""
    uri, client, _ = store
    rid = start_run(uri, "exp-dedup-a", "r", {})
    buf = str(tmp_path / "buf.jsonl")
    _epoch(Tracker(uri, rid, buf, flush_every=10**9), 0)  # attempt 1: flushed, then killed (no close)
    tr = Tracker(uri, rid, buf, flush_every=10**9)  # attempt 2: no checkpoint -> epoch 0 again
    _epoch(tr, 0, offset=100.0)
    _epoch(tr, 1, offset=100.0, evaluate=False)
    _epoch(tr, 2, offset=100.0)
    tr.close()
    assert _steps(client, rid, "train/loss") == list(range(1, 13))
    assert _steps(client, rid, "global_step") == [4, 8, 12]
    assert _steps(client, rid, "val_top1") == [4, 12]  # per key: val_top1's last step (4) < 12 is still sent
    assert {m.step: m.value for m in client.get_metric_history(rid, "train/loss")}[2] == 2.0  # first values kept
    assert client.get_run(rid).info.status == "FINISHED" and not os.path.exists(buf)


def test_buffer_from_before_restart_is_not_replayed_over_relogged_steps(store, tmp_path, dead_http_uri):
    """Gap (b): the store is down during attempt 1 (epoch 1 buffered), attempt 2 runs epoch 1 again with the
    store back: the old buffer and the live steps must not both land."""
    uri, client, _ = store
    rid = start_run(uri, "exp-dedup-b1", "r", {})
    buf = str(tmp_path / "buf.jsonl")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TrackingWarning)
        _epoch(Tracker(dead_http_uri, rid, buf, flush_every=10**9), 0)
    assert len(open(buf).read().splitlines()) == 7
    tr = Tracker(uri, rid, buf, flush_every=10**9)
    _epoch(tr, 0, offset=100.0)
    _epoch(tr, 1, offset=100.0)
    tr.close()
    assert _steps(client, rid, "train/loss") == list(range(1, 9))
    assert _steps(client, rid, "global_step") == [4, 8]
    assert _steps(client, rid, "val_top1") == [4, 8]
    assert not os.path.exists(buf)


def _epoch_in_outage(tr, sw, k):
    """Epoch ``k`` logged while the store is down (buffered, its warning expected)."""
    sw.down = True
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TrackingWarning)
        _epoch(tr, k)


def test_redone_epoch_logged_live_while_old_buffer_is_replayed(store, tmp_path, dead_http_uri):
    """Gap (b): epoch 1 reaches the store, epoch 2 is buffered (outage), crash before epoch 2's checkpoint; the
    next attempt resumes from epoch 1's checkpoint with the store back and redoes epoch 2 live while the old
    buffer (epoch 2 too) is replayed in the same flush."""
    uri, client, _ = store
    rid = start_run(uri, "exp-dedup-b2", "r", {})
    buf = str(tmp_path / "buf.jsonl")
    sw = _Switchable(uri, dead_http_uri)
    tr = Tracker(uri, rid, buf, flush_every=10**9, retry_interval_s=0, client=sw)
    _epoch(tr, 0)
    _epoch_in_outage(tr, sw, 1)  # buffered; then killed before the checkpoint
    assert len(open(buf).read().splitlines()) == 7
    tr2 = Tracker(uri, rid, buf, flush_every=10**9)  # resumed from epoch 1's checkpoint: epoch 2 again
    _epoch(tr2, 1, offset=100.0)
    _epoch(tr2, 2, offset=100.0)
    tr2.close()
    assert _steps(client, rid, "train/loss") == list(range(1, 13))
    assert _steps(client, rid, "global_step") == [4, 8, 12]
    assert not os.path.exists(buf)


def test_outage_ending_inside_one_attempt_sends_each_step_once(store, tmp_path, dead_http_uri):
    """The store goes down and comes back while one Tracker runs: the buffer is sent once, nothing twice."""
    uri, client, _ = store
    rid = start_run(uri, "exp-dedup-outage", "r", {})
    buf = str(tmp_path / "buf.jsonl")
    sw = _Switchable(uri, dead_http_uri)
    tr = Tracker(uri, rid, buf, flush_every=10**9, retry_interval_s=0, client=sw)
    _epoch(tr, 0)
    _epoch_in_outage(tr, sw, 1)
    sw.down = False
    _epoch(tr, 2)
    tr.close()
    assert _steps(client, rid, "train/loss") == list(range(1, 13))
    assert _steps(client, rid, "global_step") == [4, 8, 12]
    assert not os.path.exists(buf)


def test_store_down_at_restart_buffer_holding_steps_twice_replays_once(store, tmp_path, dead_http_uri):
    """Gap (b), store down across the restart: the buffer ends up holding epoch 1 twice (both attempts);
    replaying it must send each (metric, step) once."""
    uri, client, _ = store
    buf = str(tmp_path / "buf.jsonl")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TrackingWarning)
        _epoch(Tracker(dead_http_uri, "0" * 32, buf, flush_every=10**9), 0)
        tr = Tracker(dead_http_uri, "0" * 32, buf, flush_every=10**9)
        _epoch(tr, 0, offset=100.0)
        _epoch(tr, 1, offset=100.0)
        tr.close()
    assert len(open(buf).read().splitlines()) == 21
    rid = start_run(uri, "exp-dedup-b3", "r", {})
    assert replay_buffer(uri, rid, buf) == 14
    assert _steps(client, rid, "train/loss") == list(range(1, 9))
    assert _steps(client, rid, "val_top1") == [4, 8]
    assert not os.path.exists(buf)


def test_replay_buffer_skips_steps_the_run_already_has(store, tmp_path):
    """Gap (b): a buffer whose first steps the run already has (sent live by a later attempt, or sent just
    before a crash removed the file): only the newer steps are sent."""
    uri, client, _ = store
    rid = start_run(uri, "exp-dedup-b4", "r", {})
    tr = Tracker(uri, rid, str(tmp_path / "live.jsonl"), flush_every=10**9)
    _epoch(tr, 0)
    tr.close()
    buf = tmp_path / "buf.jsonl"
    buf.write_text(
        "".join(
            json.dumps({"key": "train/loss", "value": 50.0 + s, "step": s, "timestamp": 1}) + "\n" for s in range(3, 7)
        )
    )
    assert replay_buffer(uri, rid, str(buf)) == 2
    assert _steps(client, rid, "train/loss") == [1, 2, 3, 4, 5, 6]
    assert not buf.exists()
    assert replay_buffer(uri, rid, str(buf)) == 0  # nothing left: a second call is a no-op
