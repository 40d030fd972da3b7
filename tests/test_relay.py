"""The MLflow relay: rank 0's metrics and artifacts go through an actor on the head node (real Ray, real sqlite)."""

import json

import pytest
import ray
from mlflow import MlflowClient

from cmpl_ray.tracking.relay import RelayClient, start_relay
from cmpl_ray.tracking.runs import start_run
from cmpl_ray.tracking.tracker import Tracker


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def test_tracker_through_relay_logs_metrics_artifacts_and_steps(local_ray, tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    run_id = start_run(uri, "relay", "r1", {"a": 1})
    handle = start_relay(uri)
    assert handle is not None
    client = RelayClient(handle)
    (tmp_path / "m.json").write_text(json.dumps({"x": 1}))
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "p.csv").write_text("a,b\n1,2\n")

    @ray.remote(num_cpus=0)
    def rank0(client, run_id, buf, files):  # runs in a worker process, like the Train worker
        t = Tracker(uri, run_id, buf, flush_every=2, client=client)
        for step in range(1, 5):
            t.log_metrics({"loss": 1.0 / step, "global_step": step}, step)
        ok = t.log_artifact(files[0]) and t.log_artifact(files[1], "tables")
        t.close()
        return ok, client.max_steps(run_id)["global_step"]

    ok, last = ray.get(
        rank0.remote(client, run_id, str(tmp_path / "buf.jsonl"), [str(tmp_path / "m.json"), str(tmp_path / "d")])
    )
    assert ok and last == 4
    c = MlflowClient(uri)
    assert [m.step for m in c.get_metric_history(run_id, "loss")] == [1, 2, 3, 4]
    names = {a.path for a in c.list_artifacts(run_id)} | {a.path for a in c.list_artifacts(run_id, "tables")}
    assert {"m.json", "tables/p.csv"} <= names
    assert c.get_run(run_id).info.status == "FINISHED"
    assert not (tmp_path / "buf.jsonl").exists()  # nothing had to be buffered


def test_relay_to_dead_store_is_buffered_not_lost(local_ray, tmp_path):
    handle = start_relay("http://127.0.0.1:9")  # nothing listens on port 9
    t = Tracker(
        "http://127.0.0.1:9",
        "fake-run",
        str(tmp_path / "buf.jsonl"),
        flush_every=1,
        client=RelayClient(handle, timeout_s=60),
    )
    with pytest.warns(UserWarning, match="unreachable"):
        t.log_metrics({"loss": 0.5}, 1)
    lines = (tmp_path / "buf.jsonl").read_text().splitlines()
    assert json.loads(lines[0])["key"] == "loss"


def test_restarted_rank0_through_relay_logs_each_step_once(local_ray, tmp_path):
    """A rank 0 killed after a flush and restarted without a checkpoint logs its first steps again: the
    Tracker asks the store (through the relay: ``max_steps``) what the run has and sends each step once."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    run_id = start_run(uri, "relay", "r2", {})
    client = RelayClient(start_relay(uri))
    buf = str(tmp_path / "buf.jsonl")

    @ray.remote(num_cpus=0)
    def attempt(client, last, finish):
        t = Tracker(uri, run_id, buf, flush_every=10**9, client=client)
        for step in range(1, last + 1):
            t.log_metrics({"loss": 10.0 * finish + step}, step)
        t.log_metrics({"global_step": last}, last)
        t.flush()
        if finish:
            t.close()

    ray.get(attempt.remote(client, 3, False))  # killed after its flush: no close
    ray.get(attempt.remote(client, 6, True))
    c = MlflowClient(uri)
    assert sorted(m.step for m in c.get_metric_history(run_id, "loss")) == [1, 2, 3, 4, 5, 6]
    assert [m.value for m in sorted(c.get_metric_history(run_id, "loss"), key=lambda m: m.step)][:3] == [1, 2, 3]
    assert sorted(m.step for m in c.get_metric_history(run_id, "global_step")) == [3, 6]
    assert not (tmp_path / "buf.jsonl").exists()
    assert client.max_steps(run_id) == {"loss": 6, "global_step": 6}
