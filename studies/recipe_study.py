#!/usr/bin/env python
"""Recipe study on the benchmark suite with the Ray-free runner (``cmpl_ray.train.local``).

Why: finding out why a recipe does or does not learn needs many short runs; the Ray-free runner uses the
trainer's own decoder, loop and evaluation, so what it measures carries over to ``cmpl-ray train`` (the
suite comparison, ``compare_algorithms.py --suite``, re-measures the final recipe with the real trainer).

    python studies/recipe_study.py --families direction speed --labels all --algo supervised \\
        --preset fewlabel-cpu --set train.epochs=10 --tag more-epochs

Each run appends one JSON line (family, labels, algo, seed, tag, overrides, top-1, per-class, history,
seconds) to ``<out>/results.jsonl`` and prints a one-line summary; ``--table`` prints the runs so far, and
``--compare TAG ...`` the seed-paired comparison of the runs with those tags (one family and label count):

    python studies/recipe_study.py --compare fewlabel-r1 fewlabel-r1-maximum --families heldout --labels 10
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from cmpl_ray.config import load_config  # noqa: E402
from cmpl_ray.data.lists import read_list, split_labeled, write_list  # noqa: E402
from cmpl_ray.data.suite import FAMILIES, write_family  # noqa: E402


def family_root(data: str, fam: str, per_class: int, val_per_class: int) -> str:
    root = os.path.join(data, fam)
    if not os.path.exists(os.path.join(root, "suite.json")):
        info = write_family(root, fam, per_class, val_per_class)
        print(f"wrote {fam}: {info['train']} + {info['val']} videos in {info['seconds']} s", flush=True)
    return root


def split_lists(root: str, labels: str, seed: int) -> tuple[str, str]:
    """(labeled, unlabeled) list paths for ``labels`` per class ("all" = every training video labeled)."""
    d = os.path.join(root, "splits", f"{labels}_s{seed}")
    lab, unl = os.path.join(d, "labeled.txt"), os.path.join(d, "unlabeled.txt")
    if not os.path.exists(lab):
        items = read_list(os.path.join(root, "train.txt"))
        labeled, unlabeled = (items, []) if labels == "all" else split_labeled(items, per_class=int(labels), seed=seed)
        write_list(lab, labeled)
        write_list(unl, unlabeled)
    return lab, unl


def family_overrides(root: str) -> list[str]:
    """What the suite records about a family that a run must know (its flip pairs)."""
    info = json.load(open(os.path.join(root, "suite.json")))
    return [f"data.flip_label_map={info['flip_label_map']}"] if info.get("flip_label_map") else []


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="outputs/suite_data")
    ap.add_argument("--out", default="outputs/recipe_study")
    ap.add_argument("--families", nargs="+", default=[f for f in FAMILIES if not FAMILIES[f].held_out])
    ap.add_argument("--labels", default="all", help="labels per class, or 'all'")
    ap.add_argument("--algo", nargs="+", default=["supervised"])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--preset", default="fewlabel-cpu")
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--tag", default="")
    ap.add_argument("--per-class", type=int, default=60)
    ap.add_argument("--val-per-class", type=int, default=50)
    ap.add_argument("--loader-workers", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--table", action="store_true", help="print the results so far and exit")
    ap.add_argument("--compare", nargs="+", metavar="TAG", help="print the seed-paired comparison of these tags")
    ap.add_argument("--summary", action="store_true", help="with --compare: one row per family (suite summary)")
    ap.add_argument(
        "--cmpl-variant",
        default="cmpl",
        metavar="METHOD",
        help="with --summary: the method in the CMPL column, e.g. cmpl-maximum (default: the paper's cross)",
    )
    ap.add_argument(
        "--study-key",
        action="append",
        default=[],
        metavar="KEY",
        help="with --compare: an override key that describes the whole study, not a method (e.g. "
        "model.primary_width), so those runs pair up as supervised / fixmatch / cmpl",
    )
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    res_path = os.path.join(args.out, "results.jsonl")
    if args.compare:
        from recipe_compare import COMMON, compare_markdown, summary_markdown  # studies/ is on sys.path here

        records = [json.loads(line) for line in open(res_path)]
        given = args.families != ap.get_default("families")
        fams = args.families if given else [f for f in FAMILIES if any(r["family"] == f for r in records)]
        if args.summary:
            print(
                summary_markdown(
                    records,
                    fams,
                    args.labels,
                    args.compare,
                    cmpl=args.cmpl_variant,
                    common=COMMON + tuple(args.study_key),
                )
            )
            return 0
        for fam in fams:
            print(compare_markdown(records, fam, args.labels, args.compare, args.data, COMMON + tuple(args.study_key)))
        return 0
    if args.table:
        for line in open(res_path):
            r = json.loads(line)
            print(
                f"{r['tag']:28s} {r['family']:11s} {r['labels']:>4s} {r['algo']:10s} s{r['seed']} "
                f"top1 {r['val_top1']:6.2f} aux {r.get('aux_val_top1', float('nan')):6.2f} {r['seconds'] / 60:5.1f} min"
            )
        return 0
    from cmpl_ray.train.local import run_local

    for fam in args.families:
        root = family_root(args.data, fam, args.per_class, args.val_per_class)
        for seed in args.seeds:
            lab, unl = split_lists(root, args.labels, seed)
            for algo in args.algo:
                sets = (
                    [
                        f"data.root={root}",
                        f"data.labeled_list={lab}",
                        f"data.unlabeled_list={unl}",
                        f"data.val_list={root}/val.txt",
                        f"data.classes_file={root}/classes.txt",
                        f"algo.name={algo}",
                        f"train.seed={seed}",
                    ]
                    + family_overrides(root)
                    + args.overrides
                )
                cfg = load_config(args.preset, overrides=sets)
                t0 = time.perf_counter()
                r = run_local(cfg, loader_workers=args.loader_workers, threads=args.threads, log=None)
                rec = {
                    "tag": args.tag,
                    "family": fam,
                    "labels": args.labels,
                    "algo": algo,
                    "seed": seed,
                    "preset": args.preset,
                    "overrides": args.overrides,
                    "seconds": time.perf_counter() - t0,
                    **{k: v for k, v in r.items() if k != "class_names"},
                }
                with open(res_path, "a") as f:
                    f.write(json.dumps(rec) + "\n")
                curve = " ".join(f"{h['val_top1']:.0f}" for h in r["history"] if "val_top1" in h)
                print(
                    f"{args.tag:24s} {fam:11s} {args.labels:>4s} {algo:10s} s{seed} top1 {r['val_top1']:6.2f} "
                    f"aux {r.get('aux_val_top1', float('nan')):6.2f} loss {r.get('train_loss', float('nan')):.3f} "
                    f"[{curve}] {rec['seconds'] / 60:.1f} min",
                    flush=True,
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
