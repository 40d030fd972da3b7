"""GPU benchmark: R50 8x8 primary + R50x1/4 16x4 auxiliary at 224^2 with AMP through the real pipeline.

Ray Data decodes and augments synthetic mp4s (or ``--root`` with train.txt) in an actor pool and feeds a CMPL
training loop on one CUDA device. Prints clips/s per GPU, peak GPU memory, the fraction of step time spent
waiting for data, and model FLOPs utilisation (MFU) against the GPU's dense bf16 peak (``--peak-tflops``).
Exits with a message on machines without CUDA.

    python scripts/bench_gpu.py [--steps 30] [--amp bf16] [--decode-actors 12]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import torch


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--amp", default="bf16", choices=["none", "bf16", "fp16"])
    ap.add_argument("--decode-actors", type=int, default=max(1, (os.cpu_count() or 2) - 2))
    ap.add_argument("--batch-labeled", type=int, default=2)
    ap.add_argument("--ratio", type=int, default=5)
    ap.add_argument("--root", default=None)
    ap.add_argument("--peak-tflops", type=float, default=989.0, help="dense bf16 peak (H100/H200 SXM: 989)")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("bench_gpu: no CUDA device here; run it on a GPU node")
        return 0
    import ray

    from cmpl_ray.config import load_config
    from cmpl_ray.data.lists import read_list
    from cmpl_ray.data.pipeline import build_train_dataset
    from cmpl_ray.data.synth import make_synthetic_dataset
    from cmpl_ray.models import count_flops
    from cmpl_ray.train.loop import train_one_epoch
    from cmpl_ray.train.worker import build_networks, make_optimizer

    root = args.root or os.path.join(tempfile.mkdtemp(), "gpu_bench")
    if not args.root:
        make_synthetic_dataset(root, num_classes=8, per_class=40, num_frames=96, size=256, seed=0)
    items = read_list(os.path.join(root, "train.txt"))
    cfg = load_config("k400-1pct-r50", overrides=[
        f"data.root={root}", f"train.amp={args.amp}", f"train.batch_labeled={args.batch_labeled}",
        f"algo.unlabeled_ratio={args.ratio}", f"data.decode_actors={args.decode_actors}", "data.time_offset=2",
        "data.train_short_side=[256, 256]", "model.num_classes=400", "train.num_workers=1", "algo.threshold=0.5"])
    ray.init(include_dashboard=False, log_to_driver=False)
    steps = args.steps + 3
    ds = build_train_dataset(cfg, items[:16], items, 400, world=1, steps=steps)
    device = torch.device("cuda")
    primary, aux = build_networks(cfg, 400)
    primary, aux = primary.to(device).to(memory_format=torch.channels_last_3d), aux.to(device).to(
        memory_format=torch.channels_last_3d)
    opt = make_optimizer(cfg, primary, aux)
    scaler = torch.amp.GradScaler("cuda") if args.amp == "fp16" else None
    wait = [0.0]

    def timed(it):
        while True:
            t0 = time.perf_counter()
            try:
                b = next(it)
            except StopIteration:
                return
            torch.cuda.synchronize()
            wait[0] += time.perf_counter() - t0
            for k in list(b):
                if k.startswith("u_") or k == "y_u":
                    b[k] = b[k].flatten(0, 1)
            yield b

    it = iter(ds.iter_torch_batches(batch_size=args.batch_labeled, drop_last=True, prefetch_batches=4))
    kw = dict(cfg=cfg, epoch=0, total_steps=10**6, device=device, scaler=scaler)
    train_one_epoch(primary, aux, opt, timed(it), steps=3, global_step=0, **kw)  # warm-up (cudnn autotune)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    wait[0] = 0.0
    t0 = time.perf_counter()
    res = train_one_epoch(primary, aux, opt, timed(it), steps=args.steps, global_step=3, **kw)
    torch.cuda.synchronize()
    wall = time.perf_counter() - t0
    b_l, b_u = args.batch_labeled, args.batch_labeled * args.ratio
    n_p, n_a = b_l + 2 * b_u, b_l + 2 * b_u  # clips per network per step (labeled + weak + strong)
    fl_p = count_flops(primary, (1, 3, 8, 224, 224))
    fl_a = count_flops(aux, (1, 3, 16, 224, 224))
    step_flops = 3 * (n_p * fl_p + n_a * fl_a)  # forward + backward ~ 3x forward
    clips = res.steps * (b_l + b_u)
    print(f"device: {torch.cuda.get_device_name(0)}, amp {args.amp}, B_l {b_l}, B_u {b_u}, "
          f"{args.decode_actors} decode actors, {res.steps} steps")
    print(f"clips/s per GPU: {clips / wall:.1f}")
    print(f"peak GPU memory: {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB")
    print(f"data wait fraction: {wait[0] / wall:.3f}")
    print(f"MFU: {step_flops * res.steps / wall / (args.peak_tflops * 1e12):.3f}")
    ray.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
