"""``compare_algorithms.py --suite``: the algorithm comparison over every family of the benchmark suite.

Why a suite: a recipe tuned to one synthetic set stays near chance on the next one; the suite's families differ
in what carries the class, resolution, clip length, background, camera motion and distractors, and one family
(``heldout``) is never used while choosing the recipe. Each family gets its own ``compare_algorithms`` study
(``<out>/<family>/results.{md,csv}``); this module writes ``<out>/summary.md``: one row per family with the
all-labels ceiling, each algorithm's mean +- std and the paired per-seed margins with their 95% interval,
then how many tuned families each margin holds on, the held-out family reported on its own line.

    python studies/compare_algorithms.py --suite --runner local --seeds 0 1 2 --labels-per-class 10 \\
        --algos all-labels supervised fixmatch cmpl --preset suite-cpu --out outputs/suite
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from pathlib import Path


def _mean(xs):
    xs = [x for x in xs if x is not None and math.isfinite(x)]
    return sum(xs) / len(xs) if xs else float("nan")


def family_argv(a, fam: str, root: Path, out: Path) -> list[str]:
    """The per-family ``compare_algorithms`` command line: the suite's options + the family's data."""
    import json

    info = json.loads((root / "suite.json").read_text())
    argv = [
        "--root",
        str(root),
        "--train-list",
        str(root / "train.txt"),
        "--val-list",
        str(root / "val.txt"),
        "--classes",
        str(root / "classes.txt"),
        "--labels-per-class",
        str(a.labels_per_class),
        "--seeds",
        *map(str, a.seeds),
        "--algos",
        *a.algos,
        "--schemes",
        *a.schemes,
        "--preset",
        a.preset,
        "--out",
        str(out / fam),
        "--runner",
        a.runner,
    ]
    for flag, val in (("--config", a.config), ("--num-cpus", a.num_cpus)):
        if val is not None:
            argv += [flag, str(val)]
    if a.no_tracking:
        argv.append("--no-tracking")
    sets = ([f"data.flip_label_map={info['flip_label_map']}"] if info.get("flip_label_map") else []) + a.overrides
    for s in sets:
        argv += ["--set", s]
    return argv


def summary_markdown(out: Path, families: list[str]) -> str:
    """One row per family from each ``<out>/<family>/results.csv``; margins paired by seed."""
    from compare_algorithms import read_rows

    rows = {fam: read_rows(str(out / fam / "results.csv")) for fam in families if (out / fam / "results.csv").exists()}
    return summary_table(rows, families)


def summary_table(
    rows_by_family: dict[str, list[dict]], families: list[str], title: str = "", details: str = "`<family>/results.md`"
) -> str:
    """The suite summary from per-family rows (``algo``, ``seed``, ``val_top1``, ...); a family without rows is
    "not run". Shared by ``--suite`` (CSV rows) and ``recipe_study.py --compare --summary`` (Ray-free runs)."""
    from compare_algorithms import _mean_std, _paired, paired_ci95

    from cmpl_ray.data.suite import FAMILIES

    lines = [
        f"# {title or 'Benchmark suite: algorithm comparison'}",
        "",
        "Top-1 (%) mean over seeds (std); margins are paired per-seed differences, mean [95% CI]. "
        f"Per-family tables (per-seed values, pseudo-label mask rate and precision per network): {details}. "
        "Last column: precision of the pseudo-labels the primary learns from "
        "(last round, %), FixMatch / CMPL.",
        "",
        "| family | held out | classes | seeds | all labels | naive floor | supervised | FixMatch | CMPL | "
        "CMPL aux | sup - floor | FixMatch - sup | CMPL - FixMatch | CMPL - sup | PL precision F |",
        "|" + "---|" * 15,
    ]
    wins: dict[str, list[tuple[str, float]]] = {
        "supervised-floor": [],
        "fixmatch-supervised": [],
        "cmpl-fixmatch": [],
        "cmpl-supervised": [],
    }
    for fam in families:
        if fam not in rows_by_family:
            lines.append(f"| {fam} | {'yes' if FAMILIES[fam].held_out else 'no'} | - | - | not run |" + " |" * 10)
            continue
        rows = [r for r in rows_by_family[fam] if r["val_top1"] is not None]

        def stats(algo: str, key: str = "val_top1", rows=rows) -> tuple[float, float]:
            return _mean_std([r[key] for r in rows if r["algo"] == algo and r.get(key) is not None])

        def cell(algo: str, key: str = "val_top1") -> str:
            m, sd = stats(algo, key)
            return "-" if math.isnan(m) else f"{m:.1f} ({sd:.1f})"

        margins = []
        for a, b in (("supervised", "floor"), ("fixmatch", "supervised"), ("cmpl", "fixmatch"), ("cmpl", "supervised")):
            d = _paired(rows, a, b)
            if not d:
                margins.append("-")
                continue
            lo, hi = paired_ci95(d)
            m = _mean(d)
            wins[f"{a}-{b}"].append((fam, m))
            margins.append(
                f"{m:+.1f} ({sum(x > 0 for x in d)}/{len(d)})" + ("" if math.isnan(lo) else f" [{lo:+.1f}, {hi:+.1f}]")
            )
        prec = [stats(a, "pl_acc_f")[0] for a in ("fixmatch", "cmpl")]  # fractions
        prec = ["-" if math.isnan(p) else f"{100 * p:.1f}" for p in prec]
        seeds = len({r["seed"] for r in rows if r["algo"] != "all-labels"})
        lines.append(
            f"| {fam} | {'yes' if FAMILIES[fam].held_out else 'no'} | {len(FAMILIES[fam].classes)} | "
            f"{seeds} | {cell('all-labels')} | {cell('floor')} | {cell('supervised')} | {cell('fixmatch')} | "
            f"{cell('cmpl')} | "
            f"{cell('cmpl', 'aux_val_top1')} | " + " | ".join(margins) + f" | {' / '.join(prec)} |"
        )
    lines.append("")
    for key, vals in wins.items():
        tuned = [(f, m) for f, m in vals if not FAMILIES[f].held_out]
        held = [(f, m) for f, m in vals if FAMILIES[f].held_out]
        a, b = key.split("-")
        ties = sum(abs(m) < 1e-9 for _, m in tuned)
        lines.append(
            f"- {a} > {b} on {sum(m > 0 for _, m in tuned)}/{len(tuned)} tuned families"
            + (f" ({ties} tied)" if ties else "")
            + "".join(f"; held-out `{f}`: {m:+.1f}" for f, m in held)
        )
    return "\n".join(lines) + "\n"


def run_suite(a, compare_main: Callable[[list[str]], int]) -> int:
    from cmpl_ray.data.suite import FAMILIES, write_family

    families = a.suite or list(FAMILIES)
    unknown = [f for f in families if f not in FAMILIES]
    if unknown:
        raise SystemExit(f"compare_algorithms --suite: unknown family {unknown[0]!r}; families: {list(FAMILIES)}")
    out = Path(a.out).resolve()
    rc = 0
    for fam in families:
        root = out / "data" / fam
        if not (root / "suite.json").exists():
            info = write_family(str(root), fam, a.per_class, a.val_per_class, seed=a.synth_seed)
            print(f"[suite] {fam}: wrote {info['train']} + {info['val']} videos in {info['seconds']} s", flush=True)
        print(f"[suite] ===== {fam}{' (held out)' if FAMILIES[fam].held_out else ''} =====", flush=True)
        rc |= compare_main(family_argv(a, fam, root, out))
        (out / "summary.md").write_text(summary_markdown(out, families))  # partial results survive a stop
    md = summary_markdown(out, families)
    (out / "summary.md").write_text(md)
    print(md, flush=True)
    print(f"[suite] wrote {out}/summary.md and {out}/<family>/results.md", flush=True)
    return rc


if __name__ == "__main__":  # also runnable directly: same flags as compare_algorithms.py --suite
    import sys

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from compare_algorithms import main

    sys.exit(main(["--suite", *sys.argv[1:]]))
