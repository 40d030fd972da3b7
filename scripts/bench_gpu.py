"""GPU benchmark: R50 8x8 primary + R50x1/4 16x4 auxiliary at 224^2 with AMP.

Two measurements on one device, both through the project's own ``train_one_epoch``:

1. **compute**: in-memory uint8 batches already on the GPU (no data loading) for CMPL and FixMatch, per AMP
   mode: ms/step, clips/s, peak GPU memory and model FLOPs utilisation (MFU) against ``--peak-tflops``.
2. **pipeline**: the real decode + augment path (``ClipDecoder``: decord, kornia RandAugment) feeding CMPL
   steps from mp4s under ``--root``, through Ray Data's actor pool when Ray is installed, else through a
   ``torch.utils.data.DataLoader`` running the same decoder in worker processes. Prints end-to-end clips/s
   and the fraction of step time spent waiting for data.

Clips per step = B_l labeled + B_u unlabeled videos; each network sees B_l + 2 B_u clips (labeled, weak,
strong). FLOPs are counted with ``torch.utils.flop_counter``; a backward pass is taken as 2x the forward.

    python scripts/bench_gpu.py --root DIR_WITH_train.txt [--steps 30] [--amp bf16 fp16 none]
    python scripts/bench_gpu.py --device cpu --preset demo --steps 2 --root demo_data   # smoke run
    python scripts/bench_gpu.py --preset ucf101-1pct-r18 --set data.crop_size=112 --json bench.json

``--set`` overrides the preset (the networks, clip shape and crop the bench measures); ``--json`` also writes the
compute rows as a JSON list. ``--aux-variants`` adds CMPL rows with the auxiliary's cost hidden two ways:
``aux_stream`` (``train.aux_stream``: its forward/backward on a second CUDA stream; first checks that the gradients
match the one-stream step's) and ``compile_aux`` (``torch.compile`` of the auxiliary, compile time reported apart).
``studies/gpu_study.py`` calls :func:`compute_bench` in-process for its step costs.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from cmpl_ray.config import load_config  # noqa: E402
from cmpl_ray.models import build_model, count_flops  # noqa: E402
from cmpl_ray.train.loop import train_one_epoch  # noqa: E402


def networks(cfg, k, device):
    primary = build_model(cfg.model.primary_arch, k, cfg.model.primary_width, cfg.model.dropout)
    arch, width = cfg.aux_spec()
    aux = build_model(arch, k, width, cfg.model.dropout) if cfg.uses_aux else None
    nets = [m.to(device) for m in (primary, aux) if m is not None]
    if device.type == "cuda" and cfg.train.channels_last:
        nets = [m.to(memory_format=torch.channels_last_3d) for m in nets]
    params = [p for m in nets for p in m.parameters()]
    opt = torch.optim.SGD(params, lr=0.01, momentum=0.9, weight_decay=1e-4)
    return nets[0], (nets[1] if len(nets) > 1 else None), opt


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def random_batch(cfg, k, b_l, b_u, device):
    d = cfg.data
    s, tp, ta = d.crop_size or d.max_crop, d.raw_clip_len // d.primary_stride, d.raw_clip_len // d.aux_stride
    g = torch.Generator().manual_seed(0)

    def clip(n, t):  # (B, C, T, H, W) uint8
        return torch.randint(0, 256, (n, 3, t, s, s), dtype=torch.uint8, generator=g).to(device)

    b = {
        "l_p": clip(b_l, tp),
        "l_a": clip(b_l, ta),
        "u_weak_p": clip(b_u, tp),
        "u_strong_p": clip(b_u, tp),
        "u_weak_a": clip(b_u, ta),
        "u_strong_a": clip(b_u, ta),
        "y_l": torch.randint(0, k, (b_l,), generator=g).to(device),
        "y_u": torch.randint(0, k, (b_u,), generator=g).to(device),
        "l_valid": torch.ones(b_l, dtype=torch.bool, device=device),
        "u_valid": torch.ones(b_u, dtype=torch.bool, device=device),
    }
    if not cfg.uses_aux:
        b = {k2: v for k2, v in b.items() if not k2.endswith("_a")}
    return b


def step_flops(cfg, primary, aux, b_l, b_u):
    d = cfg.data
    s, tp, ta = d.crop_size or d.max_crop, d.raw_clip_len // d.primary_stride, d.raw_clip_len // d.aux_stride
    n = b_l + 2 * b_u
    f = count_flops(primary, (3, tp, s, s)) * n
    if aux is not None:
        f += count_flops(aux, (3, ta, s, s)) * n
    return 3 * f  # forward + backward (~2x forward)


def run_steps(cfg, nets, batches, steps, device, scaler, wait=None):
    primary, aux, opt = nets
    kw = dict(cfg=cfg, epoch=10, total_steps=10**6, device=device, scaler=scaler)
    train_one_epoch(primary, aux, opt, itertools.islice(batches, 3), steps=3, global_step=0, **kw)  # cudnn autotune
    sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    if wait is not None:
        wait[0] = 0.0
    t0 = time.perf_counter()
    res = train_one_epoch(primary, aux, opt, itertools.islice(batches, steps), steps=steps, global_step=3, **kw)
    sync(device)
    return res, time.perf_counter() - t0


def stream_grad_check(cfg, k, b_l, b_u, device) -> float:
    """Largest |grad difference| / largest |grad| between one CMPL step on one stream and on two (fp32)."""
    from cmpl_ray.algorithm import compute_objective

    torch.manual_seed(0)
    primary, aux, _ = networks(cfg, k, device)
    b = random_batch(cfg, k, b_l, b_u, device)
    x = {n: (v.float() / 255.0 if v.dtype == torch.uint8 else v) for n, v in b.items()}
    grads = []
    for stream in (None, torch.cuda.Stream(device)):
        for m in (primary, aux):
            m.zero_grad(set_to_none=True)
        torch.manual_seed(1)  # the same dropout masks: kernels are queued in the same order on either path
        loss, _ = compute_objective(
            primary, aux, x, algo="cmpl", threshold=0.05, bn_mode=cfg.algo.bn_mode, aux_stream=stream
        )
        loss.backward()
        sync(device)
        grads.append(torch.cat([p.grad.flatten() for m in (primary, aux) for p in m.parameters()]))
    return float((grads[0] - grads[1]).abs().max() / grads[0].abs().max().clamp(min=1e-12))


def compute_bench(args, device, k):
    """Prints the compute table; returns one dict per (amp, algo): ms/step, clips/s, peak GiB, MFU."""
    rows, ms, recs = [], {}, []
    variants = list(getattr(args, "aux_variants", None) or [])
    sets = list(getattr(args, "overrides", None) or [])
    for amp in args.amp:
        for algo in ["cmpl", "fixmatch"] + [f"cmpl+{v}" for v in variants]:
            base, _, variant = algo.partition("+")
            extra = ["train.aux_stream=true"] if variant == "aux_stream" else []
            cfg = load_config(
                args.preset, overrides=sets + [f"algo.name={base}", f"train.amp={amp}", "algo.threshold=0.05"] + extra
            )
            note = {}
            if variant == "aux_stream":
                if device.type != "cuda":
                    print(f"{algo}: skipped, a second stream needs CUDA")
                    continue
                note["grad_rel_diff_vs_one_stream"] = stream_grad_check(
                    load_config(args.preset, overrides=sets),
                    k,
                    args.batch_labeled,
                    args.batch_labeled * args.ratio,
                    device,
                )
                print(
                    f"{algo}: gradients vs one stream, max |diff| / max |grad| = "
                    f"{note['grad_rel_diff_vs_one_stream']:.2e}"
                )
            nets = networks(cfg, k, device)
            if variant == "compile_aux":
                nets = (nets[0], torch.compile(nets[1]), nets[2])
                t_c = time.perf_counter()
            b = random_batch(cfg, k, args.batch_labeled, args.batch_labeled * args.ratio, device)
            scaler = torch.amp.GradScaler("cuda") if amp == "fp16" and device.type == "cuda" else None
            if variant == "compile_aux":  # compiling happens on the first steps; time it apart from the steady ones
                run_steps(cfg, nets, itertools.repeat(b), 1, device, scaler)
                note["compile_s"] = time.perf_counter() - t_c
                print(f"{algo}: compile and first steps {note['compile_s']:.1f} s")
            res, wall = run_steps(cfg, nets, itertools.repeat(b), args.steps, device, scaler)
            per = wall / max(1, res.steps)
            clips = args.batch_labeled * (1 + args.ratio)
            mfu = (
                step_flops(cfg, nets[0], nets[1], args.batch_labeled, args.batch_labeled * args.ratio)
                / per
                / (args.peak_tflops * 1e12)
            )
            mem = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan")
            ms[(amp, algo)] = per * 1e3
            rows.append(f"| {algo} | {amp} | {per * 1e3:.1f} | {clips / per:.1f} | {mem:.1f} | {mfu:.3f} |")
            print(f"measured {rows[-1]}", flush=True)  # at once: a run cut off by a time limit keeps its rows
            recs.append(
                {
                    "algo": algo,
                    "amp": amp,
                    "ms_per_step": per * 1e3,
                    "clips_per_s": clips / per,
                    "peak_gib": mem if device.type == "cuda" else None,
                    "mfu": mfu,
                    "steps": res.steps,
                    "batch_labeled": args.batch_labeled,
                    "batch_unlabeled": args.batch_labeled * args.ratio,
                    **note,
                }
            )
            del nets, b
            if device.type == "cuda":
                torch.cuda.empty_cache()
    print(
        f"\ncompute only (batches resident on {device}), "
        f"B_l {args.batch_labeled} + B_u {args.batch_labeled * args.ratio} "
        f"videos/step, {args.steps} timed steps, peak {args.peak_tflops} TFLOP/s"
    )
    print("| algo | amp | ms/step | clips/s | peak GiB | MFU |\n|---|---|---|---|---|---|")
    print("\n".join(rows))
    for amp in args.amp:
        for algo in sorted(a for (m, a) in ms if m == amp and a.startswith("cmpl")):
            tag = amp if algo == "cmpl" else f"{amp},{algo.partition('+')[2]}"
            print(f"cmpl_vs_fixmatch_step[{tag}]: {ms[(amp, algo)] / ms[(amp, 'fixmatch')]:.3f}")
    return recs


class DecodedSteps(torch.utils.data.Dataset):
    """Step i = ClipDecoder on rows[i*B_l:(i+1)*B_l] (one labeled + ratio unlabeled videos per row)."""

    def __init__(self, decoder, rows, b_l):
        self.decoder, self.rows, self.b_l = decoder, rows, b_l

    def __len__(self):
        return len(self.rows) // self.b_l

    def __getitem__(self, i):
        out = self.decoder({"data": self.rows[i * self.b_l : (i + 1) * self.b_l]})
        return {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in out.items()}


def flat_u(batches, wait):
    """Flatten (B_l, ratio, ...) unlabeled arrays into (B_u, ...) and time the wait for each batch."""
    it = iter(batches)
    while True:
        t0 = time.perf_counter()
        try:
            b = next(it)
        except StopIteration:
            return
        wait[0] += time.perf_counter() - t0
        yield {k: (v.flatten(0, 1) if k.startswith(("u_", "y_u")) else v) for k, v in b.items()}


def pipeline_bench(args, device, k):
    from cmpl_ray.data.lists import read_list
    from cmpl_ray.data.pipeline import ClipDecoder, _pairs, epoch_rows

    amp = args.amp[0]
    cfg = load_config(
        args.preset,
        overrides=[
            f"data.root={args.root}",
            f"train.amp={amp}",
            "algo.threshold=0.5",
            f"train.batch_labeled={args.batch_labeled}",
            f"algo.unlabeled_ratio={args.ratio}",
            f"data.decode_actors={args.workers}",
        ],
    )
    items = read_list(os.path.join(args.root, "train.txt"))
    labeled, unlabeled = _pairs(items[: max(8, len(items) // 4)], args.root), _pairs(items, args.root)
    steps = args.steps + 3
    loader_kind = args.loader
    if loader_kind == "auto":
        try:
            import importlib

            importlib.import_module("ray")
            loader_kind = "ray"
        except ImportError:
            loader_kind = "torch"
    probe = ClipDecoder("train", dataclasses.asdict(cfg.data), k, cfg.uses_aux, 0)
    for kind in ("labeled", "unlabeled"):  # surface the real exception (workers only count bad samples)
        try:
            views, _, _ = probe._views(kind, labeled[0][0], labeled[0][1])
            print(f"preflight {kind}: " + ", ".join(f"{n} {tuple(v.shape)}" for n, v in views.items()))
        except Exception:
            import traceback

            traceback.print_exc()
    if loader_kind == "ray":
        import ray

        from cmpl_ray.data.pipeline import build_train_dataset

        ray.init(include_dashboard=False, log_to_driver=False)
        ds = build_train_dataset(cfg, items[: max(8, len(items) // 4)], items, k, world=1, steps=steps)
        batches = ds.iter_torch_batches(batch_size=args.batch_labeled, drop_last=True, prefetch_batches=4)
    else:
        rows = epoch_rows(len(labeled), len(unlabeled), steps * args.batch_labeled, args.ratio, seed=0)
        dec = ClipDecoder("train", dataclasses.asdict(cfg.data), k, cfg.uses_aux, 0, labeled, unlabeled, args.ratio)
        batches = torch.utils.data.DataLoader(
            DecodedSteps(dec, rows, args.batch_labeled),
            batch_size=None,
            num_workers=args.workers,
            prefetch_factor=4,
            pin_memory=device.type == "cuda",
            persistent_workers=False,
        )
    nets = networks(cfg, k, device)
    scaler = torch.amp.GradScaler("cuda") if amp == "fp16" and device.type == "cuda" else None
    wait = [0.0]
    gen = flat_u(batches, wait)
    res, wall = run_steps(cfg, nets, gen, args.steps, device, scaler, wait)
    clips = res.steps * args.batch_labeled * (1 + args.ratio)
    print(
        f"\npipeline ({loader_kind} loader, {args.workers} decode processes, {len(items)} videos under {args.root}, "
        f"amp {amp}):"
    )
    print(f"pipeline clips/s per GPU: {clips / wall:.1f} ({res.steps} steps in {wall:.1f} s)")
    print(f"data wait fraction: {wait[0] / wall:.3f}")
    mem = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan")
    print(f"peak GPU memory: {mem:.1f} GiB; bad samples: {len(res.bad_samples)}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="k400-1pct-r50")
    ap.add_argument("--root", default=None, help="dataset root with train.txt (omit to skip the pipeline part)")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--amp", nargs="+", default=["bf16", "fp16", "none"], choices=["none", "bf16", "fp16"])
    ap.add_argument("--batch-labeled", type=int, default=2, help="B_l per GPU (paper K400: 2)")
    ap.add_argument("--ratio", type=int, default=5, help="B_u / B_l (paper: 5)")
    ap.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) - 2))
    ap.add_argument("--loader", default="auto", choices=["auto", "ray", "torch"])
    ap.add_argument("--num-classes", type=int, default=400)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--peak-tflops", type=float, default=989.0, help="dense bf16 peak (H100/H200 SXM: 989)")
    ap.add_argument("--skip-compute", action="store_true")
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="config override (repeatable)")
    ap.add_argument("--json", default=None, help="also write the compute rows to this JSON file")
    ap.add_argument(
        "--aux-variants",
        nargs="*",
        default=[],
        choices=["aux_stream", "compile_aux"],
        help="extra CMPL rows with the auxiliary on a second CUDA stream / torch.compile'd",
    )
    args = ap.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("bench_gpu: no CUDA device here; run it on a GPU node (or --device cpu for a smoke run)")
        return 0
    torch.backends.cudnn.benchmark = True
    name = torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu"
    print(f"device: {name}, torch {torch.__version__}, preset {args.preset}")
    if not args.skip_compute:
        recs = compute_bench(args, device, args.num_classes)
        if args.json:
            import json

            with open(args.json, "w") as f:
                json.dump(
                    [{"device": name, "preset": args.preset, "overrides": args.overrides, **r} for r in recs],
                    f,
                    indent=1,
                )
    if args.root:
        pipeline_bench(args, device, args.num_classes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
