"""Benchmark: one CMPL step vs one FixMatch step (same primary, same batch), and samples/s through a
1-worker Ray ``TorchTrainer`` vs a plain PyTorch loop on the same in-memory batches.

The last two lines are ``cmpl_vs_fixmatch_step: <ratio>`` (target <= 1.15) and ``ray_vs_plain: <ratio>``
(target >= 0.9).

    python scripts/bench_step.py [--preset demo] [--steps 20] [--set key=value ...]

``--bn-modes clean split`` times FixMatch and CMPL steps in each ``algo.bn_mode`` (interleaved, ``--repeats``
rounds, median) and prints ``<mode>_vs_<first mode>`` step ratios; ``--no-ray`` skips the TorchTrainer part.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import torch


def make_batch(cfg, k: int, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    d, b_l = cfg.data, cfg.train.batch_labeled
    b_u = b_l * cfg.algo.unlabeled_ratio
    tp, ta, s = d.raw_clip_len // d.primary_stride, d.raw_clip_len // d.aux_stride, d.crop_size or d.max_crop
    u8 = lambda *shape: torch.randint(0, 256, shape, dtype=torch.uint8, generator=g)  # noqa: E731
    batch = {
        "l_p": u8(b_l, 3, tp, s, s),
        "l_a": u8(b_l, 3, ta, s, s),
        "y_l": torch.randint(0, k, (b_l,), generator=g),
        "y_u": torch.randint(0, k, (b_u,), generator=g),
    }
    for v in ("weak", "strong"):
        batch[f"u_{v}_p"], batch[f"u_{v}_a"] = u8(b_u, 3, tp, s, s), u8(b_u, 3, ta, s, s)
    return batch


def time_steps(cfg, batches, k: int, device: torch.device | None = None) -> float:
    """Seconds per step of train_one_epoch over the given batches (after one warm-up step)."""
    from cmpl_ray.train.build import build_networks, make_optimizer
    from cmpl_ray.train.loop import train_one_epoch

    torch.manual_seed(0)
    primary, aux = build_networks(cfg, k)
    opt = make_optimizer(cfg, primary, aux)
    kw = dict(cfg=cfg, epoch=0, global_step=0, total_steps=10**6, device=device or torch.device("cpu"))
    train_one_epoch(primary, aux, opt, batches[:1], steps=1, **kw)
    t0 = time.perf_counter()
    train_one_epoch(primary, aux, opt, batches, steps=len(batches), **kw)
    return (time.perf_counter() - t0) / len(batches)


def ray_worker(config):
    import ray.train
    import ray.train.torch

    from cmpl_ray.config import from_dict
    from cmpl_ray.train.build import build_networks, make_optimizer
    from cmpl_ray.train.loop import train_one_epoch

    cfg = from_dict(config["cfg"])
    torch.set_num_threads(config["threads"])
    torch.manual_seed(0)
    primary, aux = build_networks(cfg, config["k"])
    opt = make_optimizer(cfg, primary, aux)
    primary = ray.train.torch.prepare_model(primary)
    aux = ray.train.torch.prepare_model(aux) if aux is not None else None
    batches = [make_batch(cfg, config["k"], seed=i) for i in range(config["steps"])]
    kw = dict(cfg=cfg, epoch=0, global_step=0, total_steps=10**6, device=ray.train.torch.get_device())
    train_one_epoch(primary, aux, opt, batches[:1], steps=1, **kw)
    t0 = time.perf_counter()
    train_one_epoch(primary, aux, opt, batches, steps=len(batches), **kw)
    sec = (time.perf_counter() - t0) / len(batches)
    with open(config["out"], "w") as f:  # V2's Result.metrics only carries metrics reported with a checkpoint
        f.write(str(sec))
    ray.train.report({"sec_per_step": sec})


def compare_bn_modes(args, k: int) -> None:
    """Median step time of FixMatch and CMPL in each BN mode, modes interleaved so that load drifts cancel."""
    from cmpl_ray.config import load_config

    cfgs = {
        (m, a): load_config(
            args.preset, overrides=args.overrides + [f"algo.name={a}", "algo.threshold=0.5", f"algo.bn_mode={m}"]
        )
        for m in args.bn_modes
        for a in ("fixmatch", "cmpl")
    }
    batches = [make_batch(cfgs[(args.bn_modes[0], "cmpl")], k, seed=i) for i in range(args.steps)]
    times: dict[tuple, list[float]] = {key: [] for key in cfgs}
    for _ in range(args.repeats):
        for key, cfg in cfgs.items():
            times[key].append(time_steps(cfg, batches, k))
    med = {key: sorted(v)[len(v) // 2] for key, v in times.items()}
    base = args.bn_modes[0]
    for m in args.bn_modes:
        print(
            f"bn_mode {m}: fixmatch {med[(m, 'fixmatch')] * 1000:.0f} ms  cmpl {med[(m, 'cmpl')] * 1000:.0f} ms  "
            f"cmpl/fixmatch {med[(m, 'cmpl')] / med[(m, 'fixmatch')]:.3f}"
        )
    for m in args.bn_modes[1:]:
        for a in ("fixmatch", "cmpl"):
            print(f"{a}_{m}_vs_{base}: {med[(m, a)] / med[(base, a)]:.3f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="demo")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--bn-modes", nargs="+", default=[])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--no-ray", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from cmpl_ray.config import load_config

    k = 8
    if args.bn_modes:
        compare_bn_modes(args, k)
        if args.no_ray:
            return
    cfg_f = load_config(args.preset, overrides=args.overrides + ["algo.name=fixmatch", "algo.threshold=0.5"])
    cfg_c = load_config(args.preset, overrides=args.overrides + ["algo.name=cmpl", "algo.threshold=0.5"])
    batches = [make_batch(cfg_c, k, seed=i) for i in range(args.steps)]
    t_fix = time_steps(cfg_f, batches, k)
    t_cmpl = time_steps(cfg_c, batches, k)
    clips = cfg_c.train.batch_labeled * (1 + cfg_c.algo.unlabeled_ratio)
    print(
        f"preset {args.preset}: {clips} clips/step ({cfg_c.model.primary_arch} x{cfg_c.model.primary_width} + "
        f"{cfg_c.aux_spec()[0]} x{cfg_c.aux_spec()[1]}), {args.threads} thread(s)"
    )
    print(f"fixmatch step: {t_fix * 1000:.0f} ms   cmpl step: {t_cmpl * 1000:.0f} ms")

    import ray
    from ray.train import ScalingConfig
    from ray.train.torch import TorchTrainer

    ray.init(num_cpus=max(2, args.threads + 1), include_dashboard=False, log_to_driver=False)
    out = os.path.join(tempfile.mkdtemp(), "sec_per_step")
    trainer = TorchTrainer(
        ray_worker,
        train_loop_config={"cfg": cfg_c.to_dict(), "k": k, "steps": args.steps, "threads": args.threads, "out": out},
        scaling_config=ScalingConfig(num_workers=1, resources_per_worker={"CPU": args.threads}),
    )
    trainer.fit()
    t_ray = float(open(out).read())
    ray.shutdown()
    t_plain = time_steps(cfg_c, batches, k)  # again after Ray, so both see the same machine state
    print(f"samples/s plain loop: {clips / t_plain:.1f}   through TorchTrainer (1 worker): {clips / t_ray:.1f}")
    print(f"cmpl_vs_fixmatch_step: {t_cmpl / t_fix:.3f}")
    print(f"ray_vs_plain: {t_plain / t_ray:.3f}")


if __name__ == "__main__":
    main()
