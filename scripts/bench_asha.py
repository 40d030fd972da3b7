#!/usr/bin/env python
"""Benchmark: an ASHA sweep vs the same trials run to completion (FIFO), on the synthetic demo set.

Runs ``search_spaces/demo_laptop.yaml`` (8 trials: threshold x lambda, demo preset) twice through the real
``cmpl-ray tune`` driver in one local Ray: once with ASHA, once with every trial run to the end. Prints
the wall time of each, the number of trials ASHA stopped, the best validation top-1 each sweep reached,
and as the last line ``asha_vs_full_wall: <ratio>`` (< 1 means ASHA saved time).

    python scripts/bench_asha.py [--space search_spaces/demo_laptop.yaml] [--out outputs/bench_asha]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--space", default=os.path.join(ROOT, "search_spaces", "demo_laptop.yaml"))
    ap.add_argument("--out", default="outputs/bench_asha")
    ap.add_argument("--num-cpus", type=int, default=None)
    ap.add_argument("--set", dest="overrides", action="append", default=[])
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
    sets = [f"data.root={data}", f"data.labeled_list={data}/splits/labeled.txt",
            f"data.unlabeled_list={data}/splits/unlabeled.txt", f"data.val_list={data}/val.txt",
            f"data.classes_file={data}/classes.txt", f"tracking.uri=sqlite:///{out}/mlflow.db"] + a.overrides
    stamp = time.strftime("%Y%m%d-%H%M%S")
    res = {}
    for sched in ("asha", "fifo"):
        res[sched] = run_sweep(a.space, overrides=sets, name=f"bench-{sched}-{stamp}", storage=os.path.join(out, "tune"),
                               scheduler=sched, num_cpus=a.num_cpus, verbose=True)
    for sched, r in res.items():
        best = r["best"]["best"] if r["best"] else float("nan")
        epochs = sum(t["epochs"] for t in r["trials"])
        print(f"{sched}: {len(r['trials'])} trials, {r['early_stopped']} stopped early, {epochs} trial-epochs, "
              f"wall {r['wall_seconds']:.1f} s, best val_top1 {best:.2f}")
    print(f"asha_vs_full_wall: {res['asha']['wall_seconds'] / res['fifo']['wall_seconds']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
