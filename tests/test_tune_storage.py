"""Sweep state on a URI (pyarrow filesystems, as Ray uses for s3:// and gs://): written, read back, and the
space file travels inside it so ``--resume`` from a later job does not depend on the old upload directory."""

import os

from cmpl_ray.tune.driver import _load_state, _save_state, sweep_dir


def test_state_roundtrip_on_a_uri_and_space_text_restored(tmp_path):
    d = sweep_dir(f"file://{tmp_path}/store", "s1")
    assert d == f"file://{tmp_path}/store/s1"
    _save_state(d, {"space_path": "/gone/job_upload/space.yaml", "space_text": "preset: demo\n",
                    "config_path": None, "config_text": None, "name": "s1"})
    assert os.path.exists(tmp_path / "store" / "s1" / "sweep.json")
    st = _load_state(d)
    assert st["name"] == "s1" and st["space_path"] != "/gone/job_upload/space.yaml"
    assert open(st["space_path"]).read() == "preset: demo\n"


def test_local_sweep_dir_is_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert sweep_dir("outputs/tune", "x") == str(tmp_path / "outputs" / "tune" / "x")


def test_finished_trial_is_recognised_from_its_metrics_json(tmp_path):
    """An interrupted sweep may re-enter a trial that already trained its last epoch: the driver reports the
    final metrics from metrics.json instead of starting a Train run (``trial_fn``); anything less is retrained."""
    import json

    from cmpl_ray.config import load_config
    from cmpl_ray.tune.driver import _finished_metrics

    cfg = load_config("demo", None, [f"run.output_dir={tmp_path}", "train.epochs=2"])
    assert _finished_metrics(cfg) is None  # nothing written yet
    (tmp_path / "metrics.json").write_text("{not json")
    assert _finished_metrics(cfg) is None
    hist = [{"epoch": 1.0, "val_top1": 20.0}, {"epoch": 2.0, "val_top1": 25.0, "train_lr": 0.01}]
    (tmp_path / "metrics.json").write_text(json.dumps({"epochs": 2, "history": hist[:1]}))
    assert _finished_metrics(cfg) is None  # stopped after epoch 1
    (tmp_path / "metrics.json").write_text(json.dumps({"epochs": 2, "history": hist}))
    assert _finished_metrics(cfg) is None  # the worker wrote it, but run_training had not finished
    (tmp_path / "metrics.json").write_text(json.dumps({"epochs": 2, "history": hist, "best_checkpoint": "/c"}))
    assert _finished_metrics(cfg) == {"epoch": 2.0, "val_top1": 25.0, "train_lr": 0.01}
    cfg3 = load_config("demo", None, [f"run.output_dir={tmp_path}", "train.epochs=3"])
    assert _finished_metrics(cfg3) is None  # same dir, longer schedule: not finished
