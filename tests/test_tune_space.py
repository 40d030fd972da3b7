"""Search-space files: every shipped YAML loads and validates against the config; bad files fail with the key."""

import glob
import os

import pytest

from cmpl_ray.config import ConfigError
from cmpl_ray.tune.space import grid_points, load_space, overrides_of

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SPACES = sorted(glob.glob(os.path.join(ROOT, "search_spaces", "*.yaml")))


def test_every_paper_study_has_a_space():
    names = {os.path.basename(p)[:-5] for p in SPACES}
    for want in (
        "table2_components",
        "table3_aux_arch",
        "table4_frame_rates",
        "table5_time_offset",
        "table6_aux_losses",
        "tableA2_schemes",
        "fig4a_threshold",
        "fig4b_unlabeled_ratio",
        "fig4c_lambda",
        "new_dataset",
        "demo_laptop",
    ):
        assert want in names


@pytest.mark.parametrize("path", SPACES, ids=[os.path.basename(p) for p in SPACES])
def test_shipped_space_loads_and_every_point_builds_a_config(path):
    from cmpl_ray.config import load_config

    spec = load_space(path)
    assert spec.description, "each space documents itself at its top"
    for point in grid_points(spec):
        cfg = load_config(spec.preset, None, overrides_of(spec.fixed) + overrides_of(point))
        for axis, v in point.items():
            for k, x in v.items() if isinstance(v, dict) else [(axis, v)]:
                s, f = k.split(".")
                assert getattr(getattr(cfg, s), f) == x


def test_table3_bundles_set_arch_and_width_together():
    spec = load_space(os.path.join(ROOT, "search_spaces", "table3_aux_arch.yaml"))
    pts = grid_points(spec)
    assert len(pts) == 7
    assert {"model.aux_arch": "r50", "model.aux_width": 0.125} in [p["aux"] for p in pts]
    assert overrides_of({"aux": {"model.aux_arch": "r18", "model.aux_width": 1.0}}) == [
        "model.aux_arch=r18",
        "model.aux_width=1.0",
    ]


def test_preset_flag_wins_and_demo_preset_fits_laptop_space():
    spec = load_space(os.path.join(ROOT, "search_spaces", "fig4a_threshold.yaml"), preset="demo")
    assert spec.preset == "demo"


def _write(tmp_path, text):
    p = tmp_path / "s.yaml"
    p.write_text(text)
    return str(p)


@pytest.mark.parametrize(
    "text, key",
    [
        ("preset: demo\nspace:\n  algo.threshhold: {grid: [0.5]}\n", "space.algo.threshhold"),
        ("preset: demo\nspace:\n  algo.threshold: {grid: [0.5, 1.5]}\n", "space.algo.threshold"),
        ("preset: demo\nspace:\n  algo.threshold: {uniform: [0.9, 0.5]}\n", "space.algo.threshold.uniform"),
        ("preset: demo\nspace:\n  algo.threshold: {normal: [0.9, 0.5]}\n", "space.algo.threshold"),
        ("preset: demo\nspace:\n  optim.lr: {loguniform: [0, 0.5]}\n", "space.optim.lr.loguniform"),
        ("preset: demo\nsearcher: optuna\nspace:\n  optim.lr: {grid: [0.1, 0.2]}\n", "space.optim.lr"),
        ("preset: demo\nsearcher: bayes\nspace:\n  optim.lr: {grid: [0.1]}\n", "searcher"),
        (
            "preset: demo\nscheduler: {name: asha, reduction_factor: 1}\nspace:\n  optim.lr: {grid: [0.1]}\n",
            "scheduler.reduction_factor",
        ),
        ("preset: demo\nfixed: {train.epochz: 3}\nspace:\n  optim.lr: {grid: [0.1]}\n", "train.epochz"),
        ("preset: demo\nspace: {}\n", "space"),
        ("preset: demo\nnum_samples: 0\nspace:\n  optim.lr: {grid: [0.1]}\n", "num_samples"),
        ("preset: demo\nspace:\n  aux: {grid: [{model.aux_arch: r99}]}\n", "space.aux"),
        ("preset: demo\nspaces:\n  optim.lr: {grid: [0.1]}\n", "spaces"),
    ],
)
def test_bad_space_is_refused_with_the_key(tmp_path, text, key):
    with pytest.raises(ConfigError) as e:
        load_space(_write(tmp_path, text))
    assert key in str(e.value)


def test_missing_space_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_space(str(tmp_path / "nope.yaml"))


def test_cli_tune_bad_space_exits_2_without_traceback(tmp_path, capsys):
    from cmpl_ray.cli import main

    rc = main(["tune", _write(tmp_path, "preset: demo\nspace:\n  algo.threshold: {grid: [2.0]}\n")])
    err = capsys.readouterr().err
    assert rc == 2 and "space.algo.threshold" in err and "Traceback" not in err


def test_tune_objects_build_for_each_searcher_and_scheduler():
    """The Ray Tune side of a space: samplers, ASHA's settings and the Optuna searcher (TPE) for new_dataset."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
    from ray.tune.search.optuna import OptunaSearch

    from cmpl_ray.tune.driver import _scheduler, _searcher
    from cmpl_ray.tune.space import to_tune_space

    spec = load_space(os.path.join(ROOT, "search_spaces", "new_dataset.yaml"))
    ts = to_tune_space(spec)
    assert isinstance(ts["optim.lr"], tune.search.sample.Float) and ts["optim.lr"].lower == 0.005
    assert isinstance(_searcher(spec), OptunaSearch)
    asha = _scheduler(spec, epochs=20)
    # max_t one past the last epoch (no STOP on a finishing trial's last report), the rungs of max_t = epochs
    assert isinstance(asha, ASHAScheduler) and asha._max_t == 21 and asha._reduction_factor == 3
    assert [r for r, _ in asha._brackets[0]._rungs] == [12, 4]
    grid = load_space(os.path.join(ROOT, "search_spaces", "table4_frame_rates.yaml"))
    assert to_tune_space(grid)["data.aux_stride"] == {"grid_search": [8, 4, 2]}
    assert _searcher(grid) is None and isinstance(_scheduler(grid, 50), FIFOScheduler)
