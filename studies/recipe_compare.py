"""Seed-paired comparison of Ray-free recipe-study runs (``studies/recipe_study.py --compare TAG ...``).

Why: the issue's question is not "which run scored highest" but "is the margin more than a split's luck". The
table is the one ``compare_algorithms.py`` prints for the Ray trainer (mean +- std, per-seed values, paired
differences with their Student-t 95% interval), fed from ``results.jsonl``; below it, per class, the
validation top-1 of every method and, for the pseudo-labelling ones, the last round's mask rate and precision of
the labels each network learned from (the "why" when a margin is not there).
"""

from __future__ import annotations

import math
import os

from compare_algorithms import _mean_std, results_markdown

# overrides every run of a study shares (they describe the study, not the method)
COMMON = ("algo.unlabeled_ratio",)


def method_label(rec: dict, common: tuple[str, ...] = COMMON) -> str:
    """supervised / fixmatch / cmpl, with the scheme (cmpl-maximum) and any other method override appended;
    overrides of a ``common`` key describe the whole study (e.g. ``model.primary_width`` for a wider-primary
    study) and are left out, so its runs pair up as supervised / fixmatch / cmpl."""
    label = rec["algo"]
    extra = []
    for o in rec.get("overrides", []):
        key, _, val = o.partition("=")
        if key == "algo.scheme" and label == "cmpl":
            label = f"cmpl-{val}"
        elif key not in common:
            extra.append(o)
    return label + (f"[{','.join(extra)}]" if extra else "")


def study_rows(
    records: list[dict], family: str, labels: str, tags: list[str], common: tuple[str, ...] = COMMON
) -> list[dict]:
    """compare_algorithms rows of the selected runs; a later run replaces an earlier one of the same method+seed."""
    rows: dict[tuple, dict] = {}
    for r in records:
        if r.get("family") != family or str(r.get("labels")) != str(labels) or r.get("tag") not in tags:
            continue
        label = method_label(r, common)
        rows.pop((label, r["seed"]), None)
        rows[(label, r["seed"])] = {
            "algo": label,
            "seed": r["seed"],
            "val_top1": r.get("val_top1"),
            "val_top5": r.get("val_top5"),
            "mean_class": r.get("val_mean_class_acc"),
            "aux_val_top1": r.get("aux_val_top1"),
            "mask_f": r.get("train_mask_rate_f"),
            "pl_acc_f": r.get("train_pl_acc_f"),
            "mask_a": r.get("train_mask_rate_a"),
            "pl_acc_a": r.get("train_pl_acc_a"),
            "minutes": r["seconds"] / 60,
            "error": "",
            "_rec": r,
        }
    order = {"supervised": 0, "fixmatch": 1}
    return sorted(rows.values(), key=lambda x: (order.get(x["algo"], 2), x["algo"], x["seed"]))


def _fmt(xs: list[float]) -> str:
    m, _ = _mean_std([x for x in xs if x is not None and not (isinstance(x, float) and math.isnan(x))])
    return "-" if math.isnan(m) else f"{m:.0f}"


def per_class_markdown(rows: list[dict], class_names: list[str]) -> str:
    """Per class, mean over seeds: top-1 of each method (primary; auxiliary for CMPL) and, per pseudo-labelling
    network, the last round's mask rate and precision (by pseudo-label class) in %."""
    k = len(class_names)
    head = ["method", "what"] + class_names
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    methods = list(dict.fromkeys(r["algo"] for r in rows))
    for m in methods:
        recs = [r["_rec"] for r in rows if r["algo"] == m]
        lines = [("top-1", "per_class", None, None)]
        if m.startswith("cmpl"):
            lines.append(("aux top-1", "aux_per_class", None, None))
        for net in ("f", "a"):
            if any(f"pl_per_class_{net}" in (rec.get("history") or [{}])[-1] for rec in recs):
                lines += [
                    (f"mask {net.upper()}", None, net, "mask_rate"),
                    (f"prec. {net.upper()}", None, net, "precision"),
                ]
        for what, key, net, stat in lines:
            cells = []
            for c in range(k):
                if key:
                    vals = [100 * rec[key][c] for rec in recs if rec.get(key) and len(rec[key]) == k]
                else:
                    vals = [
                        rec["history"][-1][f"pl_per_class_{net}"][stat][c]
                        for rec in recs
                        if f"pl_per_class_{net}" in rec["history"][-1]
                    ]
                cells.append(_fmt(vals))
            out.append(f"| {m} | {what} | " + " | ".join(cells) + " |")
    return "\n".join(out) + "\n"


def compare_markdown(
    records: list[dict], family: str, labels: str, tags: list[str], data: str = "", common: tuple[str, ...] = COMMON
) -> str:
    rows = study_rows(records, family, labels, tags, common)
    if not rows:
        return f"# {family}, {labels} labels/class: no runs with tags {tags}\n"
    seeds = sorted({r["seed"] for r in rows})
    notes = [
        f"tags {', '.join(tags)}; seeds {seeds}; Ray-free runner (studies/recipe_study.py)",
        "mask / PL precision: the last round's means, as fractions; F = labels the primary learns from",
    ]
    md = results_markdown(rows, f"{family}, {labels} labels/class", notes)
    names_path = os.path.join(data, family, "classes.txt") if data else ""
    first = rows[0]["_rec"].get("per_class") or []
    names = (
        [n.strip() for n in open(names_path) if n.strip()]
        if names_path and os.path.exists(names_path)
        else [f"class {i}" for i in range(len(first))]
    )
    if names and len(names) == len(first):
        md += "\nPer class, mean over seeds (%):\n\n" + per_class_markdown(rows, names)
    return md


def summary_markdown(
    records: list[dict],
    families: list[str],
    labels: str,
    tags: list[str],
    cmpl: str = "cmpl",
    common: tuple[str, ...] = COMMON,
) -> str:
    """``--compare TAGS --summary``: the suite summary (one row per family, paired margins, how many tuned
    families each margin holds on) from the Ray-free runs; the all-labels column is each family's latest
    supervised run with every label and the same preset (any tag). ``cmpl`` names the method shown in the CMPL
    columns: the paper's ``cross`` scheme by default, or a variant such as ``cmpl-maximum`` (its runs only)."""
    from compare_suite import summary_table

    rows = {}
    for fam in families:
        fam_rows = [
            dict(r, algo="cmpl") if r["algo"] == cmpl else r
            for r in study_rows(records, fam, labels, tags, common)
            if r["algo"] in ("supervised", "fixmatch", cmpl)
        ]
        presets = {r["_rec"].get("preset") for r in fam_rows}
        # the ceiling shares the study's own overrides (e.g. model.primary_width=2), and only those
        study = sorted(
            {
                o
                for r in fam_rows
                for o in r["_rec"].get("overrides", [])
                if o.partition("=")[0] in common and o.partition("=")[0] not in COMMON
            }
        )
        full = [
            r
            for r in records
            if r.get("family") == fam
            and str(r.get("labels")) == "all"
            and r.get("algo") == "supervised"
            and sorted(r.get("overrides") or []) == study
            and r.get("preset") in presets
        ]
        if full:
            fam_rows.append({"algo": "all-labels", "seed": full[-1]["seed"], "val_top1": full[-1].get("val_top1")})
        floor = {
            r["seed"]: r
            for r in records
            if r.get("family") == fam
            and str(r.get("labels")) == str(labels)
            and r.get("preset") == "fewlabel-floor"
            and r.get("algo") == "supervised"
        }  # latest per split
        fam_rows += [
            {"algo": "floor", "seed": seed, "val_top1": r.get("val_top1")} for seed, r in sorted(floor.items())
        ]
        if fam_rows:
            rows[fam] = fam_rows
    seeds = sorted({r["seed"] for rs in rows.values() for r in rs if r["algo"] != "all-labels"})
    title = f"Ray-free runs, {labels} labels/class, tags {', '.join(tags)}, seeds {seeds}" + (
        "" if cmpl == "cmpl" else f"; CMPL = {cmpl}"
    )
    keys = "".join(f" --study-key {k}" for k in common if k not in COMMON)
    return summary_table(
        rows,
        families,
        title,
        details=f"`recipe_study.py --compare {' '.join(tags)} --labels {labels}{keys}` (without --summary)",
    )
