"""The console contract end to end (issue 17): the real ``cmpl-ray train`` on a local Ray, in a subprocess.

Default on a pipe (CI, ``ray job logs``): only the project's lines (periodic step lines, one line per evaluation,
the end summary) and Ray's own output in ``<output dir>/ray.log``, with no placement-group-cleaner loop at all
(its cause is fixed, not hidden). ``--verbose``: Ray's lines too. A terminal: one progress bar per epoch.
"""

import fcntl
import json
import os
import pty
import struct
import subprocess
import sys
import termios
import threading

import pytest

from cmpl_ray.data.lists import read_list, split_labeled, write_list

pytestmark = pytest.mark.slow

RAY_LINES = (
    "(TrainController",
    "(RayTrainWorker",
    "(SplitCoordinator",
    "core_worker.cc",
    "PlacementGroupCleaner",
    "RayDeprecationWarning",
    "Token authentication",
    "Reporting training result",
    "Checkpoint successfully created",
    "Started a local Ray instance",
    "mlflow.store",
)
CLEANER_LOOP = "Failed to query Ray Train Controller actor state"


def _cmd(root, tmp, *extra):
    lab, unl = split_labeled(read_list(os.path.join(root, "train.txt")), per_class=2, seed=0)
    write_list(str(tmp / "lab.txt"), lab)
    write_list(str(tmp / "unl.txt"), unl)
    sets = {
        "data.root": root,
        "data.labeled_list": tmp / "lab.txt",
        "data.unlabeled_list": tmp / "unl.txt",
        "data.val_list": f"{root}/val.txt",
        "data.classes_file": f"{root}/classes.txt",
        "data.crop_size": 32,
        "data.train_short_side": "[32,40]",
        "data.test_short_side": 32,
        "data.eval_clips": 1,
        "train.batch_labeled": 2,
        "algo.unlabeled_ratio": 2,
        "train.log_every": 1,
        "optim.warmup_epochs": 0,
        "train.epochs": 2,
        "train.steps_per_epoch": 2,
        "train.eval_every": 2,
        "run.output_dir": f"{tmp}/out",
        "run.storage_path": f"{tmp}/ray_results",
        "run.name": "console",
        "tracking.uri": f"sqlite:///{tmp}/mlflow.db",
    }
    return [sys.executable, "-m", "cmpl_ray", "train", "--preset", "demo", *extra] + [
        a for k, v in sets.items() for a in ("--set", f"{k}={v}")
    ]


def _env(**extra):
    # Ray's defaults (an in-process ray.init() of an earlier test may leave RAY_AUTH_MODE=token behind), no cluster
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_AUTH_MODE", "RAY_ADDRESS", "CMPL_VERBOSE")}
    return {**env, "PYTHONUNBUFFERED": "1", **extra}


def _run(root, tmp, *extra, **env):
    r = subprocess.run(_cmd(root, tmp, *extra), cwd=tmp, env=_env(**env), capture_output=True, text=True, timeout=400)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-4000:]
    return out


def _summary_present(out, tmp):
    assert "[cmpl-ray] done in " in out and "val top-1" in out and f"{tmp}/out  (metrics.json" in out
    assert "browse with: cmpl-ray ui" in out  # the store is tmp/mlflow.db, the default of cmpl-ray ui there
    assert json.loads((tmp / "out" / "metrics.json").read_text())["restarts"] == 0  # a crash is no pass


def test_default_output_is_the_projects_lines_only(synth_root, tmp_path):
    out = _run(synth_root, tmp_path)
    lines = [ln for ln in out.splitlines() if ln.strip()]
    strays = [ln for ln in lines if not ln.startswith(("[cmpl-ray]", "  "))]  # the summary table is indented
    assert not strays, "\n".join(strays[:20])
    assert not [w for w in RAY_LINES if w in out], out[-3000:]
    # progress (the last step of each epoch at least), one line per evaluation, the summary
    assert "[cmpl-ray] epoch 1/2 step 2/4 loss" in out and "[cmpl-ray] epoch 2/2 step 4/4 loss" in out
    assert out.count("[cmpl-ray] epoch 2: val top1 ") == 1 and "[cmpl-ray] epoch 1: val top1" not in out  # eval_every 2
    _summary_present(out, tmp_path)
    ray_log = (tmp_path / "out" / "ray.log").read_text()
    assert f"Ray's log   {tmp_path}/out/ray.log" in out
    assert "Token authentication is enabled" in ray_log and "(TrainController pid=" in ray_log
    assert CLEANER_LOOP not in ray_log and "PlacementGroupCleaner" not in ray_log  # the cleaner never started
    assert len(lines) <= 25, f"{len(lines)} lines:\n{out}"


def test_verbose_shows_rays_lines_but_no_cleaner_loop(synth_root, tmp_path):
    out = _run(synth_root, tmp_path, "--verbose")
    assert "(TrainController pid=" in out and "(RayTrainWorker pid=" in out and "Reporting training result" in out
    assert "Started a local Ray instance" in out and "Token authentication is enabled" in out
    assert CLEANER_LOOP not in out
    assert out.count("[cmpl-ray] epoch 1/2 step") == 2  # every step event as a line
    _summary_present(out, tmp_path)
    assert "Ray's log" not in out  # nothing was diverted


def test_terminal_gets_one_progress_bar_per_epoch(synth_root, tmp_path):
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 200, 0, 0))
    chunks = []

    def read():
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the child closed the terminal
                return
            if not data:
                return
            chunks.append(data)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    p = subprocess.Popen(
        _cmd(synth_root, tmp_path),
        cwd=tmp_path,
        env=_env(TERM="xterm"),
        stdout=slave,
        stderr=slave,
        stdin=subprocess.DEVNULL,
        close_fds=True,
    )
    os.close(slave)
    rc = p.wait(timeout=400)
    reader.join(timeout=30)
    os.close(master)
    out = b"".join(chunks).decode("utf-8", "replace")
    assert rc == 0, out[-4000:]
    assert "epoch 1/2 " in out and "epoch 2/2 " in out and "%|" in out and "clips/s" in out and "run eta" in out
    assert "[cmpl-ray] epoch 1/2 step" not in out  # a bar, not step lines
    assert not [w for w in RAY_LINES if w in out], out[-3000:]
    assert "[cmpl-ray] epoch 2: val top1" in out
    _summary_present(out.replace("\r\n", "\n"), tmp_path)
