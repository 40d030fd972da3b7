"""scripts/model_stats.py: GMACs of a configuration and, with --step-batch, a measured CPU training step."""

import importlib.util
import re
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "model_stats.py"


def _load():
    spec = importlib.util.spec_from_file_location("model_stats", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_naive_t_costs_fewer_macs_than_naive_and_a_step_is_timed(capsys):
    stats = _load()
    naive = stats.stats("naive", 1.0, 16, 56, 6)[1]
    pooled = stats.stats("naive_t", 1.0, 16, 56, 6)[1]
    assert pooled < 0.7 * naive  # blocks 3-4 see 8 and 4 frames instead of 16
    assert (
        stats.main(["--arch", "naive_t", "--frames", "8", "--size", "16", "--num-classes", "3", "--step-batch", "2"])
        == 0
    )
    out = capsys.readouterr().out
    assert "naive_t x1 @ 8x16^2" in out
    ms = float(re.search(r"training step of 2 clips on 2 CPU threads: (\d+) ms", out).group(1))
    assert ms > 0
