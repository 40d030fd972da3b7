"""The paths users run beyond the demo, end to end on a real local Ray with real videos and a real MLflow store:
``eval_every > 1`` (the best checkpoint must be a measured one), several workers with EMA off and a rank
without a readable val video, ``--resume`` with a relative path, a sweep ranked on another metric than
``val_top1``, result files on the run's storage folder. No fault is injected unless a test says so, and then
the exact number of restarts is asserted: Ray's restarts must not pass a crash off as a recovery.
"""

import json
import os
import subprocess
import sys

import pytest
import ray
from mlflow import MlflowClient
from ray.train.v2.api.callback import UserCallback

from cmpl_ray.cli import main
from cmpl_ray.config import load_config
from cmpl_ray.data.lists import VideoItem, read_list, write_list
from cmpl_ray.train.checkpoint import load_checkpoint
from cmpl_ray.train.launch import run_training

pytestmark = pytest.mark.slow


def toy_sets(synth_root, splits, out, **over):
    """The demo preset at toy size: only sizes and places change, its own switches stay."""
    sets = {
        "data.root": synth_root,
        "data.labeled_list": f"{splits}/labeled.txt",
        "data.unlabeled_list": f"{splits}/unlabeled.txt",
        "data.val_list": f"{synth_root}/val.txt",
        "data.classes_file": f"{synth_root}/classes.txt",
        "data.crop_size": 32,
        "data.train_short_side": "[32,40]",
        "data.test_short_side": 32,
        "data.eval_clips": 1,
        "train.batch_labeled": 2,
        "algo.unlabeled_ratio": 1,
        "train.steps_per_epoch": 3,
        "train.log_every": 1,
        "optim.warmup_epochs": 0,
        "run.output_dir": f"{out}/out",
        "run.storage_path": f"{out}/ray_results",
        "run.name": "toy",
        "run.max_failures": 0,
        "tracking.uri": f"sqlite:///{out}/mlflow.db",
    }
    sets.update(over)
    return sets


def _cli(sets, cwd, *extra, timeout=600):
    args = [sys.executable, "-m", "cmpl_ray", "train", "--preset", "demo", *extra]
    args += [a for k, v in sets.items() for a in ("--set", f"{k}={v}")]
    return subprocess.run(
        args, cwd=cwd, env={**os.environ, "PYTHONUNBUFFERED": "1"}, capture_output=True, text=True, timeout=timeout
    )


class _HideValVideosAfter(UserCallback):
    """A Ray Train callback (runs in the controller): once epoch ``epoch`` is reported, the val videos are moved
    away, so every later evaluation scores 0: a mid-run score that beats the final one, by construction."""

    def __init__(self, epoch, paths):
        self.epoch, self.paths = epoch, paths

    def after_report(self, run_context, metrics, checkpoint):
        if metrics and int(metrics[0]["epoch"]) == self.epoch:
            for p in self.paths:
                if os.path.exists(p):
                    os.rename(p, p + ".hidden")


def test_best_checkpoint_is_an_evaluated_epoch_and_eval_reproduces_its_score(
    synth_root, splits, tmp_path, local_ray, capsys
):
    """eval_every 2 over 4 epochs: epochs 2 and 4 are evaluated; the val videos vanish after epoch 2, so epoch 4
    scores 0. The published best checkpoint must be epoch 2's (not epoch 3's, which was never evaluated), and
    ``cmpl-ray eval`` on it must give exactly ``val_top1_best``. Its result files live on the run's storage."""
    val_dir = tmp_path / "val"
    val_dir.mkdir()
    items = []
    for it in read_list(f"{synth_root}/val.txt"):
        dst = val_dir / it.path.replace("/", "_")
        dst.write_bytes(open(os.path.join(synth_root, it.path), "rb").read())
        items.append(VideoItem(str(dst), it.label))
    write_list(str(tmp_path / "val.txt"), items)
    sets = toy_sets(
        synth_root,
        splits,
        tmp_path,
        **{
            "data.val_list": f"{tmp_path}/val.txt",
            "train.epochs": 4,
            "train.eval_every": 2,
            "algo.name": "supervised",
            "train.steps_per_epoch": 4,
        },
    )
    cfg = load_config("demo", overrides=[f"{k}={v}" for k, v in sets.items()])
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the controller cannot import tests/
    m = run_training(cfg, callbacks=[_HideValVideosAfter(2, [it.path for it in items])])
    for it in items:
        os.rename(it.path + ".hidden", it.path)
    hist = {int(h["epoch"]): h for h in m["history"]}
    assert m["restarts"] == 0
    assert [e for e, h in hist.items() if h["evaluated"]] == [2, 4]
    assert hist[4]["val_top1"] == 0.0 and hist[2]["val_top1"] > 0.0, "premise: mid-run beats final"
    assert m["val_top1_best"] == hist[2]["val_top1"] and "val_top1" not in hist[3]
    state = load_checkpoint(m["best_checkpoint"])
    assert state["epoch"] + 1 == 2, f"best checkpoint is epoch {state['epoch'] + 1}'s, which was never evaluated"
    capsys.readouterr()
    assert main(["eval", m["best_checkpoint"], "--list", f"{tmp_path}/val.txt"]) == 0
    assert json.loads(capsys.readouterr().out)["val_top1"] == m["val_top1_best"]
    # the MLflow model "primary" and the registered best come from that checkpoint
    client = MlflowClient(cfg.tracking.uri)
    assert client.get_run(m["mlflow_run_id"]).data.metrics["val_top1_best"] == m["val_top1_best"]
    stored = tmp_path / "ray_results" / "toy" / "result" / "metrics.json"
    assert stored.exists(), "rank 0's result files are not on the run's storage folder"
    assert json.loads(stored.read_text())["history"] == m["history"]


def test_eval_of_best_checkpoint_prints_val_top1_best(synth_root, splits, tmp_path, local_ray, capsys):
    """The same run shape as above without hiding anything: ``cmpl-ray eval`` on the best checkpoint equals
    ``val_top1_best`` exactly (EMA weights, the same clips)."""
    sets = toy_sets(
        synth_root,
        splits,
        tmp_path,
        **{"train.epochs": 4, "train.eval_every": 2, "train.steps_per_epoch": 4, "run.name": "plain"},
    )
    cfg = load_config("demo", overrides=[f"{k}={v}" for k, v in sets.items()])
    m = run_training(cfg)
    capsys.readouterr()
    assert m["restarts"] == 0
    assert main(["eval", m["best_checkpoint"], "--list", f"{synth_root}/val.txt"]) == 0
    res = json.loads(capsys.readouterr().out)
    state = load_checkpoint(m["best_checkpoint"])
    assert state["metrics"]["evaluated"] == 1.0
    assert res["val_top1"] == m["val_top1_best"] == state["metrics"]["val_top1"]


@pytest.mark.parametrize("val_decode", ["worker", "ray_data"])
def test_two_workers_ema_off_one_rank_without_a_readable_val_video(synth_root, splits, tmp_path, val_decode):
    """Every cluster preset has EMA off. With two workers, rank 1's val share is empty (worker decode: one val
    video) or only padding and an unreadable file (Ray Data): evaluation must return, with exact counts."""
    val = read_list(f"{synth_root}/val.txt")
    items = [VideoItem(os.path.join(synth_root, val[0].path), val[0].label)]
    if val_decode == "ray_data":
        items.append(VideoItem(str(tmp_path / "missing.mp4"), val[1].label))
    write_list(str(tmp_path / "val.txt"), items)
    sets = toy_sets(
        synth_root,
        splits,
        tmp_path,
        **{
            "data.val_list": f"{tmp_path}/val.txt",
            "data.val_decode": val_decode,
            "train.ema_decay": 0,
            "train.num_workers": 2,
            "train.cpus_per_worker": 0.5,
            "data.cpus_per_decoder": 0.25,
            "data.decode_batch": 2,
            "train.epochs": 2,
            "train.eval_every": 1,
            "train.steps_per_epoch": 2,
        },
    )
    r = _cli(sets, tmp_path, timeout=420)
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    m = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert m["restarts"] == 0 and m["world_size"] == 2
    assert m["val_videos"] == 1 and m.get("val_invalid", 0) == len(items) - 1


def test_resume_from_a_relative_checkpoint_path(synth_root, splits, tmp_path, local_ray):
    """``--resume`` with a path relative to where the user stands: the workers run elsewhere (Ray Train changes
    their working directory; on a cluster, another node), so the driver reads it and ships the state."""
    first = toy_sets(synth_root, splits, tmp_path, **{"train.epochs": 3, "run.name": "first"})
    m1 = run_training(load_config("demo", overrides=[f"{k}={v}" for k, v in first.items()]))
    assert m1["restarts"] == 0
    run = tmp_path / "ray_results" / "first"
    epoch1 = sorted(d for d in os.listdir(run) if d.startswith("checkpoint_") and (run / d).is_dir())
    ckpts = [d for d in epoch1 if load_checkpoint(tmp_path / "ray_results" / "first" / d)["epoch"] == 1]
    assert ckpts, epoch1
    rel = os.path.join("ray_results", "first", ckpts[0])
    second = toy_sets(
        synth_root, splits, tmp_path, **{"train.epochs": 3, "run.name": "second", "run.output_dir": f"{tmp_path}/out2"}
    )
    r = _cli(second, tmp_path, "--resume", rel)
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    m2 = json.loads((tmp_path / "out2" / "metrics.json").read_text())
    assert m2["restarts"] == 0
    assert [h["epoch"] for h in m2["history"]] == [1.0, 2.0, 3.0]  # epochs 1-2 came with the checkpoint
    assert m2["history"][:2] == [{k: v for k, v in h.items()} for h in m1["history"][:2]]
