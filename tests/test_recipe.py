"""The data-derived recipe (run length from ``train.passes``) and the Ray-free runner used to study it.

Why: the recipe's point is that a new dataset gets a sensible number of steps without editing constants, so
the derivation must scale with the data, keep its floor, and give every algorithm of a split the same steps;
the runner's point is that what it measures is reproducible and independent of its loader processes.
"""

from __future__ import annotations

import pytest

from cmpl_ray.config import ConfigError, load_config
from cmpl_ray.data.pipeline import steps_per_epoch, total_steps


def _cfg(*sets: str):
    return load_config("demo", overrides=list(sets))


def test_passes_scale_the_run_with_the_data_above_a_floor():
    cfg = _cfg(
        "train.passes=10",
        "train.min_steps=100",
        "train.epochs=4",
        "train.batch_labeled=8",
        "algo.unlabeled_ratio=3",
        "train.steps_per_epoch=0",
    )
    assert total_steps(cfg, 40, 0, 1) == 100  # 10 x 40 / 8 = 50 < floor
    assert total_steps(cfg, 400, 0, 1) == 500  # 10 x 400 / 8
    assert total_steps(cfg, 80, 1200, 1) == 400  # 10 x 1280 / 32
    assert total_steps(cfg, 80, 1200, 2) == 200  # two workers share the passes
    assert steps_per_epoch(cfg, 80, 1200, 1) == 100  # 400 steps over 4 rounds
    for algo in ("supervised", "fixmatch", "cmpl"):  # every algorithm trains as long on a split
        c = _cfg(
            "train.passes=10",
            "train.min_steps=100",
            "train.epochs=4",
            "train.batch_labeled=8",
            "algo.unlabeled_ratio=3",
            "train.steps_per_epoch=0",
            f"algo.name={algo}",
        )
        assert steps_per_epoch(c, 80, 1200, 1) == 100


def test_constant_steps_win_over_passes_and_bad_combinations_are_refused():
    assert steps_per_epoch(_cfg("train.steps_per_epoch=7", "train.passes=0", "train.min_steps=0"), 40, 0, 1) == 7
    assert steps_per_epoch(_cfg("train.steps_per_epoch=7", "train.passes=5", "train.min_steps=100"), 40, 0, 1) == 7
    with pytest.raises(ConfigError, match="train.min_steps"):
        _cfg("train.passes=0", "train.min_steps=50")
    with pytest.raises(ConfigError, match="train.passes"):
        _cfg("train.passes=-1")


@pytest.mark.slow
def test_local_runner_is_reproducible_whatever_the_loader_processes(tmp_path):
    from cmpl_ray.data.suite import write_family
    from cmpl_ray.train.local import run_local

    root = tmp_path / "d"
    write_family(str(root), "flicker", per_class=3, val_per_class=1, seed=0)
    sets = [
        f"data.root={root}",
        f"data.labeled_list={root}/train.txt",
        "data.unlabeled_list=",
        f"data.val_list={root}/val.txt",
        f"data.classes_file={root}/classes.txt",
        "algo.name=supervised",
        "train.passes=0",
        "train.min_steps=0",
        "train.steps_per_epoch=3",
        "train.epochs=2",
        "train.eval_every=2",
        "train.batch_labeled=4",
        "tracking.enabled=false",
    ]
    runs = [run_local(_cfg(*sets), loader_workers=w, threads=1, log=None) for w in (0, 1)]
    assert runs[0]["steps"] == 6 and len(runs[0]["history"]) == 2
    assert runs[0]["train_loss"] == pytest.approx(runs[1]["train_loss"], rel=1e-5)
    assert runs[0]["val_top1"] == runs[1]["val_top1"]
    assert 0.0 <= runs[0]["val_top1"] <= 100.0 and len(runs[0]["per_class"]) == 5
    # CMPL records each round's pseudo-labels per class and network (mask rate, precision, recall)
    semi = [s for s in sets if not s.startswith(("algo.name", "data.unlabeled_list"))]
    cm = run_local(
        _cfg(
            *semi,
            "algo.name=cmpl",
            f"data.unlabeled_list={root}/train.txt",
            "algo.threshold=0.01",
            "train.epochs=1",
            "train.eval_every=1",
            "train.batch_labeled=2",
            "algo.unlabeled_ratio=1",
        ),
        loader_workers=0,
        threads=1,
        log=None,
    )
    for net in ("f", "a"):
        pc = cm["history"][-1][f"pl_per_class_{net}"]
        assert set(pc) == {"mask_rate", "precision", "recall"} and all(len(v) == 5 for v in pc.values())
        seen = [m for m in pc["mask_rate"] if m == m]  # threshold 0.01 < 1/5: every clip is kept
        assert seen and all(m == 100.0 for m in seen)


def test_crop_and_short_sides_are_derived_from_the_videos(tmp_path):
    from cmpl_ray.data.lists import read_list
    from cmpl_ray.data.pipeline import resolve_data
    from cmpl_ray.data.suite import write_family

    for fam, want in (("flicker", 48), ("scale", 56)):  # 64x48 -> its 48 px short side; 128x96 -> the cap
        root = tmp_path / fam
        write_family(str(root), fam, per_class=1, val_per_class=0)
        cfg = _cfg(
            f"data.root={root}",
            "data.crop_size=0",
            "data.train_short_side=[0,0]",
            "data.test_short_side=0",
            "data.max_crop=56",
        )
        resolve_data(cfg, read_list(str(root / "train.txt")))
        assert (cfg.data.crop_size, cfg.data.train_short_side, cfg.data.test_short_side) == (
            want,
            [want, round(want * 8 / 7)],
            want,
        )
    cfg = _cfg(
        f"data.root={tmp_path / 'scale'}",
        "data.crop_size=0",
        "data.max_crop=200",
        "data.train_short_side=[0,0]",
        "data.test_short_side=0",
    )
    assert resolve_data(cfg, read_list(str(tmp_path / "scale" / "train.txt"))).data.crop_size == 96
    fixed = _cfg("data.crop_size=40", "data.train_short_side=[40,44]", "data.test_short_side=40")
    assert resolve_data(fixed, []).data.crop_size == 40  # explicit sizes are kept, nothing is probed
    with pytest.raises(ConfigError, match="data.train_short_side"):
        _cfg("data.crop_size=40", "data.train_short_side=[32,44]")
