"""The learning-rate range test: its schedule, its reading of a loss curve, and a real run on decoded mp4s.

Why: ``cmpl-ray lr-find`` is how a user picks ``optim.lr`` for data the presets were not tuned on, so the
suggestion must come from the measured curve (a wrong reading would send every new dataset to a bad lr).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from cmpl_ray.train.lr_find import analyse, lr_schedule


def test_schedule_is_geometric_between_the_bounds():
    s = lr_schedule(1e-3, 1.0, 4)
    assert s == pytest.approx([1e-3, 1e-2, 1e-1, 1.0])
    with pytest.raises(ValueError, match="start"):
        lr_schedule(1.0, 0.1, 10)


def test_analyse_finds_the_minimum_and_the_steepest_descent():
    lrs = list(lr_schedule(1e-4, 1.0, 9))  # 1e-4, 3.2e-4, 1e-3, ..., 1.0 (half decades)
    losses = [2.0, 2.0, 1.9, 1.2, 0.9, 0.8, 0.85, 3.0, 9.0]
    r = analyse(lrs, losses, beta=0.0)  # no smoothing: the raw curve
    assert r["lr_min_loss"] == pytest.approx(lrs[5]) and r["min_smoothed_loss"] == pytest.approx(0.8)
    assert r["suggested_lr"] == pytest.approx(lrs[5] / 10)
    # d loss / d log lr is most negative between 1e-3 (1.9) and 1e-2 (0.9): np.gradient's central difference
    # peaks at 1.2
    assert r["lr_steepest"] == pytest.approx(lrs[3])
    sm = analyse(lrs, losses, beta=0.9)["smoothed"]
    assert sm[0] == pytest.approx(2.0)  # bias correction: the first smoothed value is the first loss
    assert sm[2] == pytest.approx((0.1 * 0.81 * 2 + 0.1 * 0.9 * 2 + 0.1 * 1.9) / (1 - 0.9**3))


@pytest.mark.slow
def test_range_test_on_real_videos_records_and_stops_when_the_loss_diverges(tmp_path):
    from cmpl_ray.config import load_config
    from cmpl_ray.data.suite import write_family
    from cmpl_ray.train.lr_find import lr_range_test

    root = tmp_path / "d"
    write_family(str(root), "flicker", per_class=3, val_per_class=1, seed=0)
    cfg = load_config(
        "suite-cpu",
        overrides=[
            f"data.root={root}",
            f"data.labeled_list={root}/train.txt",
            "data.unlabeled_list=",
            f"data.val_list={root}/val.txt",
            f"data.classes_file={root}/classes.txt",
            "train.batch_labeled=4",
            "data.raw_clip_len=16",
            "tracking.enabled=false",
        ],
    )
    r = lr_range_test(cfg, start=1e-3, end=1e4, steps=40, loader_workers=0, threads=1, log=None)
    assert 10 < r["steps_run"] < 40  # lr up to 1e4 with momentum SGD: the loss blows up before the end
    assert r["lrs"] == sorted(r["lrs"]) and r["lrs"][0] == pytest.approx(1e-3)
    assert all(math.isfinite(v) for v in r["smoothed"])
    assert 1e-3 <= r["lr_min_loss"] <= r["lrs"][-1] and r["suggested_lr"] == pytest.approx(r["lr_min_loss"] / 10)
    assert np.isclose(r["min_smoothed_loss"], min(r["smoothed"]))
    from cmpl_ray.cli import main

    out = tmp_path / "curve.json"
    sets = [
        a
        for kv in (
            f"data.root={root}",
            f"data.labeled_list={root}/train.txt",
            "data.unlabeled_list=",
            f"data.val_list={root}/val.txt",
            f"data.classes_file={root}/classes.txt",
            "train.batch_labeled=4",
            "data.raw_clip_len=16",
        )
        for a in ("--set", kv)
    ]
    assert main(["lr-find", "--preset", "suite-cpu", *sets, "--steps", "12", "--threads", "1", "--out", str(out)]) == 0
    import json

    curve = json.loads(out.read_text())
    assert curve["steps_run"] == 12 and len(curve["losses"]) == 12


def test_range_test_runs_with_the_threads_asked_for(synth_root, monkeypatch):
    """``--threads N`` must hold while the steps run: the decoder, built in this process, must not reset it."""
    import torch

    from cmpl_ray.config import load_config
    from cmpl_ray.train import lr_find

    cfg = load_config(
        "demo",
        overrides=[
            f"data.root={synth_root}",
            f"data.labeled_list={synth_root}/train.txt",
            "data.unlabeled_list=",
            f"data.val_list={synth_root}/val.txt",
            f"data.classes_file={synth_root}/classes.txt",
            "data.crop_size=32",
            "data.train_short_side=[32, 40]",
            "data.test_short_side=32",
            "data.raw_clip_len=16",
            "train.batch_labeled=2",
        ],
    )
    seen = []
    real = lr_find.compute_objective

    def spy(*a, **kw):
        seen.append(torch.get_num_threads())
        return real(*a, **kw)

    monkeypatch.setattr(lr_find, "compute_objective", spy)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)  # the caller's count, which lr-find must replace with the one asked for
        # 1, not more than the cores: oversubscribed OpenMP threads spin-wait on each other, and in a process
        # that runs real-time (seen once on a shared 2-core machine) that never ends
        lr_find.lr_range_test(cfg, steps=3, loader_workers=0, threads=1, log=None)
        after = torch.get_num_threads()
    finally:
        torch.set_num_threads(before)
    assert seen == [1, 1, 1] and after == 1
