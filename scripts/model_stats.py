"""Parameter and compute statistics for the CMPL 3D-ResNets.

Usage:
    python scripts/model_stats.py --arch r50 --width 1 --frames 8 --size 224 --num-classes 400
    python scripts/model_stats.py --paper
    python scripts/model_stats.py --arch naive_t --frames 16 --size 56 --num-classes 6 --step-batch 8

``--step-batch B`` also times a real training step (forward, backward, SGD) of B clips on this machine's CPU
with ``--threads`` threads (median of 10 after 3 warm-up steps): the measured cost, which GMACs only predict.

GMACs are multiply-accumulates of one clip (batch 1), which is what papers,
including CMPL's Table 3 "#FLOPs", usually call FLOPs (= FlopCounterMode / 2).
Counting runs on the meta device, so even R50 @ 16x224^2 is instant on a CPU.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

try:
    from cmpl_ray.models import build_model, count_flops, count_params
except ImportError:  # running from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from cmpl_ray.models import build_model, count_flops, count_params

# (label, arch, width, frames) -- the primary net and the Table 3 auxiliary nets.
PAPER_CONFIGS = [
    ("R50 x1", "r50", 1.0, 8),
    ("R50 x1/4", "r50", 0.25, 16),
    ("R18", "r18", 1.0, 16),
    ("R10", "r10", 1.0, 16),
    ("R50 x1/2", "r50", 0.5, 16),
    ("R50 x1/8", "r50", 0.125, 16),
]


def stats(arch: str, width: float, frames: int, size: int, num_classes: int) -> tuple[float, float]:
    """(params in millions, GMACs per clip) for one configuration."""
    model = build_model(arch, num_classes, width=width)
    macs = count_flops(model, (3, frames, size, size)) / 2
    return count_params(model) / 1e6, macs / 1e9


def step_ms(arch: str, width: float, frames: int, size: int, num_classes: int, batch: int, threads: int) -> float:
    """Median milliseconds of one CPU training step (forward, cross-entropy, backward, SGD) of ``batch`` clips."""
    import time

    import torch

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = build_model(arch, num_classes, width=width)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x, y = torch.randn(batch, 3, frames, size, size), torch.randint(0, num_classes, (batch,))
    times = []
    for i in range(13):
        t0 = time.perf_counter()
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        if i >= 3:
            times.append(time.perf_counter() - t0)
    return 1000 * sorted(times)[len(times) // 2]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default="r50", help="r10 | r18 | r34 | r50 | tiny | plain4 | naive | naive_t")
    p.add_argument("--width", type=float, default=1.0, help="channel width multiplier, e.g. 0.25")
    p.add_argument("--frames", type=int, default=8)
    p.add_argument("--size", type=int, default=224, help="square spatial crop size")
    p.add_argument("--num-classes", type=int, default=400)
    p.add_argument("--step-batch", type=int, default=0, help="also time a CPU training step of this many clips")
    p.add_argument("--threads", type=int, default=2, help="torch threads for --step-batch")
    p.add_argument("--paper", action="store_true", help="print the paper's configurations (Table 3 / A4)")
    args = p.parse_args(argv)

    if not args.paper:
        params, gmacs = stats(args.arch, args.width, args.frames, args.size, args.num_classes)
        print(
            f"{args.arch} x{args.width:g} @ {args.frames}x{args.size}^2, {args.num_classes} classes: "
            f"params {params:.2f} M, {gmacs:.2f} GMACs"
        )
        if args.step_batch:
            ms = step_ms(args.arch, args.width, args.frames, args.size, args.num_classes, args.step_batch, args.threads)
            print(f"training step of {args.step_batch} clips on {args.threads} CPU threads: {ms:.0f} ms (median of 10)")
        return 0

    print(
        f"{'model':<10} {'frames':>6} {'params (M)':>11} {'GMACs':>8}   (size {args.size}^2, "
        f"{args.num_classes} classes, 1 clip)"
    )
    for label, arch, width, frames in PAPER_CONFIGS:
        params, gmacs = stats(arch, width, frames, args.size, args.num_classes)
        print(f"{label:<10} {frames:>6} {params:>11.2f} {gmacs:>8.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
