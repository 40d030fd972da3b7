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

from cmpl_ray.train import plots, tracking
from cmpl_ray.train.mlflow_run import find_run, start_run
from cmpl_ray.train.tracking import (Tracker, TrackingWarning, replay_buffer, resolve_tracking_uri, ui_command,
                                     write_metrics_json)


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
    assert ui_command("http://env:5000") == "open http://env:5000"
    cmd = ui_command("sqlite:///rel.db")
    assert f"--backend-store-uri sqlite:///{tmp_path}/rel.db" in cmd and "127.0.0.1" in cmd


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
    assert sorted((r["key"], r["step"]) for r in lines) == sorted(
        (k, s) for k in ("loss", "acc") for s in range(25))

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
    hist = [{"epoch": e, "pl_correct_ratio_f": 0.1 * e, "pl_correct_ratio_a": 0.08 * e,
             "mask_rate_f": 0.15 * e} for e in range(6)]
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
