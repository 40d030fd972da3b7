"""A real Tune sweep end to end: 3 trials of the real trainer on a local Ray, ASHA, MLflow parent/child runs,
``cmpl-ray report``, a sweep interrupted with Ctrl-C (SIGINT) and resumed with ``--resume``, and a trial
re-entered by ``--resume`` after the sweep's space changed (it errors; its checkpoint is not continued).

ASHA ranks trials on ``train_lr`` (mode min) here, so which trials it stops is known in advance and the
test cannot flake on tiny-data accuracy noise; the scheduler, reporting and tagging paths are the same as
for ``val_top1``, which is also checked to be reported every epoch.
"""

import glob
import json
import os
import signal
import subprocess
import sys
import time

import pytest
from mlflow import MlflowClient

from cmpl_ray.data.lists import read_list, split_labeled, write_list

pytestmark = pytest.mark.slow

SPACE = """description: test sweep (learning rate), ranked on train_lr so ASHA's choice is deterministic
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
# 6 epochs: ASHA decides at epochs 1, 2 and 4, and its stop must land before a stopped trial's last epoch. An
# epoch here takes about a second since evaluation is decoded in the worker, so with 2 epochs a stopped trial
# could finish before the stop reached it.


def _sets(root, split_dir, tmp):
    sets = {
        "data.root": root,
        "data.labeled_list": f"{split_dir}/labeled.txt",
        "data.unlabeled_list": f"{split_dir}/unlabeled.txt",
        "data.val_list": f"{root}/val.txt",
        "data.classes_file": f"{root}/classes.txt",
        "data.crop_size": 32,
        "data.train_short_side": "[32,40]",
        "data.test_short_side": 32,
        "data.eval_clips": 1,
        "train.batch_labeled": 2,
        "tracking.uri": f"sqlite:///{tmp}/mlflow.db",
        "optim.warmup_epochs": 0,
    }
    return [a for k, v in sets.items() for a in ("--set", f"{k}={v}")]


def _run(args, cwd, log):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "cmpl_ray", *args], cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT
    )


def test_sweep_asha_mlflow_report_and_resume_after_ctrl_c(synth_root, tmp_path):
    split_dir = tmp_path / "splits"
    lab, unl = split_labeled(read_list(os.path.join(synth_root, "train.txt")), per_class=2, seed=0)
    write_list(str(split_dir / "labeled.txt"), lab)
    write_list(str(split_dir / "unlabeled.txt"), unl)
    space = tmp_path / "lr.yaml"
    space.write_text(SPACE)
    storage = tmp_path / "tune"
    base = ["--storage", str(storage), "--num-cpus", "2"]

    # 1) start the sweep; Ctrl-C once the first trial has finished
    with open(tmp_path / "run1.log", "w") as log:
        p = _run(["tune", str(space), "--name", "lr", *base, *_sets(synth_root, split_dir, tmp_path)], tmp_path, log)
        deadline = time.time() + 420
        while time.time() < deadline and p.poll() is None and not glob.glob(f"{storage}/lr/trials/*/metrics.json"):
            time.sleep(1)
        assert p.poll() is None, (tmp_path / "run1.log").read_text()[-3000:]
        first = glob.glob(f"{storage}/lr/trials/*/metrics.json")
        assert len(first) == 1, "no trial finished in time"
        p.send_signal(signal.SIGINT)
        rc = p.wait(timeout=180)
    out1 = (tmp_path / "run1.log").read_text()
    assert rc == 130, out1[-3000:]
    assert "resume with: cmpl-ray tune --resume lr" in out1

    # 2) resume: the finished trial is not redone (not even restored: no Train run starts for it), the others
    # run; ASHA stops the high-lr trial
    with open(tmp_path / "run2.log", "w") as log:
        p = _run(["tune", "--resume", "lr", *base], tmp_path, log)
        rc = p.wait(timeout=900)
    out2 = (tmp_path / "run2.log").read_text()
    assert rc == 0, out2[-4000:]
    # a trial whose last epoch was checkpointed is not trained again (Tune may re-enter it to finalise)
    assert [h["epoch"] for h in json.loads(open(first[0]).read())["history"]] == [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
    tid = os.path.basename(os.path.dirname(first[0]))
    if json.loads((storage / "lr" / "train" / f"lr-{tid}" / "cmpl-run.json").read_text())["status"] == "complete":
        assert "[cmpl-ray] resumed at epoch 6" not in out2  # reported from its run record, no Train run restored
    assert "3 trials" in out2 and "stopped early by asha" in out2

    # 3) MLflow: one parent, one child per trial (no duplicate after the resume), tags for status and best
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    parents = client.search_runs(
        [e.experiment_id for e in client.search_experiments()],
        "tags.`cmpl.role` = 'sweep' and tags.`cmpl.sweep` = 'lr'",
    )
    assert len(parents) == 1
    parent = parents[0]
    assert parent.data.params["sweep.axes"] == "optim.lr" and parent.data.params["sweep.scheduler.name"] == "asha"
    assert parent.data.metrics["trials"] == 3 and parent.data.metrics["early_stopped"] >= 1
    kids = client.search_runs([parent.info.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    assert len(kids) == 3
    by_lr = {float(k.data.params["optim.lr"]): k for k in kids}
    assert set(by_lr) == {0.05, 0.2, 0.4}
    status = {lr: k.data.tags["cmpl.tune.status"] for lr, k in by_lr.items()}
    assert status[0.05] == "completed" and status[0.4] == "early_stopped"
    # a stopped trial is KILLED and ended when it last reported, not when the sweep ended (its UI duration)
    stopped = by_lr[0.4]
    last_epoch = max(m.timestamp for m in client.get_metric_history(stopped.info.run_id, "epoch"))
    assert stopped.info.status == "KILLED" and stopped.info.end_time == last_epoch
    assert by_lr[0.05].data.tags.get("cmpl.tune.best") == "true"
    assert sum(k.data.tags.get("cmpl.tune.best") == "true" for k in kids) == 1
    for k in kids:
        epochs = [m.step for m in client.get_metric_history(k.info.run_id, "epoch")]
        assert len(epochs) == len(set(epochs)), f"duplicate epoch steps in {k.data.tags['cmpl.trial_id']}"
        assert client.get_metric_history(k.info.run_id, "val_top1"), "val_top1 is reported every epoch"
        n_ep = int(k.data.metrics["epoch"])
        if status[float(k.data.params["optim.lr"])] == "completed":
            assert n_ep == 6
        else:  # stopped at a rung; the stop is asynchronous, so the epoch under way may still be logged
            assert int(k.data.tags["cmpl.tune.epochs"]) in (1, 2, 4) and n_ep < 6

    # 4) the report reads it all back from MLflow
    rep = subprocess.run(
        [sys.executable, "-m", "cmpl_ray", "report", "lr", "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert rep.returncode == 0, rep.stderr
    rows = [ln for ln in rep.stdout.splitlines() if ln.startswith("| 0.")]
    assert len(rows) == 3 and rows[0].startswith("| 0.05 ") and "(best)" in rows[0]
    assert "early_stopped" in rep.stdout
    # the sweep ranks on the epoch mean train_lr, which MLflow does not get (one name per quantity): the report
    # shows MLflow's per-step train/lr series and says so in its header
    assert "final train/lr" in rep.stdout and all(" - " not in r.split("|", 2)[2] for r in rows)


SPACE_TAU = """description: one FixMatch trial; its fixed threshold is edited while the sweep is interrupted
preset: demo
scheduler: {name: fifo}
metric: val_top1
mode: max
fixed:
  algo.name: fixmatch
  algo.threshold: 0.5
  train.epochs: 8
  train.steps_per_epoch: 2
  train.eval_every: 1
space:
  optim.lr: {grid: [0.05]}
"""


def test_trial_reentered_after_a_space_change_errors_instead_of_resuming(synth_root, tmp_path):
    """Issue 16: ``--resume`` rebuilds each trial's config from the stored sweep; when that changed since the
    trial trained (here the stored space's fixed ``algo.threshold``), the re-entered trial must not continue
    its checkpoint under the new config nor report its old numbers: it errors, naming the changed key."""
    split_dir = tmp_path / "splits"
    lab, unl = split_labeled(read_list(os.path.join(synth_root, "train.txt")), per_class=2, seed=0)
    write_list(str(split_dir / "labeled.txt"), lab)
    write_list(str(split_dir / "unlabeled.txt"), unl)
    space = tmp_path / "tau.yaml"
    space.write_text(SPACE_TAU)
    storage = tmp_path / "tune"
    base = ["--storage", str(storage), "--num-cpus", "2"]

    # 1) Ctrl-C once the trial's epoch-1 checkpoint is registered (it trains 8 short epochs: Ctrl-C lands first)
    with open(tmp_path / "run1.log", "w") as log:
        p = _run(["tune", str(space), "--name", "sw", *base, *_sets(synth_root, split_dir, tmp_path)], tmp_path, log)
        deadline, snaps = time.time() + 420, []
        while time.time() < deadline and p.poll() is None:
            snaps = glob.glob(f"{storage}/sw/train/sw-*/checkpoint_manager_snapshot.json")
            if snaps and "checkpoint_dir_name" in open(snaps[0]).read():
                break
            time.sleep(0.2)
        assert p.poll() is None and snaps, (tmp_path / "run1.log").read_text()[-3000:]
        p.send_signal(signal.SIGINT)
        rc = p.wait(timeout=180)
    out1 = (tmp_path / "run1.log").read_text()
    assert rc == 130 and "resume with: cmpl-ray tune --resume sw" in out1, out1[-3000:]  # every trial generated
    run_dir = os.path.dirname(snaps[0])
    record = json.loads(open(f"{run_dir}/cmpl-run.json").read())
    assert record["status"] == "running", "the trial finished before Ctrl-C: Tune will not re-enter it"
    ckpts = sorted(n for n in os.listdir(run_dir) if n.startswith("checkpoint_"))
    assert ckpts
    tid = os.path.basename(run_dir)[len("sw-") :]
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    kids = client.search_runs([e.experiment_id for e in client.search_experiments()], f"tags.`cmpl.trial_id` = '{tid}'")
    assert len(kids) == 1
    logged = sorted((x.step, x.value) for x in client.get_metric_history(kids[0].info.run_id, "epoch"))
    assert logged and max(v for _, v in logged) < 8  # interrupted before its last epoch

    # 2) the sweep's space changes (the stored copy is what --resume uses), then --resume
    state_file = storage / "sw" / "sweep.json"
    state = json.loads(state_file.read_text())
    assert "algo.threshold: 0.5" in state["space_text"]
    state["space_text"] = state["space_text"].replace("algo.threshold: 0.5", "algo.threshold: 0.7")
    state_file.write_text(json.dumps(state, indent=1))
    with open(tmp_path / "run2.log", "w") as log:
        p = _run(["tune", "--resume", "sw", *base], tmp_path, log)
        rc = p.wait(timeout=600)
    out2 = (tmp_path / "run2.log").read_text()
    assert rc == 1, out2[-4000:]  # the sweep ends with the trial in error
    assert "1 errors" in out2, out2[-4000:]
    errors = "".join(open(f).read() for f in glob.glob(f"{storage}/sw/**/error.txt", recursive=True))
    assert "RunMismatch" in errors and "algo.threshold: 0.5 -> 0.7" in errors, errors[-3000:] or out2[-3000:]
    assert "[cmpl-ray] resumed at epoch" not in out2
    # its Train run was left as it was: same checkpoints, same record; no final result written
    assert sorted(n for n in os.listdir(run_dir) if n.startswith("checkpoint_")) == ckpts
    assert json.loads(open(f"{run_dir}/cmpl-run.json").read()) == record
    m = storage / "sw" / "trials" / tid / "metrics.json"
    assert not m.exists() or "best_checkpoint" not in json.loads(m.read_text())
    # MLflow: the trial's child run got no epoch beyond what it had trained under the old config
    kids = client.search_runs([e.experiment_id for e in client.search_experiments()], f"tags.`cmpl.trial_id` = '{tid}'")
    assert len(kids) == 1 and kids[0].data.tags["cmpl.fingerprint"] == record["fingerprint"]
    assert kids[0].data.params["algo.threshold"] == "0.5"
    assert sorted((x.step, x.value) for x in client.get_metric_history(kids[0].info.run_id, "epoch")) == logged


SPACE_EVERY2 = """description: ranked on val_mean_class_acc, evaluated every second epoch (as every preset is)
preset: demo
scheduler: {name: asha, grace_period: 2, reduction_factor: 2}
metric: val_mean_class_acc
mode: max
fixed:
  train.epochs: 4
  train.steps_per_epoch: 2
  train.eval_every: 2
space:
  optim.lr: {grid: [0.05, 0.2]}
"""


def test_sweep_on_another_metric_with_eval_every_2(synth_root, splits, tmp_path):
    """With ``eval_every > 1`` an epoch without evaluation has no val_* metric: Tune gets only the evaluated
    epochs, so a sweep ranked on any val metric runs (Tune used to refuse the first unevaluated report)."""
    space = tmp_path / "every2.yaml"
    space.write_text(SPACE_EVERY2)
    storage = tmp_path / "tune"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "cmpl_ray",
            "tune",
            str(space),
            "--name",
            "e2",
            "--storage",
            str(storage),
            "--num-cpus",
            "2",
            *_sets(synth_root, splits, tmp_path),
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-4000:]
    assert "2 trials" in out and ", 0 errors" in out, out[-3000:]
    trials = sorted(glob.glob(f"{storage}/e2/trials/*/metrics.json"))
    assert trials  # a trial ASHA stopped at its epoch-2 rung writes no final result
    for path in trials:
        m = json.loads(open(path).read())
        assert m["restarts"] == 0
        assert [h["epoch"] for h in m["history"] if h["evaluated"]] == [2.0, 4.0][: len(m["history"]) // 2]
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    parent = client.search_runs(
        [e.experiment_id for e in client.search_experiments()],
        "tags.`cmpl.role` = 'sweep' and tags.`cmpl.sweep` = 'e2'",
    )[0]
    assert "best_val_mean_class_acc" in parent.data.metrics
