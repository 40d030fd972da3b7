"""Every shipped preset through ``cmpl-ray train`` at toy size, keeping its own switches.

Only sizes change (frames, crop, widths, steps, epochs, views, workers' CPUs, the GPU flag on this CPU
machine): EMA off, ``eval_every > 1``, the unlabeled ratio, ``bn_mode``, the architectures, two workers where
the preset trains on several stay as the preset has them. A bug in a branch only a cluster preset enters
is found here, not by a user. All presets share one local Ray (the CLI joins a Ray that is already up).
"""

import json
import os

import pytest

from cmpl_ray.cli import main
from cmpl_ray.config import load_config
from cmpl_ray.train.checkpoint import load_checkpoint

pytestmark = pytest.mark.slow

PRESETS = sorted(
    f[:-5]
    for f in os.listdir(os.path.join(os.path.dirname(__file__), "..", "..", "cmpl_ray", "presets"))
    if f.endswith(".yaml")
)
EPOCHS = 3


def toy_overrides(preset, synth_root, splits, out):
    """Sizes only: what makes a cluster preset fit 2 CPU cores and a 40 px synthetic set in seconds."""
    cfg = load_config(preset)
    workers = 2 if cfg.train.num_workers > 1 else 1
    shrink = {
        "data.root": synth_root,
        "data.labeled_list": f"{splits}/labeled.txt",
        "data.unlabeled_list": f"{splits}/unlabeled.txt",
        "data.val_list": f"{synth_root}/val.txt",
        "data.classes_file": f"{synth_root}/classes.txt",
        "data.raw_clip_len": 16,
        "data.primary_stride": 4,
        "data.aux_stride": 2,
        "data.time_offset": 1.0,
        "data.crop_size": 32,
        "data.train_short_side": "[32,40]",
        "data.test_short_side": 32,
        "data.max_crop": 32,
        "data.eval_clips": min(2, cfg.data.eval_clips),
        "data.eval_crops": 1,
        "data.decode_actors": 1,
        "data.cpus_per_decoder": 0.25,
        "data.decode_batch": 2,
        "model.primary_width": min(cfg.model.primary_width, 0.25),
        "model.aux_width": min(cfg.model.aux_width, 0.125),
        "train.epochs": EPOCHS,
        "train.steps_per_epoch": 2,
        "train.passes": 0,
        "train.min_steps": 0,
        "train.batch_labeled": 2,
        "train.use_gpu": "false",
        "train.num_workers": workers,
        "train.cpus_per_worker": 0.5 if workers > 1 else 1,
        "train.log_every": 1,
        "train.eval_every": 2 if cfg.train.eval_every > 1 else 1,
        "optim.warmup_epochs": min(cfg.optim.warmup_epochs, 0.5),
        "algo.unsup_warmup_epochs": 0,
        "run.output_dir": f"{out}/out",
        "run.storage_path": f"{out}/ray_results",
        "run.name": preset,
        "run.max_failures": 0,
        "tracking.uri": f"sqlite:///{out}/mlflow.db",
    }
    return cfg, shrink


@pytest.mark.parametrize("preset", PRESETS)
def test_preset_trains_end_to_end_with_its_own_switches(preset, synth_root, splits, tmp_path, local_ray, capsys):
    preset_cfg, sets = toy_overrides(preset, synth_root, splits, tmp_path)
    assert main(["train", "--preset", preset] + [a for k, v in sets.items() for a in ("--set", f"{k}={v}")]) == 0
    capsys.readouterr()
    m = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert m["restarts"] == 0 and m["epochs"] == EPOCHS and m["skipped_samples"] == 0
    assert m["world_size"] == sets["train.num_workers"]
    evaluated = [int(h["epoch"]) for h in m["history"] if h["evaluated"]]
    every = sets["train.eval_every"]
    assert evaluated == sorted({e for e in range(1, EPOCHS + 1) if e % every == 0} | {EPOCHS})
    state = load_checkpoint(m["best_checkpoint"])
    assert state["epoch"] + 1 in evaluated and state["metrics"]["val_top1"] == m["val_top1_best"]
    ran = state["config"]  # the preset's own switches, as trained
    for key in ("ema_decay",):
        assert ran["train"][key] == getattr(preset_cfg.train, key)
    for key in ("name", "scheme", "unlabeled_ratio", "bn_mode", "threshold", "lambda_u"):
        assert ran["algo"][key] == getattr(preset_cfg.algo, key)
    for key in ("primary_arch", "aux_arch"):
        assert ran["model"][key] == getattr(preset_cfg.model, key)
    assert ran["train"]["amp"] == preset_cfg.train.amp
    if preset_cfg.algo.name == "cmpl":
        assert "aux_val_top1" in m
