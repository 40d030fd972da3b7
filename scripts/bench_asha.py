#!/usr/bin/env python
"""Benchmark: an ASHA sweep vs the same trials run to completion (FIFO), on the synthetic demo set.

Runs ``search_spaces/demo_laptop.yaml`` (8 trials: threshold x lambda, demo preset) twice through the real
``cmpl-ray tune`` driver in one local Ray: once with ASHA, once with every trial run to the end. Prints
the wall time of each, the number of trials ASHA stopped, the best validation top-1 each sweep reached and
its values, a trial's fixed cost (start-up in epoch 1, time outside the reports), the trial-epochs ASHA saved,
whether both sweeps found the same best trial, and as the last line ``asha_vs_full_wall: <ratio>`` (< 1 means
ASHA saved time). Long trials (where early stopping matters): ``--set train.steps_per_epoch=60``.

    python scripts/bench_asha.py [--space search_spaces/demo_laptop.yaml] [--out outputs/bench_asha]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def fixed_cost_line(r: dict) -> str:
    """Where a trial's time goes, from the sweep that ran every trial to the end: the steady epoch (the
    fastest report), epoch 1's extra (worker group, datasets, first batches: the slowest report minus the
    fastest) and the wall outside any report (trial scheduling, the end's checkpoint and model logging)."""
    rows = [t for t in r["trials"] if t.get("epoch_s_min") is not None and t.get("seconds") is not None]
    if not rows:
        return "per_trial: no timings"
    med = lambda xs: sorted(xs)[len(xs) // 2]  # noqa: E731
    steady = med([t["epoch_s_min"] for t in rows])
    start = med([t["epoch_s_max"] - t["epoch_s_min"] for t in rows])
    outside = (r["wall_seconds"] - sum(t["seconds"] for t in rows)) / len(rows)
    total = r["wall_seconds"] / len(rows)
    return (
        f"per_trial (median): steady epoch {steady:.1f} s, epoch-1 start-up {start:.1f} s, outside reports "
        f"{outside:.1f} s, wall {total:.1f} s: fixed share {(start + outside) / total:.2f}"
    )


def simulated_asha_share(n: int, max_t: int, grace: int = 1, rf: float = 2.0, draws: int = 4000) -> float:
    """Share of the trial-epochs ASHA runs on ``n`` trials started one at a time in random order, when a trial's
    score has the same rank at every rung (no noise): Ray's asynchronous rule, a trial stops at a rung when its
    score is below the (1 - 1/rf) percentile of the scores earlier trials recorded there. What a sequential
    sweep of this size can save at best, whatever each trial's fixed cost."""
    import numpy as np

    rng = np.random.default_rng(0)
    rungs = [grace * int(rf**k) for k in range(32) if grace * rf**k < max_t]
    total = 0
    for _ in range(draws):
        seen: dict[int, list[float]] = {r: [] for r in rungs}
        for score in rng.random(n):
            ran = max_t
            for r in rungs:
                cut = np.percentile(seen[r], (1 - 1 / rf) * 100) if seen[r] else None
                seen[r].append(score)
                if cut is not None and score < cut:
                    ran = r
                    break
            total += ran
    return total / (draws * n * max_t)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--space", default=os.path.join(ROOT, "search_spaces", "demo_laptop.yaml"))
    ap.add_argument("--out", default="outputs/bench_asha")
    ap.add_argument("--num-cpus", type=int, default=None)
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument(
        "--max-concurrent",
        type=int,
        default=None,
        help="trials at once (default: the space file's max_concurrent_trials); on 2 CPUs two demo trials "
        "fit with --set train.cpus_per_worker=0.7: 2 x (0.7 + 0.25 decoder + 0.01 driver) <= 2",
    )
    a = ap.parse_args()
    from cmpl_ray.data.lists import read_list, split_labeled, write_list
    from cmpl_ray.data.synth import make_synthetic_dataset
    from cmpl_ray.tune.driver import run_sweep

    out = os.path.abspath(a.out)
    data = os.path.join(out, "data")
    if not os.path.exists(os.path.join(data, "train.txt")):
        make_synthetic_dataset(data, num_classes=8, per_class=12, seed=0, val_per_class=3)
    lab, unl = split_labeled(read_list(os.path.join(data, "train.txt")), per_class=4, seed=0)
    write_list(os.path.join(data, "splits", "labeled.txt"), lab)
    write_list(os.path.join(data, "splits", "unlabeled.txt"), unl)
    sets = [
        f"data.root={data}",
        f"data.labeled_list={data}/splits/labeled.txt",
        f"data.unlabeled_list={data}/splits/unlabeled.txt",
        f"data.val_list={data}/val.txt",
        f"data.classes_file={data}/classes.txt",
        f"tracking.uri=sqlite:///{out}/mlflow.db",
    ] + a.overrides
    stamp = time.strftime("%Y%m%d-%H%M%S")
    res = {}
    for sched in ("asha", "fifo"):
        res[sched] = run_sweep(
            a.space,
            overrides=sets,
            name=f"bench-{sched}-{stamp}",
            storage=os.path.join(out, "tune"),
            scheduler=sched,
            num_cpus=a.num_cpus,
            max_concurrent=a.max_concurrent,
            verbose=True,
        )
    for sched, r in res.items():
        best = r["best"]["best"] if r["best"] else float("nan")
        epochs = sum(t["epochs"] for t in r["trials"])
        print(
            f"{sched}: {len(r['trials'])} trials, {r['early_stopped']} stopped early, {epochs} trial-epochs, "
            f"wall {r['wall_seconds']:.1f} s, best val_top1 {best:.2f} {r['best']['values'] if r['best'] else ''}"
        )
    print(
        fixed_cost_line(res["fifo"])
        if (a.max_concurrent or 1) == 1
        else "per_trial: not split into fixed and steady cost when trials overlap"
    )
    full = sum(t["epochs"] for t in res["fifo"]["trials"])
    ran = sum(t["epochs"] for t in res["asha"]["trials"])
    same = bool(
        res["asha"]["best"] and res["fifo"]["best"] and res["asha"]["best"]["values"] == res["fifo"]["best"]["values"]
    )
    print(f"trial_epochs_saved: {full - ran} of {full} ({(full - ran) / max(full, 1):.0%})")
    max_t = max(t["epochs"] for t in res["fifo"]["trials"])
    print(
        f"trial-epochs ASHA ran: {ran / max(full, 1):.2f} of the full sweep's; in random order, without noise, "
        f"ASHA's rule keeps {simulated_asha_share(len(res['fifo']['trials']), max_t):.2f} on average (simulated)"
    )
    print(f"same_best_trial: {'yes' if same else 'no'}")
    print(f"asha_vs_full_wall: {res['asha']['wall_seconds'] / res['fifo']['wall_seconds']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
