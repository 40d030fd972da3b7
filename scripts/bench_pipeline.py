"""Benchmark: the full unlabeled pipeline (decode + 4 augmented views) vs raw decord decode of the same frames.

Both run on the same machine and core count over the same videos and frame indices. Also measures Ray Data
throughput of the training stream with 1 and 2 decode actors, each with and without ``preserve_order`` (the
deterministic batch order the trainer uses), and the process's peak memory.
The last line is the headline: ``pipeline_vs_decode: <ratio>`` (target >= 0.8).

    python scripts/bench_pipeline.py [--videos 48] [--size 128] [--crop 112] [--frames 64] [--repeats 3]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import resource
import tempfile
import time

import numpy as np
import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--videos", type=int, default=48)
    ap.add_argument("--size", type=int, default=128, help="synthetic video side (when --root is not given)")
    ap.add_argument("--frames", type=int, default=96, help="frames per synthetic video")
    ap.add_argument("--crop", type=int, default=112)
    ap.add_argument("--raw", type=int, default=64, help="raw window (paper: 64); primary stride 8, aux stride 4")
    ap.add_argument("--root", default=None, help="dataset root with train.txt (default: write a synthetic set)")
    ap.add_argument("--no-ray", action="store_true", help="skip the Ray Data scaling part")
    ap.add_argument("--ray-steps", type=int, default=40, help="rows/2 streamed per Ray Data measurement")
    ap.add_argument("--repeats", type=int, default=1, help="Ray Data measurements per setting (ordered and not)")
    ap.add_argument("--actors", type=int, nargs="+", default=[1, 2], help="decode actor counts to measure")
    args = ap.parse_args()
    torch.set_num_threads(1)

    from cmpl_ray.config import load_config
    from cmpl_ray.data.lists import read_list
    from cmpl_ray.data.pipeline import ClipDecoder, _pairs
    from cmpl_ray.data.sampling import sample_train_indices
    from cmpl_ray.data.synth import make_synthetic_dataset
    from cmpl_ray.data.video_reader import probe, read_frames

    root = args.root or os.path.join(tempfile.mkdtemp(), "bench")
    if not args.root:
        per = max(1, args.videos // 8)
        make_synthetic_dataset(root, num_classes=8, per_class=per, num_frames=args.frames, size=args.size, seed=0)
    items = read_list(os.path.join(root, "train.txt"))[: args.videos]
    cfg = load_config(
        "demo",
        overrides=[
            f"data.root={root}",
            f"data.crop_size={args.crop}",
            f"data.train_short_side=[{args.crop}, {args.crop + 16}]",
            f"data.test_short_side={args.crop}",
            f"data.raw_clip_len={args.raw}",
            "data.primary_stride=8",
            "data.aux_stride=4",
            "data.time_offset=1.0",
        ],
    )
    pairs = _pairs(items, root)
    dc = cfg.data

    # 1) raw decode of the same frames (primary 8x8 + aux 16x4 window indices), short side = crop
    rng = np.random.default_rng(0)
    plans = []
    for path, _ in pairs:
        n, fps, h, w = probe(path)
        ip, ia = sample_train_indices(n, fps, dc.raw_clip_len, dc.primary_stride, dc.aux_stride, dc.time_offset, rng)
        plans.append((path, np.concatenate([ip, ia]), (h, w)))
    read_frames(plans[0][0], plans[0][1], short_side=dc.crop_size, src_hw=plans[0][2])  # warm-up
    t0 = time.perf_counter()
    for path, idx, hw in plans:
        read_frames(path, idx, short_side=dc.crop_size, src_hw=hw)
    decode_rate = len(plans) / (time.perf_counter() - t0)

    # 2) the full unlabeled pipeline: same decode + weak/strong views for both networks (4 views)
    dec = ClipDecoder("train", dataclasses.asdict(dc), 8, True, 0, pairs[:1], pairs, ratio=len(pairs))
    dec.safe_views("unlabeled", pairs[0][0], 0)  # warm-up
    t0 = time.perf_counter()
    for path, label in pairs:
        views, ok, _, _ = dec.safe_views("unlabeled", path, label)
        assert ok and len(views) == 4
    pipe_rate = len(pairs) / (time.perf_counter() - t0)
    print(f"videos: {len(pairs)} ({args.size}px source, crop {dc.crop_size}, 8x8 + 16x4 frames, 1 thread)")
    print(f"raw decode:        {decode_rate:7.1f} samples/s")
    print(f"decode + 4 views:  {pipe_rate:7.1f} samples/s")

    # 3) Ray Data training stream with 1 vs 2 decode actors (rows = 1 labeled + 4 unlabeled videos)
    if not args.no_ray:
        import ray

        from cmpl_ray.data.pipeline import build_train_dataset

        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
        for actors in args.actors:
            c = load_config(
                "demo",
                overrides=[
                    f"{k}={v}"
                    for k, v in {
                        **{
                            f"data.{f.name}": getattr(dc, f.name)
                            for f in dataclasses.fields(dc)
                            if f.name
                            in (
                                "root",
                                "crop_size",
                                "test_short_side",
                                "raw_clip_len",
                                "primary_stride",
                                "aux_stride",
                                "time_offset",
                            )
                        },
                        "data.train_short_side": f"[{dc.crop_size}, {dc.crop_size + 16}]",
                        "data.decode_actors": actors,
                        "data.cpus_per_decoder": 1,
                        "algo.unlabeled_ratio": 4,
                        "train.batch_labeled": 2,
                        "data.decode_batch": 2,
                    }.items()
                ],
            )
            rates: dict[bool, list[float]] = {False: [], True: []}
            for _ in range(args.repeats):  # interleaved, so a busy spell of the machine hits both alike
                for ordered in (False, True):
                    ds = build_train_dataset(
                        c, items[:8], items, 8, world=1, steps=args.ray_steps, preserve_order=ordered
                    )
                    it = iter(ds.iter_batches(batch_size=2, batch_format="numpy", prefetch_batches=4))
                    next(it)  # actor start-up is not throughput
                    t0 = time.perf_counter()
                    n = sum(int(b["l_p"].shape[0]) * 5 for b in it)  # 1 labeled + 4 unlabeled videos per row
                    rates[ordered].append(n / (time.perf_counter() - t0))
            for ordered in (False, True):
                r = rates[ordered]
                print(
                    f"ray data, {actors} decode actor(s), preserve_order {'on ' if ordered else 'off'}: "
                    f"{np.median(r):7.1f} videos/s (median of {len(r)}: {', '.join(f'{x:.1f}' for x in r)})"
                )
            print(
                f"ray data, {actors} decode actor(s): ordered / unordered = "
                f"{np.median(rates[True]) / np.median(rates[False]):.3f}"
            )
        ray.shutdown()
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS (driver): {peak_mb:.0f} MiB")
    print(f"pipeline_vs_decode: {pipe_rate / decode_rate:.3f}")


if __name__ == "__main__":
    main()
