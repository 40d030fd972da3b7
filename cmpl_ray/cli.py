"""The ``cmpl-ray`` command: one sub-command per user task; each parses flags and calls library code.

Errors a user can fix (bad config value, missing list, unreadable checkpoint) print one line naming the
problem and exit with status 2; no traceback reaches the user.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from .config import ConfigError, load_config, preset_names, save_config


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", default=None, help=f"config preset: {', '.join(preset_names())}")
    p.add_argument("--config", default=None, help="YAML file with config sections (applied after the preset)")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key, e.g. --set algo.threshold=0.95 (repeatable)",
    )


def _config(args):
    if not args.preset and not args.config:
        raise ConfigError("--preset or --config is required")
    return load_config(args.preset, args.config, args.overrides)


def cmd_config(args) -> int:
    cfg = _config(args)
    if args.out:
        save_config(cfg, args.out)
        print(f"wrote {args.out}")
    else:
        import yaml

        print(yaml.safe_dump(cfg.to_dict(), sort_keys=False), end="")
    return 0


def _console(args) -> None:
    """Quiet unless --verbose or CMPL_VERBOSE=1: Ray's own output goes to <output dir>/ray.log (console.py)."""
    from .train import console

    console.configure(verbose=getattr(args, "verbose", False))


def _add_verbose(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="also print Ray's own log lines (default: they go to ray.log in the output folder; "
        "the env var CMPL_VERBOSE=1 does the same, e.g. under ray job submit)",
    )


def cmd_train(args) -> int:
    from .train.launch import run_training

    cfg = _config(args)
    _console(args)
    if args.resume:
        cfg.run.resume = args.resume
    run_training(cfg, fresh=args.fresh)
    return 0


def cmd_step(args) -> int:
    """One CMPL step on random clips: a smoke test of models + objective without data or Ray."""
    import torch

    from .algorithm import compute_objective
    from .train.build import build_networks, make_optimizer, objective_kwargs

    cfg = _config(args)
    torch.manual_seed(cfg.train.seed)
    k = cfg.model.num_classes or 10
    primary, aux = build_networks(cfg, k)
    opt = make_optimizer(cfg, primary, aux)
    d, b_l = cfg.data, cfg.train.batch_labeled
    b_u = b_l * cfg.algo.unlabeled_ratio
    tp, ta, s = d.raw_clip_len // d.primary_stride, d.raw_clip_len // d.aux_stride, d.crop_size or d.max_crop
    batch = {
        "l_p": torch.randn(b_l, 3, tp, s, s),
        "l_a": torch.randn(b_l, 3, ta, s, s),
        "y_l": torch.randint(0, k, (b_l,)),
        "y_u": torch.randint(0, k, (b_u,)),
    }
    for v in ("weak", "strong"):
        batch[f"u_{v}_p"], batch[f"u_{v}_a"] = torch.randn(b_u, 3, tp, s, s), torch.randn(b_u, 3, ta, s, s)
    t0 = time.perf_counter()
    loss, stats = compute_objective(primary, aux, batch, **objective_kwargs(cfg))
    opt.zero_grad()
    loss.backward()
    opt.step()
    stats = {k2: round(float(v), 4) for k2, v in stats.items() if v.numel() == 1}  # per-class counts aside
    print(json.dumps({"algo": cfg.algo.name, "seconds": round(time.perf_counter() - t0, 3), **stats}))
    return 0


def cmd_lr_find(args) -> int:
    """Learning-rate range test on the labeled list (cmpl_ray/train/lr_find.py)."""
    from .train.lr_find import lr_range_test

    cfg = _config(args)
    r = lr_range_test(cfg, start=args.start, end=args.end, steps=args.steps, threads=args.threads)
    print(
        f"[lr-find] {r['steps_run']} steps; lowest smoothed loss {r['min_smoothed_loss']:.3f} at lr "
        f"{r['lr_min_loss']:.2e}; steepest descent at lr {r.get('lr_steepest', float('nan')):.2e}"
    )
    print(
        f"[lr-find] suggested optim.lr = {r['suggested_lr']:.2e} (the minimum / 10); "
        f"configured {r['configured_lr']:.2e}"
    )
    first = r["smoothed"][0]
    if r["min_smoothed_loss"] > 0.95 * first:
        print(
            f"[lr-find] WARNING the loss hardly fell at any lr ({first:.3f} -> {r['min_smoothed_loss']:.3f}): the "
            f"network is still on its starting plateau after {r['steps_run']} steps, so the curve says little about "
            f"the lr; rerun with more --steps (docs/recipe-study.md)"
        )
    if args.out:
        with open(args.out, "w") as f:
            json.dump(r, f)
        print(f"[lr-find] curve written to {args.out}")
    return 0


def cmd_demo(args) -> int:
    """Synthetic set -> labeled split -> CMPL training on a local Ray -> MLflow."""
    from .data.lists import read_list, split_labeled, write_list
    from .data.synth import make_synthetic_dataset
    from .train.launch import run_training

    _console(args)
    root = args.root
    if not os.path.exists(os.path.join(root, "train.txt")):
        t0 = time.perf_counter()
        make_synthetic_dataset(root, num_classes=args.classes, per_class=args.per_class, seed=args.seed)
        print(f"[cmpl-ray] synthetic set written to {root} in {time.perf_counter() - t0:.1f} s", flush=True)
    labeled, unlabeled = split_labeled(
        read_list(os.path.join(root, "train.txt")), per_class=args.labels_per_class, seed=args.seed
    )
    split_dir = os.path.join(root, "splits")
    write_list(os.path.join(split_dir, "labeled.txt"), labeled)
    write_list(os.path.join(split_dir, "unlabeled.txt"), unlabeled)
    overrides = [
        f"data.root={root}",
        f"data.labeled_list={split_dir}/labeled.txt",
        f"data.unlabeled_list={split_dir}/unlabeled.txt",
        f"data.val_list={root}/val.txt",
        f"data.classes_file={root}/classes.txt",
        f"run.name=demo-{time.strftime('%Y%m%d-%H%M%S')}",
    ] + args.overrides
    cfg = load_config("demo", None, overrides)
    run_training(cfg)
    return 0


def cmd_eval(args) -> int:
    from .train.inference import evaluate_checkpoint

    res = evaluate_checkpoint(args.checkpoint, args.list, root=args.root)
    print(json.dumps({k: round(v, 3) for k, v in res.items()}, indent=1))
    return 0


def cmd_predict(args) -> int:
    """Top-k per video. Exit 1 when no video could be read (a script must not take an empty answer for
    success); when only some fail, exit 0 but say how many on stderr, so the count is not lost in the list."""
    from .train.inference import predict

    results = predict(args.checkpoint, args.videos, topk=args.topk, tracking_uri=args.tracking_uri)
    for r in results:
        if "error" in r:
            print(f"{r['video']}: cannot decode ({r['error']})")
            continue
        print(r["video"])
        for name, p in r["top"]:
            print(f"  {p:6.3f}  {name}")
    failed = sum("error" in r for r in results)
    if failed:
        print(f"cmpl-ray predict: {failed} of {len(results)} videos could not be read", file=sys.stderr)
    return 1 if failed == len(results) else 0


def cmd_tune(args) -> int:
    from .tune.driver import run_sweep

    if not args.space and not args.resume:
        raise ValueError("give a search-space file (see search_spaces/) or --resume SWEEP")
    _console(args)
    out = run_sweep(
        args.space,
        preset=args.preset,
        config_path=args.config,
        overrides=args.overrides,
        num_samples=args.num_samples,
        name=args.name,
        storage=args.storage,
        max_concurrent=args.max_concurrent,
        searcher=args.searcher,
        resume=args.resume,
        num_cpus=args.num_cpus,
        scheduler=args.scheduler,
    )
    if out["interrupted"]:
        return 130
    return 1 if out["errors"] else 0


def cmd_report(args) -> int:
    from .tune.report import report

    try:
        print(report(args.sweep, args.tracking_uri, args.experiment, args.metric), end="")
    except LookupError as e:
        raise ValueError(str(e)) from None
    return 0


def cmd_ui(args) -> int:
    from .ui import serve

    return serve(args.tracking_uri, args.sweep, args.experiment, args.port, serve_local=not args.link_only)


def build_parser() -> argparse.ArgumentParser:
    from .data import commands as data_commands

    parser = argparse.ArgumentParser(
        prog="cmpl-ray", description="Cross-Model Pseudo-Labeling for semi-supervised action recognition on Ray."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("demo", help="synthetic videos -> CMPL training on a local Ray -> MLflow (the quick start)")
    p.add_argument("--root", default="demo_data", help="where the synthetic set is written (reused if present)")
    p.add_argument("--classes", type=int, default=8)
    p.add_argument("--per-class", type=int, default=24, help="training videos per class (plus validation)")
    p.add_argument("--labels-per-class", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    _add_verbose(p)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("train", help="train with Ray Train (supervised | fixmatch | cmpl)")
    _add_config_args(p)
    p.add_argument(
        "--resume",
        default=None,
        metavar="CHECKPOINT",
        help="continue from a checkpoint directory (refused if it was trained with another config)",
    )
    p.add_argument(
        "--fresh",
        action="store_true",
        help="start run.name over: its old folder is renamed (kept), a new MLflow run is created",
    )
    _add_verbose(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="evaluate a checkpoint on a list file (multi-clip x multi-crop)")
    p.add_argument("checkpoint")
    p.add_argument("--list", required=True)
    p.add_argument("--root", default=None, help="dataset root (default: the one in the checkpoint's config)")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("predict", help="top-5 classes of video files with a checkpoint or a logged MLflow model")
    p.add_argument(
        "checkpoint",
        help="checkpoint folder/file, or MLflow model URI: runs:/<run_id>/primary, models:/<registered name>/<version>",
    )
    p.add_argument(
        "--tracking-uri",
        default="",
        help="MLflow store of a runs:/ or models:/ URI (default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db here)",
    )
    p.add_argument("videos", nargs="+")
    p.add_argument("--topk", type=int, default=5)
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("step", help="run one training step on random clips (smoke test, no data, no Ray)")
    _add_config_args(p)
    p.set_defaults(func=cmd_step)

    p = sub.add_parser("lr-find", help="learning-rate range test: loss vs exponentially growing lr (no Ray)")
    _add_config_args(p)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--start", type=float, default=1e-4)
    p.add_argument("--end", type=float, default=10.0)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    p.add_argument("--out", default=None, help="write lrs, losses and the estimates as JSON")
    p.set_defaults(func=cmd_lr_find)

    p = sub.add_parser("config", help="print (or --out FILE) the resolved config of a preset + overrides")
    _add_config_args(p)
    p.add_argument("--out", default=None)
    p.set_defaults(func=cmd_config)

    p = sub.add_parser("tune", help="Ray Tune sweep over a search_spaces/*.yaml file (ASHA, grid/random/optuna)")
    p.add_argument("space", nargs="?", help="search-space YAML (see search_spaces/)")
    _add_config_args(p)
    p.add_argument("--num-samples", type=int, default=None, help="override the file's num_samples")
    p.add_argument("--name", default=None, help="sweep name (default: <space>-<timestamp>)")
    p.add_argument("--storage", default="outputs/tune", help="local dir or URI for sweep state (default outputs/tune)")
    p.add_argument("--max-concurrent", type=int, default=None, help="override max_concurrent_trials")
    p.add_argument("--searcher", choices=["grid", "random", "optuna"], default=None)
    p.add_argument("--scheduler", choices=["asha", "fifo"], default=None, help="override the file's scheduler")
    p.add_argument("--resume", default=None, metavar="SWEEP", help="restore an interrupted sweep by name")
    p.add_argument("--num-cpus", type=int, default=None, help="CPUs of a local Ray (ignored on a cluster)")
    _add_verbose(p)
    p.set_defaults(func=cmd_tune)

    p = sub.add_parser("report", help="print a sweep as a markdown table from the MLflow store")
    p.add_argument("sweep")
    p.add_argument("--tracking-uri", default="", help="default: MLFLOW_TRACKING_URI or sqlite:///mlflow.db")
    p.add_argument("--experiment", default=None)
    p.add_argument("--metric", default=None, help="default: the sweep's metric (val_top1)")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser(
        "ui",
        help="MLflow UI on loopback, opened on the runs (or a sweep's trials) with their "
        "top-1 and swept values as columns",
    )
    p.add_argument(
        "--tracking-uri",
        "--store",
        default="",
        help="default: MLFLOW_TRACKING_URI or sqlite:///mlflow.db; an http(s) server is only linked",
    )
    p.add_argument("--sweep", default=None, help="open this sweep's trials (cmpl-ray tune --name)")
    p.add_argument("--experiment", default=None, help="default: the experiment of the newest run")
    p.add_argument("--port", type=int, default=5000, help="a free one is picked if this is taken")
    p.add_argument("--link-only", action="store_true", help="write the view and print its link; start no server")
    p.set_defaults(func=cmd_ui)

    data_commands.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ConfigError, FileNotFoundError, ValueError) as e:
        print(f"cmpl-ray {args.command}: error: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # known user-facing failures from deeper layers
        from .train.checkpoint import CheckpointError
        from .train.identity import RunMismatch

        if isinstance(e, (CheckpointError, RunMismatch)):
            print(f"cmpl-ray {args.command}: error: {e}", file=sys.stderr)
            return 2
        raise
