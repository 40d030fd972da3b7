"""The comparison table of scripts/compare_algorithms.py: means, spreads and margin verdicts."""

import importlib.util
from pathlib import Path

spec = importlib.util.spec_from_file_location("compare_algorithms",
                                              Path(__file__).parents[1] / "scripts" / "compare_algorithms.py")
compare = importlib.util.module_from_spec(spec)
spec.loader.exec_module(compare)


def row(algo, seed, top1):
    return {"algo": algo, "seed": seed, "val_top1": top1, "val_top5": 90.0, "mean_class": top1,
            "aux_val_top1": 30.0 if algo == "cmpl" else None, "minutes": 2.0}


def test_margins_count_only_beyond_the_seed_spread():
    rows = [row("supervised", s, v) for s, v in zip((0, 1, 2), (10.0, 11.0, 12.0))]
    rows += [row("fixmatch", s, v) for s, v in zip((0, 1, 2), (20.0, 21.0, 22.0))]
    rows += [row("cmpl", s, v) for s, v in zip((0, 1, 2), (21.0, 19.0, 23.0))]
    md = compare.results_markdown(rows, "t")
    assert "| fixmatch | 21.00 +- 1.00 | 20.00 | 21.00 | 22.00 |" in md
    assert "| fixmatch - supervised | +10.00 | +10.0, +10.0, +10.0 | 1.00 | yes |" in md
    assert "| cmpl - fixmatch | +0.00 | +1.0, -2.0, +1.0 | 2.00 | no |" in md


def test_single_seed_has_no_verdict():
    md = compare.results_markdown([row("fixmatch", 0, 20.0), row("supervised", 0, 10.0)], "t")
    assert "n/a (needs >= 2 seeds)" in md
