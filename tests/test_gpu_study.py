"""The GPU study's one command (``studies/gpu_study.sh``) on CPU with ``--smoke``, with the packages the lent GPU
machine lacks (decord, PyAV, kornia, Ray, MLflow) pretended away, so that it works the first time there: one
device lease is 15 minutes, too short to debug in."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "studies"))
ALGOS = ("supervised", "fixmatch", "cmpl")


def test_summary_pairs_runs_by_seed():
    from gpu_study import summarize

    runs = [
        {"algo": a, "seed": s, "val_top1": t}
        for a, s, t in (
            ("supervised", 0, 30.0),
            ("fixmatch", 0, 37.0),
            ("cmpl", 0, 40.0),
            ("supervised", 1, 20.0),
            ("fixmatch", 1, 25.0),
        )
    ]  # seed 1's CMPL run was cut off
    out = summarize(runs, list(ALGOS))
    assert out["mean"]["supervised"]["top1"] == 25.0 and out["mean"]["cmpl"]["n"] == 1
    assert out["diff"]["fixmatch-supervised"] == {"per_seed": {0: 7.0, 1: 5.0}, "mean": 6.0, "n": 2}
    assert out["diff"]["cmpl-fixmatch"]["per_seed"] == {0: 3.0}


def test_memory_videos_serve_the_decoder_contract():
    from gpu_study_data import MemoryVideos

    video = np.arange(10 * 32 * 40 * 3, dtype=np.uint64).reshape(10, 32, 40, 3).astype(np.uint8)
    mem = MemoryVideos({"/d/a.mp4": video}, fps=12)
    seen = []
    frames, n, fps = mem.read_sampled("/d/a.mp4", lambda n, f: seen.append((n, f)) or np.array([0, 9, 12]), 64)
    assert seen == [(10, 12.0)] and (n, fps) == (10, 12.0)
    assert frames.shape == (3, 64, 80, 3) and frames.dtype == np.uint8  # short side 64, aspect kept, index clamped
    same, _, _ = mem.read_sampled("/d/a.mp4", lambda n, f: np.array([2]), None)
    assert np.array_equal(same[0], video[2])
    from cmpl_ray.data.video_reader import BadVideo

    with pytest.raises(BadVideo):
        mem.read_sampled("/d/missing.mp4", lambda n, f: np.array([0]))


@pytest.mark.slow  # ~8 s of CPU, but a subprocess end to end: a minute on a loaded 2-core machine
def test_gpu_study_smoke_run_without_the_gpu_machines_missing_packages(tmp_path):
    env = dict(os.environ, OUT=str(tmp_path), PYTHON=sys.executable, GPU_STUDY_LIMIT_S="400")
    cmd = ["bash", "scripts/gpu_study.sh", "--smoke", "--pretend-missing", "decord", "av", "kornia", "ray", "mlflow"]
    p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout[-4000:] + p.stderr[-4000:]
    recs = [json.loads(line) for line in open(tmp_path / "gpu_study.jsonl")]
    assert not [r for r in recs if r["kind"] == "error"], recs
    env_rec = next(r for r in recs if r["kind"] == "env")
    assert not env_rec["have"]["decord"] and not env_rec["have"]["ray"] and env_rec["have"]["yaml"]
    assert any("kornia" in n for n in env_rec["notes"]) and any("decord" in n for n in env_rec["notes"])
    plan = next(r for r in recs if r["kind"] == "plan")
    assert "data.randaug_n=0" in plan["sets"] and plan["steps"] == 2
    bench = [r for r in recs if r["kind"] == "bench"]
    assert len(bench) == 1 and {row["algo"] for row in bench[0]["rows"]} == {"cmpl", "fixmatch"}
    assert all(math.isfinite(row["ms_per_step"]) and row["ms_per_step"] > 0 for row in bench[0]["rows"])

    runs = [r for r in recs if r["kind"] == "run"]
    assert sorted((r["algo"], r["seed"]) for r in runs) == sorted((a, s) for a in ALGOS for s in (0, 1))
    for r in runs:
        assert math.isfinite(r["val_top1"]) and 0.0 <= r["val_top1"] <= 100.0
        assert r["skipped_samples"] == 0 and r["val_invalid"] == 0  # every clip came from the in-memory videos
        assert r["labels_per_class"] == 2 and r["labeled"] == 12 and r["steps"] == 2
        assert (r["unlabeled"] > 0) == (r["algo"] != "supervised")
        assert ("aux_val_top1" in r) == (r["algo"] == "cmpl")
    summary = recs[-1]
    assert summary["kind"] == "summary" and summary["runs"] == 6
    assert set(summary["mean"]) == set(ALGOS)
    for pair in ("fixmatch-supervised", "cmpl-fixmatch"):
        assert len(summary["diff"][pair]["per_seed"]) == 2
    table = (tmp_path / "gpu_study.txt").read_text()
    assert "| mean |" in table and "fixmatch-supervised" in table
    assert (tmp_path / "gpu_study.log").exists()
