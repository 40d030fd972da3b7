"""Small ``cmpl-ray`` commands end to end through ``main``: ``step`` and ``predict`` (tiny networks, no Ray)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cmpl_ray.cli import main

STEP = [
    "step",
    "--preset",
    "demo",
    "--set",
    "data.crop_size=16",
    "--set",
    "data.raw_clip_len=8",
    "--set",
    "data.primary_stride=2",
    "--set",
    "data.aux_stride=1",
    "--set",
    "train.batch_labeled=2",
    "--set",
    "model.num_classes=3",
]


def _step(capsys, *sets: str) -> dict:
    assert main(STEP + [a for s in sets for a in ("--set", s)]) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_step_passes_every_config_switch_to_the_objective(capsys, monkeypatch):
    from cmpl_ray import algorithm
    from cmpl_ray.config import load_config
    from cmpl_ray.train.build import objective_kwargs

    seen = {}
    real = algorithm.compute_objective

    def spy(*a, **kw):
        seen.update(kw)
        return real(*a, **kw)

    monkeypatch.setattr(algorithm, "compute_objective", spy)
    sets = ["algo.bn_mode=separate", "algo.aux_supervised=false", "algo.aux_unsupervised=false"]
    _step(capsys, *sets)
    want = objective_kwargs(load_config("demo", overrides=sets))
    assert seen == want and (seen["bn_mode"], seen["aux_supervised"], seen["aux_unsupervised"]) == (
        "separate",
        False,
        False,
    )


def test_step_loss_drops_the_auxiliary_supervised_term(capsys):
    on, off = _step(capsys), _step(capsys, "algo.aux_supervised=false")
    assert off["loss"] == pytest.approx(on["loss"] - on["loss_s_a"], abs=1e-3)


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    """A checkpoint of freshly built tiny networks, with the test-time preprocessing of 32 px, 8-frame clips."""
    import torch

    from cmpl_ray.config import load_config
    from cmpl_ray.train.build import build_networks
    from cmpl_ray.train.checkpoint import save_checkpoint

    d = tmp_path_factory.mktemp("ckpt")
    cfg = load_config(
        "demo",
        overrides=[
            "data.crop_size=32",
            "data.train_short_side=[32, 40]",
            "data.test_short_side=32",
            "data.raw_clip_len=8",
            "data.primary_stride=2",
            "data.aux_stride=1",
            "data.time_offset=0",
            "data.eval_clips=1",
        ],
    )
    torch.manual_seed(0)
    primary, aux = build_networks(cfg, 3)
    opt = torch.optim.SGD(list(primary.parameters()) + list(aux.parameters()), lr=0.1)
    save_checkpoint(
        d / "ckpt",
        primary=primary,
        aux=aux,
        optimizer=opt,
        scaler=None,
        epoch=0,
        global_step=1,
        config=cfg.to_dict(),
        metrics={},
        extra={"class_names": ["a", "b", "c"]},
    )
    return str(d / "ckpt")


@pytest.fixture
def videos(tmp_path, write_mp4):
    """One readable mp4 and two that are not (garbage bytes, a missing file)."""
    good = str(tmp_path / "good.mp4")
    write_mp4(good, np.random.default_rng(0).integers(0, 255, (24, 40, 40, 3), dtype=np.uint8), 12)
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"not a video")
    return good, str(bad), str(tmp_path / "missing.mp4")


def test_predict_fails_when_no_video_could_be_read(tiny_checkpoint, videos, capsys):
    _, bad, missing = videos
    assert main(["predict", tiny_checkpoint, bad, missing]) != 0
    assert "2 of 2 videos could not be read" in capsys.readouterr().err


def test_predict_succeeds_but_counts_the_failures_when_some_are_read(tiny_checkpoint, videos, capsys):
    good, bad, _ = videos
    assert main(["predict", tiny_checkpoint, good, bad, "--topk", "2"]) == 0
    out = capsys.readouterr()
    assert out.out.splitlines()[0] == good and len(out.out.splitlines()) == 4  # 2 classes, then bad's line
    assert "1 of 2 videos could not be read" in out.err
    assert main(["predict", tiny_checkpoint, good]) == 0
    assert "could not be read" not in capsys.readouterr().err
