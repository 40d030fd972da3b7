"""Several Ray nodes on one machine, as Ray's own tests build them (``ray.cluster_utils.Cluster``: one raylet per
node): a head with 0 CPUs as in ``cluster.yaml``, trainer nodes (the custom resource ``trainer`` stands in for a
GPU) and a CPU-only decode node (``decode``). ``cmpl-ray train`` runs as a driver in a subprocess connected with
``RAY_ADDRESS``, as ``ray job submit`` runs it; the run folder, checkpoints and MLflow store are on one disk that
every node sees, as NFS would be.

The cluster is this module's own: ``Cluster.shutdown`` stops the raylets it started, nothing else.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
from mlflow import MlflowClient

from cmpl_ray.data.lists import read_list, split_labeled, write_list

pytestmark = pytest.mark.slow

EPOCHS = 4
STEPS = 30  # ~2 s epochs: the node is lost in epoch 3, well before the end


@pytest.fixture(scope="module")
def cluster():
    """The head (0 CPUs) and one decode node; each test adds and removes its trainer nodes."""
    from ray.cluster_utils import Cluster

    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    nodes = {"decode": c.add_node(num_cpus=1, resources={"decode": 1})}
    c.wait_for_nodes()
    yield c, nodes
    c.shutdown()


@pytest.fixture(scope="module")
def whole(cluster, synth_root, tmp_path_factory):
    """The uninterrupted run every lost-node run must equal: (metrics, console output, trainer node label)."""
    c, nodes = cluster
    trainer = c.add_node(num_cpus=1, resources={"trainer": 1})
    c.wait_for_nodes()
    tmp = tmp_path_factory.mktemp("whole")
    p, log = _start(_args(synth_root, tmp, "whole"), c.address, tmp / "whole.log")
    out = _finish(p, log, tmp / "whole.log")
    metrics, ray_log = _metrics(tmp, "whole"), (tmp / "out-whole" / "ray.log").read_text()
    p, log = _start(_args(synth_root, tmp, "whole"), c.address, tmp / "again.log")  # the same command again
    again = _finish(p, log, tmp / "again.log")
    c.remove_node(trainer)
    return metrics, out, _label(trainer), ray_log, again


def _label(node) -> str:
    return f"{node.node_ip_address}/{node.node_id[:8]}"


def _data_sets(root: str, tmp) -> dict:
    """The data, placement and tracking keys every run and trial here shares."""
    lab, unl = split_labeled(read_list(os.path.join(root, "train.txt")), per_class=2, seed=0)
    write_list(str(tmp / "lab.txt"), lab)
    write_list(str(tmp / "unl.txt"), unl)
    return {
        "data.root": root,
        "data.labeled_list": tmp / "lab.txt",
        "data.unlabeled_list": tmp / "unl.txt",
        "data.val_list": f"{root}/val.txt",
        "data.classes_file": f"{root}/classes.txt",
        "data.crop_size": 32,
        "data.train_short_side": "[32,40]",
        "data.test_short_side": 32,
        "data.eval_clips": 1,
        "data.decode_resource": "decode",
        "train.worker_resource": "trainer",
        "train.batch_labeled": 2,
        "optim.warmup_epochs": 0,
        "tracking.uri": f"sqlite:///{tmp}/mlflow.db",
    }


def _flags(sets: dict) -> list[str]:
    return [a for k, v in sets.items() for a in ("--set", f"{k}={v}")]


def _args(root: str, tmp, name: str, **over) -> list[str]:
    sets = {
        **_data_sets(root, tmp),
        "algo.name": "fixmatch",
        "algo.unlabeled_ratio": 2,
        "train.epochs": EPOCHS,
        "train.steps_per_epoch": STEPS,
        "train.eval_every": 1,
        "train.log_every": 1,
        "run.output_dir": f"{tmp}/out-{name}",
        "run.storage_path": f"{tmp}/shared",
        "run.name": name,
        **over,
    }
    return [sys.executable, "-m", "cmpl_ray", "train", "--preset", "demo", *_flags(sets)]


def _start(cmd, address: str, log_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(RAY_ADDRESS=address, PYTHONUNBUFFERED="1")
    log = open(log_path, "w")  # noqa: SIM115 - closed by the caller's wait
    return subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True), log


def _finish(p, log, log_path, timeout=900) -> str:
    try:
        p.wait(timeout=timeout)
    finally:
        log.close()
    out = open(log_path).read()
    assert p.returncode == 0, out[-4000:]
    return out


def _metrics(tmp, name: str) -> dict:
    return json.loads((tmp / f"out-{name}" / "metrics.json").read_text())


def _curve(m: dict) -> list[tuple]:
    return [(h["epoch"], h["global_step"], h["train_loss"], h.get("val_top1")) for h in m["history"]]


def _checkpointed(tmp, name: str, epoch: int) -> bool:
    """Ray Train has registered the checkpoint of ``epoch`` (its snapshot on storage lists it)."""
    snap = tmp / "shared" / name / "checkpoint_manager_snapshot.json"
    try:
        results = json.loads(snap.read_text())["checkpoint_results"]
    except (OSError, ValueError, KeyError):
        return False
    return any(r["metrics"].get("epoch") == epoch for r in results)


def test_uninterrupted_run_trains_and_decodes_where_it_is_told(cluster, whole):
    _, nodes = cluster
    m, out, trainer, ray_log, again = whole
    assert m["restarts"] == 0 and m["epochs"] == EPOCHS
    # the worker could only go to the trainer node, the decode actor only to the decode node
    assert m["train_nodes"] == [trainer] and m["decode_nodes"] == [_label(nodes["decode"])]
    assert f"trained on {trainer}; decoded on {_label(nodes['decode'])}" in out
    # a head without a dashboard serves no State API: Ray Train's cleaner that polls it is dropped, not looping
    assert "Failed to query" not in ray_log
    # the same command again: the stored result from the run's record on shared storage, nothing trained
    assert "already completed with this exact config" in again and "epoch 1/" not in again
    assert f"val top1 {m['val_top1']:.2f}%" in again


def _run_losing(c, synth_root, tmp, name: str, lose, replacement_resources: dict, when) -> tuple[dict, str, object]:
    """Start run ``name``; once ``when(log text)`` holds, add a replacement node (as the autoscaler would) and kill
    ``lose`` (raylet and processes, as a spot node goes). (metrics, output, new node)."""
    p, log = _start(_args(synth_root, tmp, name), c.address, tmp / f"{name}.log")
    deadline = time.time() + 600
    while time.time() < deadline and p.poll() is None and not when(open(tmp / f"{name}.log").read()):
        time.sleep(0.2)
    assert p.poll() is None, open(tmp / f"{name}.log").read()[-3000:]
    new = c.add_node(num_cpus=1, resources=replacement_resources)
    c.remove_node(lose, allow_graceful=False)
    out = _finish(p, log, tmp / f"{name}.log")
    m = _metrics(tmp, name)
    assert _checkpointed(tmp, name, EPOCHS) and m["epochs"] == EPOCHS, "the node was lost after the run ended"
    return m, out, new


def _assert_same_run(m: dict, whole: dict, tmp) -> None:
    assert _curve(m) == _curve(whole)  # exactly: rows are keyed by seed, weights restored bit for bit
    assert m["val_top1"] == whole["val_top1"]
    client = MlflowClient(f"sqlite:///{tmp}/mlflow.db")
    steps = [x.step for x in client.get_metric_history(m["mlflow_run_id"], "train/loss")]
    assert sorted(steps) == list(range(1, STEPS * EPOCHS + 1))  # relayed from every node, none lost or twice


def test_two_workers_on_two_trainer_nodes_split_the_data(cluster, synth_root, tmp_path):
    """DDP over gloo between two raylets: each rank on its own trainer node; every row of every epoch trained
    by exactly one rank, once (the ranks' row ledgers, combined at the end of the run)."""
    c, nodes = cluster
    pair = [c.add_node(num_cpus=1, resources={"trainer": 1}) for _ in range(2)]
    c.wait_for_nodes()
    args = _args(synth_root, tmp_path, "ddp", **{"train.num_workers": 2, "train.epochs": 2, "train.steps_per_epoch": 4})
    p, log = _start(args, c.address, tmp_path / "ddp.log")
    out = _finish(p, log, tmp_path / "ddp.log")
    m = _metrics(tmp_path, "ddp")
    assert m["restarts"] == 0 and m["world_size"] == 2 and m["epochs"] == 2, out[-3000:]
    assert sorted(m["train_nodes"]) == sorted(_label(n) for n in pair)
    rows = 2 * 4 * 2 * 2  # epochs x steps x ranks x labeled rows per step
    assert m["data_split"] == {"rows": rows, "trained": rows, "twice": 0, "missing": 0, "outside": 0}
    for n in pair:
        c.remove_node(n)


def test_trainer_node_lost_resumes_on_another_with_the_same_result(cluster, whole, synth_root, tmp_path):
    c, nodes = cluster
    first = c.add_node(num_cpus=1, resources={"trainer": 1})
    c.wait_for_nodes()
    after_epoch_2 = lambda _: _checkpointed(tmp_path, "lost-trainer", 2)  # noqa: E731 - on shared storage
    m, out, second = _run_losing(c, synth_root, tmp_path, "lost-trainer", first, {"trainer": 1}, after_epoch_2)
    assert m["restarts"] == 1, out[-3000:]
    assert "[cmpl-ray] resumed at epoch" in out and f"restarts {m['restarts']}" in out
    assert m["train_nodes"] == [_label(first), _label(second)] and m["decode_nodes"] == [_label(nodes["decode"])]
    _assert_same_run(m, whole[0], tmp_path)
    run = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db").get_run(m["mlflow_run_id"])
    assert run.data.tags["cmpl.train_nodes"] == f"{_label(first)} {_label(second)}"
    c.remove_node(second)


def test_decode_node_lost_decoding_moves_with_the_same_result(cluster, whole, synth_root, tmp_path):
    c, nodes = cluster
    trainer = c.add_node(num_cpus=1, resources={"trainer": 1})
    c.wait_for_nodes()
    lost = nodes["decode"]
    # early in epoch 1: the decode actor runs ahead of training and may have decoded the whole (small) run later
    first_step = lambda text: f"step 1/{STEPS * EPOCHS} " in text  # noqa: E731
    m, out, second = _run_losing(c, synth_root, tmp_path, "lost-decode", lost, {"decode": 1}, first_step)
    nodes["decode"] = second
    assert m["decode_nodes"] == [_label(lost), _label(second)] and m["train_nodes"] == [_label(trainer)]
    _assert_same_run(m, whole[0], tmp_path)
    assert m["restarts"] == 0, out[-3000:]


SWEEP = """description: lr sweep over two trainer nodes, ranked on train_lr so ASHA's choice is known in advance
preset: demo
scheduler: {name: asha, grace_period: 1, reduction_factor: 2}
metric: train_lr
mode: min
fixed:
  train.epochs: 6
  train.steps_per_epoch: 2
  train.eval_every: 1
space:
  optim.lr: {grid: [0.05, 0.2, 0.4]}
"""


def test_sweep_spreads_trials_over_two_trainer_nodes(synth_root, tmp_path):
    """A head with a dashboard (Tune's stopped trials need the State API to free their placement groups), two
    trainer nodes and a decode node: concurrent trials on both trainer nodes, the stopped ones ended, and
    ``cmpl-ray report`` reads the sweep back."""
    from ray.cluster_utils import Cluster

    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": True})
    try:
        # 2 CPUs: the worker's 1, and room for Tune's trial actors (0.01 CPU each; the head has none)
        trainers = [c.add_node(num_cpus=2, resources={"trainer": 1}) for _ in range(2)]
        c.add_node(num_cpus=1, resources={"decode": 1})
        c.wait_for_nodes()
        (tmp_path / "lr.yaml").write_text(SWEEP)
        cmd = [sys.executable, "-m", "cmpl_ray", "tune", str(tmp_path / "lr.yaml"), "--name", "lr", "--storage",
               str(tmp_path / "tune"), "--max-concurrent", "2", *_flags(_data_sets(synth_root, tmp_path))]  # fmt: skip
        p, log = _start(cmd, c.address, tmp_path / "sweep.log")
        out = _finish(p, log, tmp_path / "sweep.log", timeout=1200)
    finally:
        c.shutdown()
    assert "3 trials" in out and "stopped early by asha" in out, out[-3000:]
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()], "tags.`cmpl.sweep` = 'lr'")
    kids = [k for k in runs if "mlflow.parentRunId" in k.data.tags]
    assert len(kids) == 3
    assert all(k.data.metrics["restarts"] == 0 for k in kids)  # no fault injected: a restart would be no pass
    used = {n for k in kids for n in k.data.tags["cmpl.train_nodes"].split()}
    assert used == {_label(t) for t in trainers}  # the trials ran on both trainer nodes, nowhere else
    status = {float(k.data.params["optim.lr"]): (k.data.tags["cmpl.tune.status"], k.info.status) for k in kids}
    assert status[0.05] == ("completed", "FINISHED") and status[0.4] == ("early_stopped", "KILLED")
    rep = subprocess.run(
        [sys.executable, "-m", "cmpl_ray", "report", "lr", "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db"],
        capture_output=True, text=True, cwd=tmp_path,
    )  # fmt: skip
    assert rep.returncode == 0, rep.stderr
    assert len([ln for ln in rep.stdout.splitlines() if ln.startswith("| 0.")]) == 3
