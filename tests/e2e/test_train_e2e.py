"""End to end on a real local Ray (2 CPUs), real mp4s and a real sqlite MLflow store.

One 2-worker CMPL run (metrics.json, MLflow metrics and artifacts), then eval / predict on its checkpoint,
a run whose worker process is killed mid-run (resumes from the checkpoint), and a run whose tracking server
is down (training finishes, metrics are buffered).
"""

import json
import os
import socket
import threading
import time

import psutil
import pytest
from mlflow import MlflowClient

from cmpl_ray.cli import main
from cmpl_ray.config import load_config
from cmpl_ray.data.lists import read_list
from cmpl_ray.train.checkpoint import load_checkpoint
from cmpl_ray.train.launch import run_training

pytestmark = pytest.mark.slow


def make_cfg(synth_root, splits, out, **over):
    sets = {
        "data.root": synth_root,
        "data.labeled_list": f"{splits}/labeled.txt",
        "data.unlabeled_list": f"{splits}/unlabeled.txt",
        "data.val_list": f"{synth_root}/val.txt",
        "data.classes_file": f"{synth_root}/classes.txt",
        "data.crop_size": 32,
        "data.train_short_side": "[32, 40]",
        "data.test_short_side": 32,
        "data.raw_clip_len": 16,
        "data.eval_clips": 2,
        "data.eval_crops": 1,
        "data.decode_batch": 2,
        "data.cpus_per_decoder": 0.25,
        "train.batch_labeled": 2,
        "algo.unlabeled_ratio": 2,
        "train.num_workers": 2,
        "train.cpus_per_worker": 0.5,
        "train.epochs": 2,
        "train.log_every": 1,
        "train.eval_every": 1,
        "run.output_dir": f"{out}/out",
        "run.storage_path": f"{out}/ray_results",
        "run.name": "e2e",
        "tracking.uri": f"sqlite:///{out}/mlflow.db",
        "algo.threshold": 0.3,
        "train.steps_per_epoch": 0,
        "train.passes": 0,
        "train.min_steps": 0,
        "algo.unsup_warmup_epochs": 0,
        "optim.warmup_epochs": 0,
    }
    sets.update(over)
    return load_config("demo", overrides=[f"{k}={v}" for k, v in sets.items()])


@pytest.fixture(scope="module")
def trained(synth_root, splits, tmp_path_factory, local_ray):
    out = tmp_path_factory.mktemp("run")
    cfg = make_cfg(synth_root, splits, out)
    metrics = run_training(cfg)
    return cfg, metrics, out


def test_two_worker_run_writes_metrics_and_mlflow(trained):
    cfg, metrics, out = trained
    on_disk = json.loads(open(f"{out}/out/metrics.json").read())
    for key in (
        "val_top1",
        "val_top5",
        "val_mean_class_acc",
        "aux_val_top1",
        "epochs",
        "skipped_samples",
        "mlflow_run_id",
    ):
        assert key in on_disk, key
    assert on_disk["epochs"] == 2 and on_disk["world_size"] == 2 and on_disk["skipped_samples"] == 0
    assert on_disk["restarts"] == 0
    split = on_disk["data_split"]  # every row of both epochs trained by exactly one of the two ranks, once
    assert split["twice"] == split["missing"] == split["outside"] == 0 and split["trained"] == split["rows"] > 0
    assert 0.0 <= on_disk["val_top1"] <= 100.0 and on_disk["val_videos"] == 8  # 4 classes x 2 val videos
    assert [h["epoch"] for h in on_disk["history"]] == [1.0, 2.0]
    client = MlflowClient(cfg.tracking.uri)
    run = client.get_run(on_disk["mlflow_run_id"])
    assert run.data.params["algo.name"] == "cmpl" and run.data.params["train.num_workers"] == "2"
    assert run.data.params["derived.val_decode"] == "worker"  # auto: 8 val videos, each rank decodes its 4
    for key in (
        "val_top1",
        "aux_val_top1",
        "train/loss_u_f",
        "train/mask_rate_a",
        "train/pl_correct_ratio_f",
        "train/lr",
        "train/clips_per_s",
        "skipped_samples",
    ):
        assert key in run.data.metrics, key
    assert len(client.get_metric_history(run.info.run_id, "val_top1")) == 2
    arts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {
        "metrics.json",
        "config.yaml",
        "per_class.csv",
        "pseudo_label_ratio.png",
        "class_gap.png",
        "best_checkpoint",
    } <= arts
    assert os.path.exists(on_disk["best_checkpoint"])
    # issue 15: the last epoch's pseudo-labels per class and network, summed over both ranks
    pl = on_disk["pseudo_labels_per_class"]
    assert set(pl) == {"f", "a"} and all(len(pl[n]["mask_rate"]) == 4 for n in pl)
    header = open(f"{out}/out/per_class.csv").readline().strip().split(",")
    assert {"pl_mask_rate_f", "pl_precision_a", "pl_recall_f"} <= set(header)
    # issue 17: one MLflow name per quantity (epoch means train_* stay in metrics.json for Tune), the lists as
    # dataset inputs, the best checkpoint's primary network as model "primary", usable by predict
    assert "train/loss" in run.data.metrics and not [k for k in run.data.metrics if k.startswith("train_")]
    assert "train_loss" in on_disk
    assert {i.dataset.name for i in run.inputs.dataset_inputs} == {"labeled.txt", "unlabeled.txt", "val.txt"}
    assert len(run.outputs.model_outputs) == 1
    assert client.get_experiment(run.info.experiment_id).tags["mlflow.experimentKind"] == "custom_model_development"
    from cmpl_ray.train.inference import predict

    video = os.path.join(cfg.data.root, read_list(cfg.data.val_list)[0].path)
    top = predict(f"runs:/{run.info.run_id}/primary", [video], tracking_uri=cfg.tracking.uri)[0]["top"]
    assert len(top) == 4 and 0.99 <= sum(p for _, p in top) <= 1.01


def test_eval_and_predict_on_checkpoint(trained, synth_root, capsys):
    cfg, metrics, out = trained
    ckpt = metrics["best_checkpoint"]
    assert main(["eval", ckpt, "--list", f"{synth_root}/val.txt"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["val_videos"] == 8 and 0 <= res["val_top1"] <= 100
    state = load_checkpoint(ckpt)
    assert state["ema"]["updates"] == state["global_step"]  # demo preset evaluates an EMA of the weights
    # eval loads the EMA weights that validation measured during training: the same numbers come back
    assert res["val_top1"] == pytest.approx(state["metrics"]["val_top1"])
    assert res["aux_val_top1"] == pytest.approx(state["metrics"]["aux_val_top1"])
    video = os.path.join(synth_root, read_list(f"{synth_root}/val.txt")[0].path)
    assert main(["predict", ckpt, video, os.path.join(synth_root, "nope.mp4")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == video and len(lines) == 6 and "cannot decode (missing)" in lines[-1]
    probs = [float(x.split()[0]) for x in lines[1:5]]  # top-5 of 4 classes = all 4
    assert probs == sorted(probs, reverse=True) and 0.99 <= sum(probs) <= 1.01
    bad = out / "foreign.pt"
    bad.write_bytes(b"not a checkpoint")
    assert main(["eval", str(bad), "--list", f"{synth_root}/val.txt"]) == 2
    assert "not a readable cmpl-ray checkpoint" in capsys.readouterr().err


def _kill_a_worker_after_first_checkpoint(storage, stop):
    """Fault injection: once epoch 1 is checkpointed, SIGKILL one RayTrainWorker process."""
    while not stop.is_set():
        try:  # the controller has registered the reported checkpoint (its dir appears before that)
            registered = "checkpoint_dir_name" in open(os.path.join(storage, "checkpoint_manager_snapshot.json")).read()
        except OSError:
            registered = False
        if registered:
            for p in psutil.Process().children(recursive=True):  # only this test's Ray, never another one
                try:
                    if "RayTrainWorker" in " ".join(p.cmdline()):
                        p.kill()
                        return True
                except psutil.NoSuchProcess:
                    continue
        time.sleep(0.2)
    return False


def test_worker_killed_mid_run_resumes(synth_root, splits, tmp_path, local_ray):
    # the Ray Data evaluation path (data.val_decode=ray_data) through a restart; the other tests use the default
    cfg = make_cfg(
        synth_root, splits, tmp_path, **{"train.epochs": 2, "run.name": "killed", "data.val_decode": "ray_data"}
    )
    stop = threading.Event()
    result = {}
    t = threading.Thread(
        target=lambda: result.update(
            killed=_kill_a_worker_after_first_checkpoint(f"{tmp_path}/ray_results/killed", stop)
        )
    )
    t.start()
    try:
        metrics = run_training(cfg)
    finally:
        stop.set()
        t.join()
    assert result.get("killed"), "no worker was killed: the test did not inject the fault"
    assert metrics["epochs"] == 2
    epochs = [h["epoch"] for h in metrics["history"]]
    assert epochs == [1.0, 2.0]  # restarted from the checkpoint: no gap, no duplicate epoch
    assert metrics["restarts"] == 1  # the one killed worker: exactly one restart
    steps = [h["global_step"] for h in metrics["history"]]
    assert steps == sorted(set(steps))
    client = MlflowClient(cfg.tracking.uri)
    logged = [m.step for m in client.get_metric_history(metrics["mlflow_run_id"], "train/loss")]
    assert sorted(logged) == list(range(1, 5))  # 2 epochs x 2 steps, each step once: no gap, no duplicate


def test_tracking_server_down_training_goes_on(synth_root, splits, tmp_path, local_ray):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    cfg = make_cfg(
        synth_root,
        splits,
        tmp_path,
        **{
            "tracking.uri": f"http://127.0.0.1:{port}",
            "train.epochs": 1,
            "run.name": "nomlflow",
            "train.num_workers": 1,
        },
    )
    metrics = run_training(cfg)
    assert metrics["epochs"] == 1 and metrics["mlflow_run_id"] is None and metrics["restarts"] == 0
    lines = open(f"{tmp_path}/out/mlflow_buffer.jsonl").read().splitlines()
    keys = {json.loads(line)["key"] for line in lines}
    assert {"val_top1", "train/loss"} <= keys  # nothing silently lost: buffered for replay
