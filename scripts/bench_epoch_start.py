#!/usr/bin/env python
"""Benchmark: what an epoch boundary costs the Ray Train path, this checkout vs a git ref.

Trains the demo recipe on the demo set through the real ``run_training`` (local Ray, MLflow) with short
epochs and ``train.log_every`` = ``--window`` steps, then reads the per-window ``train/clips_per_s`` history
from MLflow: a window's rate counts from the epoch's start, so the first window of every epoch after the
first carries whatever the boundary costs (before: a new Ray Data pipeline and decode-actor pool per
epoch; now: one stream per run). Prints, per code version, the rate of epochs' first windows, the steady
rate (every other window), their ratio, the seconds per epoch and the wall time, and as the last line
``first_vs_steady: <ratio>`` of this checkout (1.0 = the boundary is free).

    python scripts/bench_epoch_start.py [--ref 23c1094] [--epochs 6] [--steps 30] [--window 10] [--repeats 1]

``--ref`` runs the same measurement on another commit (a temporary ``git worktree``), interleaved with this
checkout's runs when ``--repeats`` > 1, so both see the same machine load.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def measure(out: str, epochs: int, steps: int, window: int, data: str) -> dict:
    """One training run in this process; returns the window rates split into epoch-start and steady."""
    sys.path.insert(0, os.getcwd())
    from mlflow import MlflowClient

    from cmpl_ray.config import load_config
    from cmpl_ray.data.lists import read_list, split_labeled, write_list
    from cmpl_ray.data.synth import make_synthetic_dataset
    from cmpl_ray.train.launch import run_training

    if not os.path.exists(os.path.join(data, "train.txt")):
        make_synthetic_dataset(data, num_classes=8, per_class=24, seed=0, val_per_class=6)
        lab, unl = split_labeled(read_list(os.path.join(data, "train.txt")), per_class=8, seed=0)
        write_list(os.path.join(data, "splits", "labeled.txt"), lab)
        write_list(os.path.join(data, "splits", "unlabeled.txt"), unl)
    sets = {
        "data.root": data,
        "data.labeled_list": f"{data}/splits/labeled.txt",
        "data.unlabeled_list": f"{data}/splits/unlabeled.txt",
        "data.val_list": f"{data}/val.txt",
        "data.classes_file": f"{data}/classes.txt",
        "train.epochs": epochs,
        "train.steps_per_epoch": steps,
        "train.log_every": window,
        "train.eval_every": epochs,
        "run.output_dir": f"{out}/run",
        "run.name": f"bench-{os.getpid()}-{time.time_ns()}",
        "run.storage_path": f"{out}/ray",
        "tracking.uri": f"sqlite:///{out}/mlflow.db",
    }
    cfg = load_config("demo", overrides=[f"{k}={v}" for k, v in sets.items()])
    t0 = time.perf_counter()
    m = run_training(cfg)
    wall = time.perf_counter() - t0
    hist = MlflowClient(cfg.tracking.uri).get_metric_history(m["mlflow_run_id"], "train/clips_per_s")
    first, steady = [], []
    for h in sorted(hist, key=lambda h: h.step):
        in_epoch = (h.step - 1) % steps  # 0-based step within its epoch of the window's last step
        epoch = (h.step - 1) // steps
        if in_epoch < window and epoch > 0:
            first.append(h.value)  # first window of epochs 2.. (epoch 1 also pays the run's start-up)
        elif in_epoch >= window:
            steady.append(h.value)
    secs = [e["epoch_seconds"] for e in m["history"][1:]]
    return {
        "first": statistics.mean(first),
        "steady": statistics.mean(steady),
        "epoch_s": statistics.mean(secs),
        "wall": wall,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ref", default=None, help="also measure this commit (e.g. the one before the change)")
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--window", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--out", default="outputs/bench_epoch_start")
    ap.add_argument("--one", action="store_true", help=argparse.SUPPRESS)  # a child: measure once, print JSON
    a = ap.parse_args()
    out = os.path.abspath(a.out)
    data = os.path.join(out, "data")
    if a.one:
        print("RESULT " + json.dumps(measure(tempfile.mkdtemp(dir=out), a.epochs, a.steps, a.window, data)))
        return 0
    os.makedirs(out, exist_ok=True)
    trees = {"this checkout": ROOT}
    if a.ref:
        tree = tempfile.mkdtemp(prefix="ref-", dir=out)
        subprocess.run(["git", "-C", ROOT, "worktree", "add", "--detach", tree, a.ref], check=True, capture_output=True)
        trees[a.ref] = tree
    res: dict[str, list[dict]] = {k: [] for k in trees}
    try:
        for _ in range(a.repeats):
            for name, tree in trees.items():  # interleaved: both versions see the same load
                env = dict(os.environ, PYTHONPATH=tree)
                p = subprocess.run(
                    [
                        sys.executable,
                        os.path.join(ROOT, "scripts", "bench_epoch_start.py"),
                        "--one",
                        "--epochs",
                        str(a.epochs),
                        "--steps",
                        str(a.steps),
                        "--window",
                        str(a.window),
                        "--out",
                        out,
                    ],
                    cwd=tree,
                    env=env,
                    capture_output=True,
                    text=True,
                )
                line = [x for x in p.stdout.splitlines() if x.startswith("RESULT ")]
                if p.returncode or not line:
                    print(p.stdout[-3000:], p.stderr[-3000:])
                    raise SystemExit(f"{name}: run failed (exit {p.returncode})")
                r = json.loads(line[-1][7:])
                res[name].append(r)
                print(
                    f"{name}: epoch-start window {r['first']:.1f} clips/s, steady {r['steady']:.1f}, "
                    f"ratio {r['first'] / r['steady']:.2f}, {r['epoch_s']:.1f} s/epoch, wall {r['wall']:.0f} s",
                    flush=True,
                )
    finally:
        if a.ref:
            subprocess.run(["git", "-C", ROOT, "worktree", "remove", "--force", trees[a.ref]], capture_output=True)
    for name, rs in res.items():
        ratio = statistics.mean(r["first"] / r["steady"] for r in rs)
        print(
            f"{name}: first/steady {ratio:.2f}, {statistics.mean(r['epoch_s'] for r in rs):.1f} s/epoch, "
            f"wall {statistics.mean(r['wall'] for r in rs):.0f} s ({len(rs)} runs)"
        )
    this = res["this checkout"]
    print(f"first_vs_steady: {statistics.mean(r['first'] / r['steady'] for r in this):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
