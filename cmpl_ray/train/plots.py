"""Figures of the CMPL paper, rebuilt from our own logs and saved as PNG artifacts.

* :func:`plot_pseudo_label_ratio` -- Fig. 2: how many unlabeled clips receive a CORRECT
  pseudo-label over training. This is the paper's evidence that cross-model pseudo-labels are
  both more numerous and better than self-pseudo-labels (FixMatch); the mask rate (share of
  clips above the confidence threshold, right or wrong) is drawn dashed next to it so quantity
  and quality can be told apart.
* :func:`plot_class_gap` -- Fig. 1: per-class accuracy gap between the auxiliary (small) and the
  primary (large) network, the motivation for cross-model supervision: the networks are good at
  different classes.
* :func:`plot_comparison` -- mean +- std top-1 per algorithm over seeds (compare script).

The Agg backend is forced because training workers and CI have no display. Each function
returns the saved path so callers can hand it straight to ``Tracker.log_artifact``.
"""

from __future__ import annotations

import math
import os

import matplotlib

matplotlib.use("Agg")  # headless: workers / CI have no display
import matplotlib.pyplot as plt  # noqa: E402

# key -> (label, colour, linestyle)
_PL_SERIES = {
    "pl_correct_ratio_f": ("primary F (learns from A): correct PL", "tab:blue", "-"),
    "pl_correct_ratio_a": ("auxiliary A (learns from F): correct PL", "tab:orange", "-"),
    "mask_rate_f": ("primary F: mask rate", "tab:blue", "--"),
    "mask_rate_a": ("auxiliary A: mask rate", "tab:orange", "--"),
}


def _save(fig, path: str) -> str:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)  # figures are never shown: free them (long runs call this every epoch)
    return path


def _finite(v) -> bool:
    try:
        return math.isfinite(float(v))
    except (TypeError, ValueError):
        return False


def plot_pseudo_label_ratio(history: list[dict], path: str) -> str:
    """Fig. 2 from history entries ``{"epoch" (or "step"), "pl_correct_ratio_f", ...}``.

    Entries missing a key (e.g. evaluation-only rows) are skipped per series, not dropped.
    """
    xkey = "epoch" if any("epoch" in h for h in history) else "step"
    fig, ax = plt.subplots(figsize=(6, 4))
    drawn = 0
    for key, (label, color, ls) in _PL_SERIES.items():
        pts = sorted((h[xkey], float(h[key])) for h in history if xkey in h and key in h and _finite(h[key]))
        if not pts:
            continue
        xs, ys = zip(*pts)
        ax.plot(xs, ys, ls, color=color, label=label, marker="o" if len(xs) < 30 else None, markersize=3)
        drawn += 1
    ax.set_xlabel(xkey)
    ax.set_ylabel("ratio of unlabeled clips")
    ax.set_ylim(0.0, 1.0)
    ax.set_title("Ratio of correct pseudo-labels (paper Fig. 2)")
    ax.grid(alpha=0.3)
    if drawn:
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, "no pseudo-label statistics logged", ha="center", va="center", transform=ax.transAxes)
    return _save(fig, path)


def plot_class_gap(acc_primary: list[float], acc_aux: list[float], class_names: list[str], path: str) -> str:
    """Fig. 1: per-class ``acc_aux - acc_primary``, sorted; positive (aux better) in green."""
    if not (len(acc_primary) == len(acc_aux) == len(class_names)):
        raise ValueError(f"length mismatch: {len(acc_primary)} primary, {len(acc_aux)} aux, {len(class_names)} names")
    gaps = sorted(((a - p, n) for p, a, n in zip(acc_primary, acc_aux, class_names)), key=lambda t: t[0], reverse=True)
    n = len(gaps)
    fig, ax = plt.subplots(figsize=(max(6.0, min(0.25 * n, 24.0)), 4))
    vals = [g for g, _ in gaps]
    ax.bar(range(n), vals, color=["tab:green" if g >= 0 else "tab:red" for g in vals], width=0.8)
    ax.axhline(0.0, color="black", linewidth=0.8)
    if n <= 50:  # beyond that the names are unreadable anyway
        ax.set_xticks(range(n))
        ax.set_xticklabels([nm for _, nm in gaps], rotation=90, fontsize=7)
    else:
        ax.set_xlabel(f"{n} classes, sorted by gap")
    ax.set_ylabel("Acc_aux - Acc_primary")
    ax.set_title("Per-class accuracy gap, auxiliary vs primary (paper Fig. 1)")
    return _save(fig, path)


def plot_comparison(table: dict[str, list[float]], path: str, title: str = "") -> str:
    """Mean +- std (population std, 0 for one seed) of top-1 per algorithm, value on each bar."""
    names = list(table)
    means, stds = [], []
    for k in names:
        xs = [float(x) for x in table[k] if _finite(x)]
        m = sum(xs) / len(xs) if xs else 0.0
        means.append(m)
        stds.append(math.sqrt(sum((x - m) ** 2 for x in xs) / len(xs)) if xs else 0.0)
    fig, ax = plt.subplots(figsize=(max(4.0, 1.2 * len(names) + 2), 4))
    bars = ax.bar(range(len(names)), means, yerr=stds, capsize=4, color=[f"C{i % 10}" for i in range(len(names))])
    for b, m, s in zip(bars, means, stds):
        ax.annotate(
            f"{m:.3g}\u00b1{s:.2g}",
            (b.get_x() + b.get_width() / 2, m + s),
            ha="center",
            va="bottom",
            fontsize=8,
            xytext=(0, 2),
            textcoords="offset points",
        )
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(names, rotation=20 if len(names) > 4 else 0)
    ax.set_ylabel("top-1 accuracy")
    ax.set_title(title or "Top-1 by algorithm (mean \u00b1 std over seeds)")
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)
