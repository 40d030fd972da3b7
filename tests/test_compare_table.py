"""The comparison table of studies/compare_algorithms.py: means, spreads and margin verdicts."""

import importlib.util
from pathlib import Path

import pytest

spec = importlib.util.spec_from_file_location(
    "compare_algorithms", Path(__file__).parents[1] / "studies" / "compare_algorithms.py"
)
compare = importlib.util.module_from_spec(spec)
spec.loader.exec_module(compare)


def row(algo, seed, top1):
    return {
        "algo": algo,
        "seed": seed,
        "val_top1": top1,
        "val_top5": 90.0,
        "mean_class": top1,
        "aux_val_top1": 30.0 if algo == "cmpl" else None,
        "minutes": 2.0,
    }


def test_margins_count_only_beyond_the_seed_spread():
    rows = [row("supervised", s, v) for s, v in zip((0, 1, 2), (10.0, 11.0, 12.0))]
    rows += [row("fixmatch", s, v) for s, v in zip((0, 1, 2), (20.0, 21.0, 22.0))]
    rows += [row("cmpl", s, v) for s, v in zip((0, 1, 2), (21.0, 19.0, 23.0))]
    md = compare.results_markdown(rows, "t")
    assert "| fixmatch | 21.00 +- 1.00 | 20.00 | 21.00 | 22.00 |" in md
    assert "| fixmatch - supervised | +10.00 | +10.0, +10.0, +10.0 | 0.00 | 3/3 | [+10.00, +10.00] | 1.00 | yes |" in md
    # mean 0, sd sqrt(3), t(2) 4.303: half-width 4.303 * sqrt(3) / sqrt(3) = 4.303
    assert "| cmpl - fixmatch | +0.00 | +1.0, -2.0, +1.0 | 1.73 | 2/3 | [-4.30, +4.30] | 2.00 | no |" in md
    assert "| cmpl - supervised | +10.00 | +11.0, +8.0, +11.0 | 1.73 | 3/3 | [+5.70, +14.30] | 2.00 | yes |" in md


def test_paired_ci95_hand_computed():
    lo, hi = compare.paired_ci95([1.0, 2.0, 3.0])  # mean 2, sd 1, se 1/sqrt(3), t(2) 4.303
    assert lo == pytest.approx(2 - 4.303 / 3**0.5) and hi == pytest.approx(2 + 4.303 / 3**0.5)
    lo, hi = compare.paired_ci95([4.0] * 40)  # zero spread, normal quantile beyond 30 dof
    assert (lo, hi) == (4.0, 4.0)
    assert all(x != x for x in compare.paired_ci95([5.0]))  # one seed: no interval (NaN)


def test_single_seed_has_no_verdict():
    md = compare.results_markdown([row("fixmatch", 0, 20.0), row("supervised", 0, 10.0)], "t")
    assert "n/a (needs >= 2 seeds)" in md


def test_merge_earlier_studies_into_one_table(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    first = [row("supervised", s, 10.0 + s) for s in (0, 1)] + [row("fixmatch", s, 20.0 + s) for s in (0, 1)]
    compare.write_outputs(a, first, "a", [])
    back = compare.read_rows(str(a / "results.csv"))
    assert back[0]["algo"] == "supervised" and back[0]["seed"] == 0 and back[0]["val_top1"] == 10.0
    assert back[0]["aux_val_top1"] is None and back[0]["minutes"] == 2.0
    # a later study: a new seed, and a re-run of (fixmatch, 1) that replaces the earlier row
    compare.write_outputs(b, [row("supervised", 2, 12.0), row("fixmatch", 2, 22.0), row("fixmatch", 1, 30.0)], "b", [])
    out = tmp_path / "all"
    assert (
        compare.main(["--table-only", "--merge", str(a / "results.csv"), str(b / "results.csv"), "--out", str(out)])
        == 0
    )
    md = (out / "results.md").read_text()
    assert "| fixmatch | 24.00 +- 5.29 | 20.00 | 30.00 | 22.00 |" in md
    assert "| fixmatch - supervised | +13.00 | +10.0, +19.0, +10.0 | 5.20 |" in md
    assert (out / "comparison.png").stat().st_size > 0
    assert len(compare.read_rows(str(out / "results.csv"))) == 6


def test_merge_refuses_a_foreign_csv(tmp_path):
    (tmp_path / "x.csv").write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="not a results.csv"):
        compare.read_rows(str(tmp_path / "x.csv"))
    with pytest.raises(SystemExit):
        compare.parse_args(["--table-only"])


def test_suite_summary_rows_margins_and_held_out_line(tmp_path):
    """summary.md of ``--suite``: per-family means, paired margins with CI, wins counted on tuned families only."""
    import csv
    import sys

    sys.path.insert(0, str(Path(__file__).parents[1] / "studies"))
    import compare_suite

    vals = {
        "direction": {
            "all-labels": (90, 92, 91),
            "floor": (45, 40, 41),
            "supervised": (40, 42, 44),
            "fixmatch": (50, 51, 55),
            "cmpl": (55, 57, 58),
        },
        "heldout": {
            "all-labels": (70, 71, 72),
            "supervised": (30, 31, 32),
            "fixmatch": (29, 30, 31),
            "cmpl": (33, 33, 33),
        },
    }
    for fam, algos in vals.items():
        (tmp_path / fam).mkdir()
        with open(tmp_path / fam / "results.csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=compare.FIELDS)
            w.writeheader()
            for algo, xs in algos.items():
                for seed, x in enumerate(xs):
                    w.writerow(
                        {
                            "algo": algo,
                            "seed": seed,
                            "val_top1": x,
                            "minutes": 1.0,
                            "aux_val_top1": 20.0 if algo == "cmpl" else "",
                        }
                    )
    md = compare_suite.summary_markdown(tmp_path, ["direction", "heldout", "speed"])
    assert (
        "| direction | no | 6 | 3 | 91.0 (1.0) | 42.0 (2.6) | 42.0 (2.0) | 52.0 (2.6) | 56.7 (1.5) | 20.0 (0.0) |" in md
    )
    assert "| +0.0 (2/3) [" in md  # supervised - floor: -5, +2, +3 (the naive floor column, paired by split)
    assert "- supervised > floor on 0/1 tuned families (1 tied)" in md  # heldout ran no floor: no margin
    assert "+10.0 (3/3) [" in md and "| heldout | yes |" in md and "| speed | no | - | - | not run |" in md
    assert "- fixmatch > supervised on 1/1 tuned families; held-out `heldout`: -1.0" in md
    assert "- cmpl > fixmatch on 1/1 tuned families; held-out `heldout`: +3.0" in md


def _rec(algo, seed, top1, tag="study", overrides=(), pl=None):
    """One results.jsonl line of studies/recipe_study.py (only what the comparison reads)."""
    hist = {"val_top1": top1}
    if pl is not None:
        hist["pl_per_class_f"] = {"mask_rate": pl[0], "precision": pl[1], "recall": pl[1]}
    return {
        "tag": tag,
        "family": "fam",
        "labels": "10",
        "algo": algo,
        "seed": seed,
        "seconds": 60.0,
        "overrides": ["algo.unlabeled_ratio=1", *overrides],
        "val_top1": top1,
        "per_class": [top1 / 100, 0.5],
        "history": [hist],
    }


def test_recipe_study_compare_pairs_seeds_and_averages_classes(tmp_path):
    """``recipe_study.py --compare``: methods named by algo + scheme, paired by seed, other tags and
    families ignored, a re-run replaces the earlier run, per-class means over seeds."""
    import sys

    sys.path.insert(0, str(Path(__file__).parents[1] / "studies"))
    import recipe_compare

    recs = [
        _rec("supervised", 0, 10.0),
        _rec("supervised", 1, 20.0),
        _rec("fixmatch", 0, 12.0, pl=([40.0, 60.0], [50.0, 70.0])),
        _rec("fixmatch", 1, 99.0),
        _rec("fixmatch", 1, 26.0, pl=([20.0, 80.0], [30.0, 90.0])),
        _rec("cmpl", 0, 30.0, tag="max", overrides=["algo.scheme=maximum"]),
        _rec("cmpl", 1, 40.0, tag="max", overrides=["algo.scheme=maximum"]),
        _rec("cmpl", 0, 77.0, tag="other"),
        {**_rec("supervised", 2, 90.0), "family": "elsewhere"},
    ]
    (tmp_path / "fam").mkdir()
    (tmp_path / "fam" / "classes.txt").write_text("left\nright\n")
    md = recipe_compare.compare_markdown(recs, "fam", "10", ["study", "max"], str(tmp_path))
    assert "| fixmatch | 19.00 +- 9.90 | 12.00 | 26.00 |" in md  # the re-run (26) replaced 99
    assert "| fixmatch - supervised | +4.00 | +2.0, +6.0 | 2.83 | 2/2 |" in md
    assert "| cmpl-maximum - fixmatch | +16.00 | +18.0, +14.0 |" in md
    assert "77.00" not in md and "90.00" not in md  # another tag, another family
    assert "| supervised | top-1 | 15 | 50 |" in md
    assert "| fixmatch | mask F | 30 | 70 |" in md and "| fixmatch | prec. F | 40 | 80 |" in md
    assert (
        recipe_compare.method_label(_rec("cmpl", 0, 1.0, overrides=["data.aux_stride=1"])) == "cmpl[data.aux_stride=1]"
    )
    # a variant of a method is paired with its base (here FixMatch in another BN mode)
    recs += [_rec("fixmatch", s, v, tag="bn", overrides=["algo.bn_mode=split"]) for s, v in ((0, 15.0), (1, 25.0))]
    md = recipe_compare.compare_markdown(recs, "fam", "10", ["study", "bn"], str(tmp_path))
    assert "| fixmatch[algo.bn_mode=split] - fixmatch | +1.00 | +3.0, -1.0 |" in md
    recs += [_rec("cmpl", s, v) for s, v in ((0, 20.0), (1, 50.0))]  # the paper's cross scheme
    md = recipe_compare.compare_markdown(recs, "fam", "10", ["study", "max"], str(tmp_path))
    assert "| cmpl-maximum - cmpl | +0.00 | +10.0, -10.0 |" in md
    # a study-wide override (a wider primary for every method): left out of the labels when named a study key
    wide = [
        _rec(a, s, v, tag="w2", overrides=["model.primary_width=2"])
        for a, vs in (("fixmatch", (10.0, 20.0)), ("cmpl", (15.0, 30.0)))
        for s, v in enumerate(vs)
    ]
    md = recipe_compare.compare_markdown(wide, "fam", "10", ["w2"], str(tmp_path))
    assert "fixmatch[model.primary_width=2]" in md and "| cmpl - fixmatch |" not in md
    md = recipe_compare.compare_markdown(
        wide, "fam", "10", ["w2"], str(tmp_path), recipe_compare.COMMON + ("model.primary_width",)
    )
    assert "| cmpl - fixmatch | +7.50 | +5.0, +10.0 |" in md and "primary_width" not in md


def test_recipe_study_summary_one_row_per_family_with_ceiling_and_precision():
    """``recipe_study.py --compare TAG --summary``: per-family means and paired margins from results.jsonl, the
    all-labels ceiling from a supervised every-label run of the same preset, the primary's pseudo-label
    precision (FixMatch / CMPL), CMPL's other schemes left out, tuned and held-out families counted apart."""
    import sys

    sys.path.insert(0, str(Path(__file__).parents[1] / "studies"))
    import recipe_compare

    def rec(fam, algo, seed, top1, **kw):
        return {
            **_rec(algo, seed, top1, **kw),
            "family": fam,
            "preset": "p",
            "train_pl_acc_f": {"fixmatch": 0.5, "cmpl": 0.75}.get(algo),
        }

    recs = [
        rec("direction", a, s, v)
        for a, vs in (("supervised", (40, 50)), ("fixmatch", (45, 49)), ("cmpl", (50, 60)))
        for s, v in enumerate(vs)
    ]
    recs += [rec("direction", "cmpl", s, 99.0, overrides=["algo.scheme=maximum"]) for s in (0, 1)]
    recs += [
        {**rec("direction", "supervised", 0, 97.0), "labels": "all", "overrides": []},
        {**rec("direction", "supervised", 0, 11.0), "labels": "all", "overrides": [], "preset": "other"},
    ]
    recs += [rec("heldout", a, 0, v) for a, v in (("supervised", 30.0), ("fixmatch", 40.0), ("cmpl", 35.0))]
    recs += [rec("scale", a, 0, v) for a, v in (("supervised", 30.0), ("fixmatch", 100.0), ("cmpl", 100.0))]
    # the naive floor: the latest fewlabel-floor supervised run per split, whatever its tag
    recs += [
        {**rec("direction", "supervised", s, v, tag="floor"), "preset": "fewlabel-floor"}
        for s, v in ((0, 20.0), (0, 35.0), (1, 45.0))
    ]
    md = recipe_compare.summary_markdown(recs, ["direction", "speed", "scale", "heldout"], "10", ["study"])
    assert "| direction | no | 6 | 2 | 97.0 (0.0) | 40.0 (7.1) | 45.0 (7.1) | 47.0 (2.8) | 55.0 (7.1) |" in md
    assert "| +5.0 (2/2) [" in md  # supervised - floor: 40 - 35, 50 - 45
    assert "| heldout | yes | 6 | 1 | - | - | 30.0 (0.0) |" in md  # no floor run: no number
    assert "| +2.0 (1/2) [" in md and "| +8.0 (2/2) [" in md and "| 50.0 / 75.0 |" in md
    assert "99.0" not in md and "11.0" not in md  # another scheme, another preset's ceiling
    assert "| speed | no | - | - | not run |" in md
    assert "- cmpl > fixmatch on 1/2 tuned families (1 tied); held-out `heldout`: -5.0" in md  # scale: both 100
    # --cmpl-variant cmpl-maximum: the maximum runs fill the CMPL columns; the cross runs are left out
    md = recipe_compare.summary_markdown(
        recs, ["direction", "speed", "scale", "heldout"], "10", ["study"], cmpl="cmpl-maximum"
    )
    assert "CMPL = cmpl-maximum" in md and "| 47.0 (2.8) | 99.0 (0.0) |" in md and "55.0" not in md
    assert "| heldout | yes | 6 | 1 |" in md and "| 40.0 (0.0) | - |" in md  # heldout has no maximum run
    assert "\n- cmpl > fixmatch on 1/1 tuned families\n" in md
    # --study-key model.primary_width: a wider-primary study pairs up, and its ceiling is the wide every-label run
    wide = ["model.primary_width=2"]
    recs += [
        rec("direction", a, s, v, tag="w2", overrides=wide)
        for a, vs in (("supervised", (60, 70)), ("fixmatch", (61, 71)), ("cmpl", (65, 75)))
        for s, v in enumerate(vs)
    ]
    recs += [{**rec("direction", "supervised", 0, 88.0), "labels": "all", "overrides": wide}]
    md = recipe_compare.summary_markdown(
        recs, ["direction"], "10", ["w2"], common=recipe_compare.COMMON + ("model.primary_width",)
    )
    assert "| direction | no | 6 | 2 | 88.0 (0.0) | 40.0 (7.1) | 65.0 (7.1) | 66.0 (7.1) | 70.0 (7.1) |" in md
    assert "97.0" not in md and "--study-key model.primary_width" in md


def test_margin_is_the_mean_over_paired_seeds_when_one_side_misses_seeds():
    rows = [row("supervised", s, v) for s, v in zip((0, 1, 2), (10.0, 40.0, 40.0))]
    rows += [row("fixmatch", 0, 15.0)]  # only seed 0 ran: +5 on that split, not 15 - 30 = -15
    md = compare.results_markdown(rows, "t")
    assert "| fixmatch - supervised | +5.00 | +5.0 |" in md


def test_floor_config_is_the_shipped_floor_with_only_this_runs_data():
    """``--algos floor``: the naive floor keeps its own recipe; a study's recipe overrides (and the family's flip
    map, which a no-flip recipe refuses) do not reach it, the data, seed and run keys do."""
    sets = [
        "data.root=/d",
        "data.labeled_list=/d/l.txt",
        "data.unlabeled_list=/d/u.txt",
        "data.val_list=/d/v.txt",
        "data.classes_file=/d/c.txt",
        "data.flip_label_map=left:right,right:left",
        "algo.unlabeled_ratio=1",
        "model.primary_width=2",
        "algo.name=supervised",
        "train.seed=2",
        "run.name=x",
        "tracking.enabled=false",
    ]
    cfg = compare.floor_config(sets)
    assert cfg.model.primary_arch == "naive" and cfg.model.primary_width == 1.0 and cfg.data.flip is False
    assert cfg.data.flip_label_map == "" and cfg.algo.name == "supervised" and cfg.algo.unlabeled_ratio == 5
    assert (cfg.data.root, cfg.data.labeled_list, cfg.train.seed, cfg.run.name) == ("/d", "/d/l.txt", 2, "x")
    assert cfg.tracking.enabled is False and cfg.train.batch_labeled == 16 and cfg.optim.nesterov is True
