#!/usr/bin/env python
"""Compare supervised, FixMatch and CMPL on few labels over several seeds with the real trainer.

Every run goes through :func:`cmpl_ray.train.launch.run_training` (Ray Train + Ray Data + MLflow), inside ONE
local Ray session (``ensure_ray``). For each seed the training list is split with
``split_labeled(per_class=--labels-per-class, seed=seed)`` into ``<out>/splits/s<seed>/{labeled,unlabeled}.txt``;
all algorithms of a seed share that split, so the margins compare algorithms, not splits.

Examples::

    # synthetic set (written to <out>/data first), fewlabel-cpu recipe, 8 labels/class, seeds 0 1 2
    python studies/compare_algorithms.py --synth --out outputs/compare --num-cpus 2
    # more seeds later (another session), one table for all: the earlier rows are merged in
    python studies/compare_algorithms.py --synth --out outputs/compare2 --seeds 3 4 5 \\
        --merge outputs/compare/results.csv
    # any dataset
    python studies/compare_algorithms.py --root /data/ucf101 --train-list /data/ucf101/train.txt \\
        --val-list /data/ucf101/val.txt --classes /data/ucf101/classes.txt --labels-per-class 3 \\
        --preset ucf101-1pct-r18 --out outputs/ucf-compare
    # Appendix A pseudo-label schemes as extra CMPL rows
    python studies/compare_algorithms.py --synth --schemes cross self_first maximum

Writes ``<out>/results.csv`` (one row per run), ``<out>/results.md`` (mean +- std of top-1 per algorithm,
per-seed values, margins CMPL - FixMatch, FixMatch - supervised and CMPL - supervised with seeds won, a paired-t
95% interval and the seed spread) and ``<out>/comparison.png``; prints the table at the end. A failed run is
recorded (val_top1 empty, error column) and the study goes on.
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import sys
import time
import traceback
from pathlib import Path

FIELDS = [
    "algo",
    "seed",
    "val_top1",
    "val_top5",
    "mean_class",
    "aux_val_top1",
    "mask_f",
    "pl_acc_f",
    "mask_a",
    "pl_acc_a",
    "minutes",
    "error",
]
# last-epoch training means a row keeps: mask rate and precision of kept pseudo-labels, primary (f) and aux (a)
PL_STATS = {
    "mask_f": "train_mask_rate_f",
    "pl_acc_f": "train_pl_acc_f",
    "mask_a": "train_mask_rate_a",
    "pl_acc_a": "train_pl_acc_a",
}


def _mean_std(xs: list[float]) -> tuple[float, float]:
    """Mean and sample std (n-1; 0 for one value) of the finite values."""
    xs = [x for x in xs if x is not None and math.isfinite(x)]
    if not xs:
        return float("nan"), float("nan")
    m = sum(xs) / len(xs)
    if len(xs) < 2:
        return m, 0.0
    return m, math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1))


# Two-sided 95% quantiles of Student's t by degrees of freedom (numpy/scipy-free; 1.96 beyond 30).
_T975 = {
    1: 12.706,
    2: 4.303,
    3: 3.182,
    4: 2.776,
    5: 2.571,
    6: 2.447,
    7: 2.365,
    8: 2.306,
    9: 2.262,
    10: 2.228,
    11: 2.201,
    12: 2.179,
    13: 2.160,
    14: 2.145,
    15: 2.131,
    16: 2.120,
    17: 2.110,
    18: 2.101,
    19: 2.093,
    20: 2.086,
    21: 2.080,
    22: 2.074,
    23: 2.069,
    24: 2.064,
    25: 2.060,
    26: 2.056,
    27: 2.052,
    28: 2.048,
    29: 2.045,
    30: 2.042,
}


def paired_ci95(diffs: list[float]) -> tuple[float, float]:
    """95% confidence interval of the mean of paired per-seed differences (Student's t, n-1 dof).

    Why: the seed spread answers "is every split won?", this answers "is the average gain non-zero?"; an
    interval that excludes 0 says the margin is not a seed accident even where single splits disagree."""
    if len(diffs) < 2:
        return float("nan"), float("nan")
    m, sd = _mean_std(diffs)
    half = _T975.get(len(diffs) - 1, 1.96) * sd / math.sqrt(len(diffs))
    return m - half, m + half


def _label(algo: str, scheme: str, n_schemes: int) -> str:
    return f"cmpl-{scheme}" if algo == "cmpl" and n_schemes > 1 else algo


def _paired(rows: list[dict], a: str, b: str) -> list[float]:
    """Per-seed differences a - b over the seeds where both ran."""
    by = {(r["algo"], r["seed"]): r["val_top1"] for r in rows if r["val_top1"] is not None}
    seeds = sorted({r["seed"] for r in rows})
    return [by[(a, s)] - by[(b, s)] for s in seeds if (a, s) in by and (b, s) in by]


def results_markdown(rows: list[dict], title: str, notes: list[str] | None = None) -> str:
    """Markdown summary: per-algorithm mean +- std, per-seed values, margins vs the seed spread."""
    algos = list(dict.fromkeys(r["algo"] for r in rows))
    seeds = sorted({r["seed"] for r in rows})
    by = {(r["algo"], r["seed"]): r for r in rows}
    out = [f"# {title}", ""]
    out += [f"- {n}" for n in (notes or [])]
    if notes:
        out.append("")
    head = (
        ["algo", "top-1 mean +- std"]
        + [f"seed {s}" for s in seeds]
        + ["top-5 mean", "mean-class mean", "aux top-1 mean", "mask f / a", "PL precision f / a", "min/run"]
    )
    out += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    stats = {}
    for a in algos:
        top1 = [by[(a, s)]["val_top1"] for s in seeds if (a, s) in by and by[(a, s)]["val_top1"] is not None]
        m, sd = _mean_std(top1)
        stats[a] = (m, sd)
        cells = [a, f"{m:.2f} +- {sd:.2f}"]
        for s in seeds:
            r = by.get((a, s))
            cells.append("-" if r is None else ("failed" if r["val_top1"] is None else f"{r['val_top1']:.2f}"))
        for key in ("val_top5", "mean_class", "aux_val_top1"):
            v, _ = _mean_std([by[(a, s)][key] for s in seeds if (a, s) in by and by[(a, s)][key] is not None])
            cells.append("-" if math.isnan(v) else f"{v:.2f}")
        for pair in (("mask_f", "mask_a"), ("pl_acc_f", "pl_acc_a")):  # last-epoch means, as fractions
            vs = [_mean_std([by[(a, s)].get(k) for s in seeds if (a, s) in by])[0] for k in pair]
            cells.append(" / ".join("-" if math.isnan(v) else f"{v:.2f}" for v in vs))
        mins, _ = _mean_std([by[(a, s)]["minutes"] for s in seeds if (a, s) in by])
        cells.append(f"{mins:.1f}")
        out.append("| " + " | ".join(cells) + " |")
    out.append("")
    out.append(
        "Margins (top-1 points). `seed spread` = the larger std of the two algorithms; a margin counts "
        "as real when it exceeds it (and, paired by seed, every per-seed difference has the same sign). "
        "`paired std` = the std of the per-seed differences (the split's difficulty cancels in them); "
        "`wins` = seeds where the first is ahead; `95% CI` = Student's t interval of the mean paired "
        "difference (excludes 0: the average gain is not a seed accident)."
    )
    out.append("")
    out += [
        "| margin | mean diff | per-seed diffs (paired) | paired std | wins | 95% CI | seed spread | > spread? |",
        "|---|---|---|---|---|---|---|---|",
    ]
    cmpl_rows = [a for a in algos if a.startswith("cmpl")]
    pairs = [("supervised", "floor")] + [(c, "fixmatch") for c in cmpl_rows] + [("fixmatch", "supervised")]
    pairs += [(c, "supervised") for c in cmpl_rows]
    pairs += [(a, a.split("[")[0]) for a in algos if "[" in a and not a.startswith("cmpl")]  # variant - its base
    pairs += [(c, "cmpl") for c in cmpl_rows if c != "cmpl"]  # another scheme or setting vs the paper's cross
    for a, b in pairs:
        if a not in stats or b not in stats:
            continue
        spread = max(stats[a][1], stats[b][1])
        per = _paired(rows, a, b)
        # over the seeds both ran (a difference of means over different seeds would mix in the splits' luck)
        diff = sum(per) / len(per) if per else stats[a][0] - stats[b][0]
        same_sign = bool(per) and (all(d > 0 for d in per) or all(d < 0 for d in per))
        if len(per) < 2:
            verdict = "n/a (needs >= 2 seeds)"
        else:
            verdict = "yes" if abs(diff) > spread and same_sign else "no"
        psd = _mean_std(per)[1] if len(per) >= 2 else float("nan")
        lo, hi = paired_ci95(per)
        ci = "-" if math.isnan(lo) else f"[{lo:+.2f}, {hi:+.2f}]"
        out.append(
            f"| {a} - {b} | {diff:+.2f} | {', '.join(f'{d:+.1f}' for d in per) or '-'} | "
            f"{'-' if math.isnan(psd) else f'{psd:.2f}'} | {sum(d > 0 for d in per)}/{len(per)} | {ci} | "
            f"{spread:.2f} | {verdict} |"
        )
    return "\n".join(out) + "\n"


def read_rows(path: str) -> list[dict]:
    """Rows of an earlier study's ``results.csv`` (numbers back to floats, empty cells to None)."""
    rows = []
    with open(path, newline="") as f:
        for r in csv.DictReader(f):
            missing = [k for k in ("algo", "seed", "val_top1") if k not in r]
            if missing:
                raise ValueError(f"{path}: not a results.csv of this script (no column {missing[0]!r})")
            row = {
                k: (float(r[k]) if r.get(k) not in (None, "") else None)
                for k in FIELDS
                if k not in ("algo", "seed", "error")
            }
            row.update(algo=r["algo"], seed=int(r["seed"]), error=r.get("error") or "")
            rows.append(row)
    return rows


def merge_rows(*groups: list[dict]) -> list[dict]:
    """Concatenate studies; a later row replaces an earlier one with the same (algo, seed)."""
    merged: dict[tuple, dict] = {}
    for rows in groups:
        for r in rows:
            merged.pop((r["algo"], r["seed"]), None)
            merged[(r["algo"], r["seed"])] = r
    return list(merged.values())


def write_outputs(out: Path, rows: list[dict], title: str, notes: list[str]) -> str:
    from cmpl_ray.train.plots import plot_comparison

    with open(out / "results.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=FIELDS)
        w.writeheader()
        for r in rows:
            w.writerow(
                {k: ("" if r.get(k) is None else (f"{r[k]:.4f}" if isinstance(r[k], float) else r[k])) for k in FIELDS}
            )
    md = results_markdown(rows, title, notes)
    (out / "results.md").write_text(md)
    table: dict[str, list[float]] = {}
    for r in rows:
        table.setdefault(r["algo"], [])
        if r["val_top1"] is not None:
            table[r["algo"]].append(r["val_top1"])
    plot_comparison(table, str(out / "comparison.png"), title)
    return md


def start_ray(num_cpus: int | None) -> None:
    """One local Ray for the whole study (connects to RAY_ADDRESS when set).

    With the dashboard on 127.0.0.1, as for Tune sweeps: Train V2's placement-group cleaner needs its State API
    to see that a finished run's controller is gone when runs follow each other in one Ray session."""
    from cmpl_ray.train.launch import ensure_ray

    ensure_ray(num_cpus, dashboard=True)


FLOOR_PRESET = "fewlabel-floor"
DATA_KEYS = ("data.root", "data.labeled_list", "data.unlabeled_list", "data.val_list", "data.classes_file")


def floor_config(overrides: list[str]):
    """The naive floor's config: its preset as shipped plus this run's data, seed and run keys only (the study's
    own ``--set``/``--config`` tune the recipe under test, not the floor; no flip, so no flip map)."""
    from cmpl_ray.config import load_config

    def run_key(o: str) -> bool:
        key = o.partition("=")[0]
        return key in DATA_KEYS or key == "train.seed" or key.startswith(("run.", "tracking."))

    return load_config(FLOOR_PRESET, None, [o for o in overrides if run_key(o)] + ["algo.name=supervised"])


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    d = p.add_argument_group("dataset (either --synth or --root/--train-list/--val-list)")
    d.add_argument(
        "--synth",
        action="store_true",
        help="generate the synthetic set under <out>/data first (reused if already there)",
    )
    d.add_argument("--root", help="dataset root (list paths are relative to it)")
    d.add_argument("--train-list", help="list of all training videos (split per seed into labeled/unlabeled)")
    d.add_argument("--val-list", help="validation list")
    d.add_argument(
        "--classes",
        default=None,
        help="with --synth: number of classes (default 8); otherwise: classes.txt "
        "(default: classes.txt beside --train-list)",
    )
    d.add_argument(
        "--per-class",
        type=int,
        default=None,
        help="--synth: training videos per class (default 48: 8 labeled + 40 unlabeled; --suite: 60)",
    )
    d.add_argument(
        "--val-per-class",
        type=int,
        default=None,
        help="--synth: validation videos per class (default 32: 256 videos on 8 classes, so one "
        "video is 0.4 points and evaluation noise stays well below the margins)",
    )
    d.add_argument("--synth-seed", type=int, default=0, help="--synth: generator seed (the data, not the runs)")
    d.add_argument(
        "--object-size",
        type=float,
        nargs=2,
        default=[0.20, 0.26],
        metavar=("LO", "HI"),
        help="--synth: object half-size range (default 0.20 0.26). At the demo's 0.11 0.16 the tiny "
        "CPU networks reach only 44%% top-1 with EVERY label, so the set is not label-bound and "
        "no semi-supervised method can show a gain; at 0.20 0.26 every label gives 73%%",
    )
    p.add_argument("--labels-per-class", type=int, default=8)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument(
        "--algos",
        nargs="+",
        default=["floor", "supervised", "fixmatch", "cmpl"],
        choices=["floor", "supervised", "fixmatch", "cmpl", "all-labels"],
        help="all-labels = supervised on EVERY training label: the ceiling the few-label rows aim at; "
        "floor = the naive 3D CNN supervised on the labeled split (preset fewlabel-floor, untuned: "
        "only the data keys are set), the number every few-label row must clear",
    )
    p.add_argument(
        "--runner",
        choices=["ray", "local"],
        default="ray",
        help="ray = cmpl-ray train (Ray Train + Ray Data + MLflow); local = the Ray-free runner "
        "(cmpl_ray.train.local: same decoder, loop and evaluation, no MLflow), for quick studies",
    )
    p.add_argument(
        "--suite",
        nargs="*",
        default=None,
        metavar="FAMILY",
        help="run the benchmark suite (cmpl_ray/data/suite.py): every family, or those named, each "
        "written under <out>/data/<family>; one table per family + <out>/summary.md",
    )
    p.add_argument(
        "--schemes",
        nargs="+",
        default=["cross"],
        choices=["cross", "self_first", "opposite_first", "maximum", "average"],
        help="CMPL pseudo-label schemes (Appendix A); more than one adds a cmpl-<scheme> row each",
    )
    p.add_argument(
        "--preset",
        default="fewlabel-cpu",
        help="recipe (default fewlabel-cpu: tau 0.9, lambda ramp, BN clean, EMA evaluation)",
    )
    p.add_argument("--config", default=None, help="YAML file applied after the preset")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="config override applied to every run (repeatable)",
    )
    p.add_argument("--out", default="outputs/compare")
    p.add_argument("--num-cpus", type=int, default=None, help="CPUs of the local Ray (default: all)")
    p.add_argument("--no-tracking", action="store_true", help="do not log the runs to MLflow")
    p.add_argument(
        "--merge",
        nargs="+",
        default=[],
        metavar="CSV",
        help="results.csv files of earlier studies (e.g. seeds run in another session) to include in "
        "the table; a run of this study replaces a merged row with the same algo and seed",
    )
    p.add_argument(
        "--table-only",
        action="store_true",
        help="train nothing: write results.md/csv/png into --out from the --merge files",
    )
    a = p.parse_args(argv)
    suite = a.suite is not None
    a.per_class = a.per_class or (60 if suite else 48)
    a.val_per_class = a.val_per_class if a.val_per_class is not None else (50 if suite else 32)
    if suite:
        if a.synth or a.root or a.table_only:
            p.error("--suite writes its own data: do not also pass --synth, --root or --table-only")
        return a
    if a.table_only:
        if not a.merge:
            p.error("--table-only needs --merge CSV [CSV ...]")
        return a
    if a.synth:
        if a.root or a.train_list or a.val_list:
            p.error("--synth generates its own data: do not also pass --root/--train-list/--val-list")
        try:
            a.num_classes = int(a.classes) if a.classes else 8
        except ValueError:
            p.error(f"--classes with --synth is a number of classes, got {a.classes!r}")
    elif not (a.root and a.train_list and a.val_list):
        p.error("give --synth, or all of --root, --train-list and --val-list")
    return a


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    if a.suite is not None:
        from compare_suite import run_suite

        return run_suite(a, main)
    merged = merge_rows(*[read_rows(c) for c in a.merge])
    if a.table_only:
        out = Path(a.out).resolve()
        out.mkdir(parents=True, exist_ok=True)
        seeds = sorted({r["seed"] for r in merged})
        md = write_outputs(
            out,
            merged,
            f"{a.labels_per_class} labels/class, seeds {' '.join(map(str, seeds))}",
            [f"merged from {', '.join(a.merge)}"],
        )
        print(md, flush=True)
        return 0
    from cmpl_ray.config import load_config
    from cmpl_ray.data.lists import read_list, split_labeled, write_list
    from cmpl_ray.train.launch import run_training

    out = Path(a.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    if a.synth:
        from cmpl_ray.data.synth import make_synthetic_dataset

        root = out / "data"
        if not (root / "train.txt").exists():
            t0 = time.perf_counter()
            make_synthetic_dataset(
                str(root),
                num_classes=a.num_classes,
                per_class=a.per_class,
                seed=a.synth_seed,
                val_per_class=a.val_per_class,
                object_size=tuple(a.object_size),
            )
            print(f"[compare] synthetic set written to {root} in {time.perf_counter() - t0:.1f} s", flush=True)
        root, train_list, val_list, classes = (
            str(root),
            str(root / "train.txt"),
            str(root / "val.txt"),
            str(root / "classes.txt"),
        )
    else:
        root, train_list, val_list = a.root, a.train_list, a.val_list
        classes = a.classes or os.path.join(os.path.dirname(train_list) or ".", "classes.txt")
    items = read_list(train_list)

    # validate the whole grid's configs before spending minutes on the first run
    runs = []
    for seed in a.seeds:
        for algo in a.algos:
            for scheme in a.schemes if algo == "cmpl" else ["-"]:
                runs.append((seed, algo, scheme))
    stamp = time.strftime("%Y%m%d-%H%M%S")
    if a.runner == "ray":
        start_ray(a.num_cpus)
    rows: list[dict] = []
    all_seeds = sorted(set(a.seeds) | {r["seed"] for r in merged})
    title = (
        f"{Path(root).name}: {a.labels_per_class} labels/class, preset {a.preset}, "
        f"seeds {' '.join(map(str, all_seeds))}"
    )
    notes = [
        f"preset `{a.preset}`"
        + (f" + `{a.config}`" if a.config else "")
        + (f", overrides `{' '.join(a.overrides)}`" if a.overrides else ""),
        f"data: root `{root}`, train `{train_list}`, val `{val_list}`; "
        f"{a.labels_per_class} labeled videos per class (split per seed)",
    ] + ([f"rows merged from {', '.join(a.merge)}"] if a.merge else [])
    t_all = time.perf_counter()
    for seed, algo, scheme in runs:
        split_dir = out / "splits" / f"s{seed}"
        lab_path, unl_path = split_dir / "labeled.txt", split_dir / "unlabeled.txt"
        if algo == "all-labels":
            split_dir = out / "splits" / "all"
            lab_path, unl_path = split_dir / "labeled.txt", split_dir / "unlabeled.txt"
        if not lab_path.exists():
            labeled, unlabeled = (
                (items, []) if algo == "all-labels" else split_labeled(items, per_class=a.labels_per_class, seed=seed)
            )
            write_list(str(lab_path), labeled)
            write_list(str(unl_path), unlabeled)
        label = _label(algo, scheme, len(a.schemes))
        name = f"cmp-{stamp}-{label}-s{seed}"  # fresh name: never resumes an earlier study's checkpoint
        overrides = (
            [
                f"data.root={root}",
                f"data.labeled_list={lab_path}",
                f"data.unlabeled_list={unl_path}",
                f"data.val_list={val_list}",
                f"data.classes_file={classes}",
            ]
            + list(a.overrides)
            + [
                f"algo.name={'supervised' if algo in ('all-labels', 'floor') else algo}",
                f"train.seed={seed}",
                f"run.name={name}",
                f"run.output_dir={out / 'runs' / f'{label}-s{seed}'}",
                f"run.storage_path={out / 'ray_results'}",
                "run.resume=",
            ]
        )
        if algo == "cmpl":
            overrides.append(f"algo.scheme={scheme}")
        if a.no_tracking or a.runner == "local":
            overrides.append("tracking.enabled=false")
        cfg = floor_config(overrides) if algo == "floor" else load_config(a.preset, a.config, overrides)
        print(f"[compare] ({len(rows) + 1}/{len(runs)}) {label} seed {seed}", flush=True)
        t0 = time.perf_counter()
        row = {k: None for k in FIELDS} | {"algo": label, "seed": seed, "error": ""}
        try:
            if a.runner == "local":
                from cmpl_ray.train.local import run_local

                m = run_local(cfg, loader_workers=1, threads=1, log=None)
            else:
                m = run_training(cfg, extra_tags={"cmpl.study": f"compare-{stamp}", "cmpl.algo_label": label})
            row.update(
                val_top1=float(m["val_top1"]),
                val_top5=float(m.get("val_top5", float("nan"))),
                mean_class=float(m.get("val_mean_class_acc", float("nan"))),
                aux_val_top1=float(m["aux_val_top1"]) if "aux_val_top1" in m else None,
                **{k: float(m[src]) for k, src in PL_STATS.items() if src in m},
            )
        except Exception as e:  # one failed run must not lose the others
            traceback.print_exc()
            row["error"] = f"{type(e).__name__}: {e}"[:300]
        row["minutes"] = (time.perf_counter() - t0) / 60
        rows.append(row)
        write_outputs(out, merge_rows(merged, rows), title, notes)  # partial results survive an interruption
    md = write_outputs(out, merge_rows(merged, rows), title, notes)
    print(md, flush=True)
    print(
        f"[compare] {len(rows)} runs in {(time.perf_counter() - t_all) / 60:.1f} min; wrote {out}/results.csv, "
        f"results.md, comparison.png",
        flush=True,
    )
    return 0 if all(r["val_top1"] is not None for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
