#!/usr/bin/env python
"""GPU study: supervised / FixMatch / CMPL on one suite family, R18-class networks, 3 seeds, one command.

Why it is built this way:

* The lent GPU machine has no Ray, decord, PyAV or kornia and no network. So the runs go through the Ray-free
  runner (``cmpl_ray.train.local``: the trainer's ``ClipDecoder``, loop and evaluation; it imports neither Ray
  nor MLflow) and the family's videos are rendered in memory (``render_family_clip`` with ``write_family``'s
  per-video seeds: the frames ``write_family`` would encode, without the codec), served to the decoder in place
  of ``decode.read_sampled``. A missing decord becomes a stub module (only its import is needed), a missing
  kornia turns RandAugment off, a missing scikit-image (photo backgrounds) switches to the ``speed`` family;
  each is printed and recorded.
* A command there may run 10 minutes and the whole lease is 15 minutes, start-up included. The run length is
  sized from what the machine measures before the first run (``bench_gpu.compute_bench``'s step on the
  study's networks and batch, the decoder's per-row cost on one core) so that all runs fit ``--budget-s``;
  runs go seed by seed (a cut-off still leaves complete, paired seeds), a run whose estimate no longer fits is
  skipped, and every finished run is appended to the results file at once.

Under ``--out``: ``gpu_study.jsonl`` (one JSON record per line, ``kind`` = env, plan, bench, run, skipped, error,
summary) and ``gpu_study.txt`` (the table, rewritten after each run).

    bash studies/gpu_study.sh                 # on the GPU machine (the device tool sets OUT)
    bash studies/gpu_study.sh --smoke         # CPU check: tiny networks and data, 2 seeds, 1-2 minutes
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import multiprocessing as mp
import os
import sys
import tempfile
import time
import traceback

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "studies"), os.path.join(ROOT, "scripts")]  # bench_gpu is a tool
T0 = float(os.environ.get("GPU_STUDY_T0") or time.time())  # the wrapper's start: the budget counts imports too
PAIRS = (
    ("fixmatch", "supervised"),
    ("cmpl", "fixmatch"),
    ("cmpl", "supervised"),
    ("cmpl-maximum", "fixmatch"),
    ("cmpl-maximum", "cmpl"),
)


def algo_sets(algo: str) -> list[str]:
    """``cmpl`` -> algo.name=cmpl; ``cmpl-maximum`` -> CMPL with Appendix A's ``maximum`` scheme (any scheme)."""
    from cmpl_ray.algorithm import SCHEMES

    base, _, scheme = algo.partition("-")
    if base not in ("supervised", "fixmatch", "cmpl") or (scheme and (base != "cmpl" or scheme not in SCHEMES)):
        raise SystemExit(
            f"gpu_study: --algos {algo!r}: use supervised, fixmatch, cmpl or cmpl-<scheme> with a scheme of {SCHEMES}"
        )
    return [f"algo.name={base}"] + ([f"algo.scheme={scheme}"] if scheme else [])


from gpu_study_data import check_env, make_family  # noqa: E402  (studies/ is on sys.path above)


def say(msg: str) -> None:
    print(f"[gpu_study {time.time() - T0:5.0f} s] {msg}", flush=True)


def clean(x):
    """JSON-safe: NaN/inf -> None (strict JSON readers refuse NaN), numpy scalars -> Python."""
    if isinstance(x, dict):
        return {str(k): clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [clean(v) for v in x]
    if isinstance(x, (float, np.floating)):
        return float(x) if math.isfinite(x) else None
    return int(x) if isinstance(x, np.integer) else x


def study_sets(args, root: str, fam, have: dict[str, bool], on_gpu: bool) -> list[str]:
    """Overrides on ``--preset`` (networks from it): the suite-cpu data/algorithm recipe at ``--crop`` px."""
    s = [
        f"data.root={root}",
        f"data.val_list={root}/val.txt",
        f"data.classes_file={root}/classes.txt",
        f"data.crop_size={args.crop}",
        f"data.train_short_side=[{args.crop},{round(args.crop * 8 / 7)}]",
        f"data.test_short_side={args.crop}",
        "data.time_offset=1.0",
        "data.eval_clips=2",
        "data.eval_crops=1",
        f"data.randaug_n={2 if have['kornia'] else 0}",
        "data.randaug_m=10",
        "data.cutout=0.5",
        "algo.threshold=0.9",
        "algo.lambda_u=1.0",
        f"algo.unlabeled_ratio={args.ratio}",
        "algo.bn_mode=clean",
        "optim.lr=0.1",
        "optim.weight_decay=0.0005",
        f"train.batch_labeled={args.batch_labeled}",
        f"train.amp={'bf16' if on_gpu else 'none'}",
        "train.ema_decay=0.99",
        "train.passes=0",
        "train.min_steps=0",
        "train.log_every=1000000",
        "tracking.enabled=false",
    ]
    s += [f"data.raw_clip_len={args.clip[0]}", f"data.primary_stride={args.clip[1]}", f"data.aux_stride={args.clip[2]}"]
    if fam.flip_pairs:
        s.append("data.flip_label_map=" + ",".join(f"{a}:{b}" for a, b in fam.flip_pairs))
    if args.smoke:
        s += ["model.primary_arch=tiny", "model.aux_arch=tiny", "model.aux_width=0.5", "data.eval_clips=1"]
    return s + args.overrides


def probe_loader(cfg, k: int, lab, unl, b_l: int, ratio: int) -> tuple[float, float]:
    """Seconds for one process to decode one step's batch: (labeled only, labeled + unlabeled)."""
    import torch

    from cmpl_ray.data.pipeline import ClipDecoder

    threads, out = torch.get_num_threads(), []
    for u in ([], unl):
        dec = ClipDecoder("train", dataclasses.asdict(cfg.data), k, cfg.uses_aux, 0, lab, u or None, ratio if u else 0)
        rows = np.array(
            [[i % len(lab)] + ([(i * ratio + j) % len(u) for j in range(ratio)] if u else []) for i in range(b_l)]
        )
        dec({"data": rows[:1]})  # warm-up (kornia's first call)
        t = time.perf_counter()
        dec({"data": rows})
        out.append(time.perf_counter() - t)
    torch.set_num_threads(threads)  # ClipDecoder pins its process to one thread
    return out[0], out[1]


def summarize(runs: list[dict], algos: list[str]) -> dict:
    """Mean top-1 per algorithm, and the paired per-seed differences (the same split and seed on both sides)."""
    by = {(r["algo"], r["seed"]): r["val_top1"] for r in runs}
    out = {"mean": {}, "diff": {}}
    for a in algos:
        v = [t for (aa, _), t in by.items() if aa == a]
        aux = [r["aux_val_top1"] for r in runs if r["algo"] == a and "aux_val_top1" in r]
        if v:
            std = float(np.std(v, ddof=1)) if len(v) > 1 else None
            out["mean"][a] = {
                "top1": float(np.mean(v)),
                "std": std,
                "n": len(v),
                **({"aux_top1": float(np.mean(aux))} if aux else {}),
            }
    for a, b in PAIRS:
        if a in algos and b in algos:
            d = {s: by[(a, s)] - by[(b, s)] for (aa, s) in by if aa == a and (b, s) in by}
            if d:
                out["diff"][f"{a}-{b}"] = {"per_seed": d, "mean": float(np.mean(list(d.values()))), "n": len(d)}
    return out


def write_table(path: str, head: str, runs: list[dict], algos: list[str], seeds: list[int], summ: dict) -> None:
    pairs = [f"{a}-{b}" for a, b in PAIRS[:2] if a in algos and b in algos]
    by = {(r["algo"], r["seed"]): r for r in runs}
    lines = [
        head,
        "",
        "| seed | " + " | ".join(algos) + " | " + " | ".join(pairs) + " |",
        "|---" * (1 + len(algos) + len(pairs)) + "|",
    ]

    def cell(r):
        aux = f" (aux {r['aux_val_top1']:.1f})" if r and "aux_val_top1" in r else ""
        return "-" if r is None else f"{r['val_top1']:.1f}{aux}"

    for s in seeds:
        d = [summ["diff"].get(p, {}).get("per_seed", {}).get(s) for p in pairs]
        lines.append(
            f"| {s} | "
            + " | ".join(cell(by.get((a, s))) for a in algos)
            + " | "
            + " | ".join("-" if x is None else f"{x:+.1f}" for x in d)
            + " |"
        )
    m = [summ["mean"].get(a) for a in algos]
    lines.append(
        "| mean | "
        + " | ".join("-" if x is None else f"{x['top1']:.1f} (n={x['n']})" for x in m)
        + " | "
        + " | ".join(f"{summ['diff'][p]['mean']:+.1f}" if p in summ["diff"] else "-" for p in pairs)
        + " |"
    )
    lines += [
        "",
        "runs: "
        + "; ".join(f"{r['algo']} s{r['seed']} {r['seconds']:.0f} s ({r['ms_per_step']:.0f} ms/step)" for r in runs),
    ]
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=os.environ.get("OUT") or "outputs/gpu_study")
    ap.add_argument("--family", default="heldout")
    ap.add_argument("--labels", type=int, default=10, help="labeled videos per class")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument(
        "--algos",
        nargs="+",
        default=["supervised", "fixmatch", "cmpl"],
        help="also cmpl-<scheme>, e.g. cmpl-maximum (Appendix A; best on the CPU few-label run)",
    )
    ap.add_argument("--preset", default="ucf101-1pct-r18", help="the networks (R18 primary, R50x1/4 auxiliary)")
    ap.add_argument("--crop", type=int, default=112)
    ap.add_argument("--clip", type=int, nargs=3, default=[32, 2, 4], metavar=("WINDOW", "P_STRIDE", "A_STRIDE"))
    ap.add_argument("--batch-labeled", type=int, default=8)
    ap.add_argument("--ratio", type=int, default=3, help="B_u / B_l (suite-cpu's; the paper's 5 costs ~35%% more)")
    ap.add_argument("--per-class", type=int, default=60)
    ap.add_argument("--val-per-class", type=int, default=50)
    ap.add_argument("--budget-s", type=float, default=480, help="wall time for everything, from the wrapper's start")
    ap.add_argument("--steps", type=int, default=None, help="steps per run (default: sized to the budget)")
    ap.add_argument("--min-steps", type=int, default=100, help="sized runs are clipped to [min, max] steps")
    ap.add_argument("--max-steps", type=int, default=4000)
    ap.add_argument("--epochs", type=int, default=1, help="evaluations per run (each restarts the loader)")
    ap.add_argument("--bench-steps", type=int, default=10)
    ap.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) - 2), help="loader processes")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--pretend-missing", nargs="*", default=[], help="act as if these packages were absent")
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="config override (repeatable)")
    ap.add_argument("--smoke", action="store_true", help="CPU check: tiny networks, data and steps, seeds 0 1")
    args = ap.parse_args()
    for a in args.algos:
        algo_sets(a)  # refuse a bad name before anything runs
    if args.smoke:
        args.crop, args.clip, args.batch_labeled, args.ratio, args.labels = 24, [8, 1, 2], 2, 1, 2
        args.per_class, args.val_per_class, args.bench_steps, args.workers = 4, 2, 1, 1
        args.steps = 2 if args.steps is None else args.steps
        args.seeds = args.seeds if args.seeds != [0, 1, 2] else [0, 1]
    return args


def main() -> int:
    args = parse_args()
    os.makedirs(args.out, exist_ok=True)
    res_path, txt_path = os.path.join(args.out, "gpu_study.jsonl"), os.path.join(args.out, "gpu_study.txt")
    open(res_path, "w").close()

    def record(rec: dict) -> None:
        with open(res_path, "a") as f:
            f.write(json.dumps(clean(rec)) + "\n")

    have, notes = check_env(args.pretend_missing)
    from cmpl_ray.data.suite import FAMILIES

    fam = FAMILIES[args.family]
    if fam.background == "photo" and not have["skimage"]:
        notes.append(f"scikit-image missing: family {fam.name} needs its photographs; using 'speed'")
        fam = FAMILIES["speed"]
    if args.smoke:  # half the resolution, 16 frames: the same code path at a fraction of the rendering cost
        fam = dataclasses.replace(fam, width=fam.width // 2, height=fam.height // 2, frames=min(fam.frames, 16))
    for n in notes:
        say(n)
    data, t = tempfile.mkdtemp(prefix="gpu_study_"), time.time()
    procs = 1 if args.smoke else min(16, os.cpu_count() or 1)
    store = make_family(fam, args.per_class, args.val_per_class, procs, data)
    say(
        f"rendered {fam.name} ({len(fam.classes)} classes, {fam.width}x{fam.height}x{fam.frames}): "
        f"{len(store.videos)} videos in memory in {time.time() - t:.1f} s"
    )

    import torch

    if args.smoke:
        torch.set_num_threads(1)  # a shared 2-core machine: spinning OpenMP threads cost more than they give
    import cmpl_ray.data.clip_decoder as decoder_mod
    from cmpl_ray.config import load_config
    from cmpl_ray.data.lists import read_list, split_labeled, write_list
    from cmpl_ray.data.pipeline import _pairs
    from cmpl_ray.train.local import resolve_device, run_local

    decoder_mod.read_sampled = store.read_sampled  # every ClipDecoder (train and val) reads from memory
    if mp.get_start_method(allow_none=True) is None:
        mp.set_start_method("fork")  # loader workers inherit the rendered videos and the patch
    dev = resolve_device(args.device)
    torch.backends.cudnn.benchmark = dev.type == "cuda"  # fixed clip shapes (run_local sets it too)
    dev_name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"
    shm = os.statvfs("/dev/shm") if os.path.isdir("/dev/shm") else None  # loader batches travel through it
    shm_gib = shm.f_bavail * shm.f_frsize / 2**30 if shm else float("nan")
    if shm_gib < 2 and args.workers > 2:  # 4 batches in flight per worker (~50 MB each at 112 px)
        notes.append(f"/dev/shm has {shm_gib:.2f} GiB free: loader workers {args.workers} -> 2")
        args.workers = 2
    record(
        {
            "kind": "env",
            "python": sys.version.split()[0],
            "torch": torch.__version__,
            "device": dev_name,
            "cpus": os.cpu_count(),
            "shm_free_gib": shm_gib,
            "have": have,
            "notes": notes,
            "pretend_missing": args.pretend_missing,
        }
    )
    say(
        f"device {dev_name}, torch {torch.__version__}, {os.cpu_count()} CPUs, /dev/shm {shm_gib:.1f} GiB free, "
        f"missing: {[m for m, ok in have.items() if not ok] or 'none'}; loader workers {args.workers}"
    )

    sets = study_sets(args, data, fam, have, dev.type == "cuda")
    k, amp = len(fam.classes), ("bf16" if dev.type == "cuda" else "none")
    b_l, b_u = args.batch_labeled, args.batch_labeled * args.ratio
    train_items, splits = read_list(os.path.join(data, "train.txt")), {}
    for s in args.seeds:  # recipe_study.split_lists' split: labels per class drawn with the run's seed
        parts = split_labeled(train_items, per_class=args.labels, seed=s)
        splits[s] = [os.path.join(data, f"{n}_s{s}.txt") for n in ("labeled", "unlabeled")] + [len(x) for x in parts]
        for path, x in zip(splits[s], parts):
            write_list(path, x)

    # --- measure (bench_gpu's compute step, one process's decode per batch) and size the runs to the budget
    ms_gpu = {}
    try:
        import bench_gpu

        ns = argparse.Namespace(
            preset=args.preset,
            overrides=sets,
            amp=[amp],
            batch_labeled=b_l,
            ratio=args.ratio,
            steps=args.bench_steps,
            peak_tflops=989.0,
            aux_variants=["aux_stream"] if dev.type == "cuda" else [],
        )
        bench = bench_gpu.compute_bench(ns, dev, k)
        ms_gpu = {r["algo"]: r["ms_per_step"] for r in bench}
        record({"kind": "bench", "device": dev_name, "preset": args.preset, "rows": bench})
    except Exception:
        record({"kind": "error", "stage": "bench", "traceback": traceback.format_exc()})
        traceback.print_exc()
    if dev.type == "cuda":
        torch.cuda.empty_cache()
    lab0, unl0 = (_pairs(read_list(path), data) for path in splits[args.seeds[0]][:2])
    sup_s, semi_s = probe_loader(load_config(args.preset, overrides=sets), k, lab0, unl0, b_l, args.ratio)
    fix_gpu, w = ms_gpu.get("fixmatch", 0.0), args.workers
    est = {
        "supervised": max(fix_gpu * b_l / (b_l + 2 * b_u), sup_s * 1e3 / w),  # no bench row: its clip share
        "fixmatch": max(fix_gpu, semi_s * 1e3 / w),
        "cmpl": max(ms_gpu.get("cmpl", 0.0), semi_s * 1e3 / w),
    }
    est.update({a: est[a.partition("-")[0]] for a in args.algos})  # a scheme variant costs what its algorithm does
    n_val = len(read_list(os.path.join(data, "val.txt")))
    overhead = (8.0 if dev.type == "cuda" else 3.0) + n_val * sup_s / b_l  # loader start, build, evaluation
    safety, n_runs = 1.25, len(args.seeds) * len(args.algos)
    avail = args.budget_s - (time.time() - T0) - 10.0  # 10 s for the summary and the exit
    per_step = len(args.seeds) * sum(est[a] for a in args.algos) / 1e3 * safety
    steps = args.steps or int(max(args.min_steps, min(args.max_steps, (avail - n_runs * overhead) / per_step)))
    steps = max(args.epochs, steps // args.epochs * args.epochs)
    plan = {
        "kind": "plan",
        "family": fam.name,
        "classes": k,
        "labels_per_class": args.labels,
        "seeds": args.seeds,
        "algos": args.algos,
        "steps": steps,
        "epochs": args.epochs,
        "crop": args.crop,
        "batch_labeled": b_l,
        "batch_unlabeled": b_u,
        "workers": w,
        "est_ms_per_step": est,
        "decode_s_per_batch": [sup_s, semi_s],
        "overhead_s_per_run": overhead,
        "safety": safety,
        "budget_s": args.budget_s,
        "available_s": avail,
        "est_total_s": n_runs * overhead + steps * per_step,
        "sets": sets,
    }
    record(plan)
    say(
        f"plan: {n_runs} runs x {steps} steps of B_l {b_l} + B_u {b_u} at {args.crop} px; est ms/step "
        + ", ".join(f"{a} {est[a]:.0f}" for a in args.algos)
        + f" (bench: {', '.join(f'{a} {v:.0f}' for a, v in ms_gpu.items()) or 'n/a'}; decode "
        + f"{semi_s * 1e3:.0f} ms/batch/process over {w} workers); ~{overhead:.0f} s overhead per run; "
        + f"est {plan['est_total_s']:.0f} s of {avail:.0f} s left"
    )

    head = (
        f"GPU study: family {fam.name} ({k} classes), {args.labels} labels/class, {n_val} val videos, "
        f"{args.preset} networks at {args.crop} px, {steps} steps of B_l {b_l} + B_u {b_u}, {dev_name} ({amp}); "
        f"notes: {'; '.join(notes) or 'none'}"
    )
    runs, actual, out_of_time = [], {}, False
    for s in args.seeds:
        lab_p, unl_p, n_lab, n_unl = splits[s]
        for algo in args.algos:
            guess = actual.get(algo) or overhead + steps * est[algo] / 1e3 * safety
            if out_of_time or time.time() - T0 + guess > args.budget_s - 5:  # later runs would be unpaired
                out_of_time = True
                say(f"skip {algo} seed {s}: ~{guess:.0f} s would pass the {args.budget_s:.0f} s budget")
                record({"kind": "skipped", "algo": algo, "seed": s, "est_s": guess})
                continue
            run_sets = sets + [
                f"data.labeled_list={lab_p}",
                f"data.unlabeled_list={unl_p}",
                *algo_sets(algo),
                f"train.seed={s}",
                f"train.epochs={args.epochs}",
                f"train.eval_every={args.epochs}",
                f"train.steps_per_epoch={steps // args.epochs}",
                f"optim.warmup_epochs={0.034 * args.epochs:.4f}",  # suite-cpu's fractions of the run
                f"algo.unsup_warmup_epochs={args.epochs / 4:.4f}",
            ]
            try:
                r = run_local(
                    load_config(args.preset, overrides=run_sets),
                    loader_workers=w,
                    device=str(dev),
                    log=lambda m, algo=algo, s=s: say(f"{algo} s{s} {m}"),
                )
            except Exception:
                record({"kind": "error", "stage": "run", "algo": algo, "seed": s, "traceback": traceback.format_exc()})
                traceback.print_exc()
                continue
            actual[algo] = r["seconds"]
            rec = {
                "kind": "run",
                "family": fam.name,
                "algo": algo,
                "seed": s,
                "labels_per_class": args.labels,
                "labeled": n_lab,
                "unlabeled": n_unl if algo != "supervised" else 0,
                "val": n_val,
                "ms_per_step": sum(h["epoch_seconds"] for h in r["history"]) / steps * 1e3,
                "est_ms_per_step": est[algo],
                **{key: v for key, v in r.items() if key != "class_names"},
            }
            runs.append(rec)
            record(rec)
            say(
                f"{algo} seed {s}: top-1 {r['val_top1']:.1f}"
                + (f" (aux {r['aux_val_top1']:.1f})" if "aux_val_top1" in r else "")
                + f", {r['seconds']:.0f} s ({rec['ms_per_step']:.0f} ms/step), skipped clips {r['skipped_samples']}"
            )
            write_table(txt_path, head, runs, args.algos, args.seeds, summarize(runs, args.algos))
    summ = summarize(runs, args.algos)
    record({"kind": "summary", **summ, "runs": len(runs), "planned": n_runs, "seconds": time.time() - T0})
    write_table(txt_path, head, runs, args.algos, args.seeds, summ)
    print(open(txt_path).read(), flush=True)
    say(f"done: {len(runs)}/{n_runs} runs; results in {res_path}")
    return 0 if runs else 1


if __name__ == "__main__":
    sys.exit(main())
