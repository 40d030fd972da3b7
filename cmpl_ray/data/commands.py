"""Data sub-commands of the ``cmpl-ray`` CLI: ``synth``, ``prepare``, ``split``.

Why here and not in ``cmpl_ray/cli.py``: the data tools only need list files and
PyAV, so they stay importable and testable without Ray; ``cli.py`` just calls
:func:`register`.  Every command returns an exit code; expected failures (bad
list file, missing file, bad argument values) print ONE line to stderr and
return 2 instead of a traceback, so shell scripts can test ``$?``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from collections import Counter

from cmpl_ray.data.lists import (
    ListFormatError,
    is_uri,
    prepare_kinetics400,
    prepare_ucf101,
    read_classes,
    read_list,
    split_labeled,
    write_classes,
    write_list,
)

_SPLIT_EPILOG = """\
protocol (CMPL paper, Sec. 4.1): labeled subsets are balanced per class and every
result is the mean over three sampled subsets, seeds 0, 1 and 2:
  Kinetics-400  1%% = --per-class 6     10%% = --per-class 60
  UCF-101       1%% = --per-class 1     10%% = --per-class 10
--category-wise samples the same total in proportion to class frequency
(paper Appendix C).  Example:
  for s in 0 1 2; do cmpl-ray split k400/train.txt --per-class 6 --seed $s --out k400/1pct_s$s; done
"""

_EXPECTED_ERRORS = (ListFormatError, OSError, ValueError, KeyError, RuntimeError)


def _fail(cmd: str, exc: BaseException) -> int:
    msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if isinstance(exc, FileNotFoundError) and exc.filename:
        msg = f"no such file: {exc.filename}"
    print(f"cmpl-ray {cmd}: error: {msg}", file=sys.stderr)
    return 2


def _guarded(cmd: str, fn):
    """Wrap a command so expected errors become one stderr line and exit code 2."""

    def run(args: argparse.Namespace) -> int:
        try:
            return fn(args)
        except _EXPECTED_ERRORS as exc:
            return _fail(cmd, exc)

    return run


# ----------------------------------------------------------------------------- synth
def _cmd_synth(args: argparse.Namespace) -> int:
    from cmpl_ray.data.synth import make_synthetic_dataset  # imports PyAV/decord lazily

    start = time.perf_counter()
    if args.family:
        return _synth_family(args, start)
    s = make_synthetic_dataset(
        args.out,
        num_classes=args.classes,
        per_class=args.per_class or 20,
        seed=args.seed,
        num_frames=args.frames,
        size=args.size,
        fps=args.fps,
        val_per_class=args.val_per_class,
        object_size=tuple(args.object_size),
    )
    print(
        f"synth: {s['num_classes']} classes ({s['motion_classes']} motion, "
        f"{s['appearance_classes']} appearance), {s['train']} train + {s['val']} val videos "
        f"of {s['num_frames']}x{s['size']}x{s['size']} @ {s['fps']} fps ({s['codec']}) "
        f"in {time.perf_counter() - start:.1f} s -> {args.out}"
    )
    return 0


def _synth_family(args: argparse.Namespace, start: float) -> int:
    """``--family NAME`` writes one benchmark-suite family to OUT; ``--family all`` every family to OUT/<name>."""
    from cmpl_ray.data.suite import FAMILIES, write_family

    names = list(FAMILIES) if args.family == "all" else [args.family]
    if names[0] not in FAMILIES:
        raise ValueError(f"unknown family {args.family!r}; families: {', '.join(FAMILIES)} or all")
    val = 50 if args.val_per_class is None else args.val_per_class
    per_class = 60 if args.per_class is None else args.per_class
    for name in names:
        out = os.path.join(args.out, name) if args.family == "all" else args.out
        s = write_family(out, name, per_class, val, seed=args.seed)
        fam = FAMILIES[name]
        print(
            f"synth {name}{' (held out: never tune on it)' if fam.held_out else ''}: {len(fam.classes)} classes "
            f"carried by {fam.cue}, {s['train']} train + {s['val']} val videos of {fam.frames}x{fam.height}x"
            f"{fam.width} @ {fam.fps} fps in {s['seconds']:.1f} s -> {out}"
            + (f"\n  flip pairs: --set data.flip_label_map={s['flip_label_map']}" if s["flip_label_map"] else "")
        )
    print(f"synth: done in {time.perf_counter() - start:.1f} s")
    return 0


# ----------------------------------------------------------------------------- prepare
def _report_prepare(s: dict) -> int:
    print(
        f"prepare {s['dataset']}: {s['num_classes']} classes, {s['train']} train, {s['val']} val "
        f"videos ({len(s['missing'])} of {s['listed']} listed videos missing) -> {s['out_dir']}"
    )
    if s["missing"]:
        for path in s["missing"][:20]:
            print(f"  missing: {path}")
        if len(s["missing"]) > 20:
            print(f"  ... and {len(s['missing']) - 20} more")
        print(f"  missing total: {len(s['missing'])}")
    return 0


def _cmd_prepare_ucf101(args: argparse.Namespace) -> int:
    return _report_prepare(prepare_ucf101(args.root, split=args.split, out_dir=args.out))


def _cmd_prepare_k400(args: argparse.Namespace) -> int:
    return _report_prepare(prepare_kinetics400(args.root, out_dir=args.out))


# ----------------------------------------------------------------------------- split
def _sibling(list_path: str, name: str) -> str:
    if is_uri(list_path):
        return list_path.rsplit("/", 1)[0] + "/" + name
    return os.path.join(os.path.dirname(os.path.abspath(list_path)), name)


def _classes_beside(list_path: str) -> list[str] | None:
    path = _sibling(list_path, "classes.txt")
    if is_uri(path):
        try:
            return read_classes(path)
        except OSError:  # pyarrow reports a missing object as FileNotFoundError or OSError
            return None
    return read_classes(path) if os.path.isfile(path) else None


def _cmd_split(args: argparse.Namespace) -> int:
    classes = _classes_beside(args.list)
    items = read_list(args.list, num_classes=len(classes) if classes else None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        labeled, unlabeled = split_labeled(
            items, per_class=args.per_class, fraction=args.fraction, seed=args.seed, category_wise=args.category_wise
        )
    for w in caught:
        print(f"cmpl-ray split: warning: {w.message}", file=sys.stderr)
    out = args.out
    sep = "/" if is_uri(out) else os.sep
    write_list(out.rstrip("/") + sep + "labeled.txt", labeled)
    write_list(out.rstrip("/") + sep + "unlabeled.txt", unlabeled)
    if classes is not None:
        write_classes(out.rstrip("/") + sep + "classes.txt", classes)
    per = Counter(it.label for it in labeled)
    how = f"{args.per_class}/class" if args.per_class is not None else f"fraction {args.fraction}"
    print(
        f"split {args.list} ({how}{', category-wise' if args.category_wise else ''}, seed {args.seed}): "
        f"labeled {len(labeled)} videos in {len(per)} classes ({min(per.values())}..{max(per.values())}"
        f" per class), unlabeled {len(unlabeled)} -> {out}"
    )
    return 0


# ----------------------------------------------------------------------------- wiring
def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _fraction(text: str) -> float:
    value = float(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {value}")
    return value


def register(subparsers) -> None:
    """Add ``synth``, ``prepare {ucf101,kinetics400}`` and ``split`` to an argparse
    sub-parser collection; each sets ``func(args) -> int``."""
    p = subparsers.add_parser(
        "synth",
        help="write a synthetic motion/appearance action dataset as mp4 + lists",
        description="Write videos/<class>/<i>.mp4, train.txt, val.txt and classes.txt. Motion classes "
        "differ only in how a blob moves, appearance classes only in the shape/texture of "
        "a static object (the temporal vs spatial split that CMPL exploits).",
    )
    p.add_argument("out", help="output directory")
    p.add_argument("--classes", type=_positive_int, default=8, help="number of classes (1..16, default 8)")
    p.add_argument(
        "--family",
        default=None,
        help="write a benchmark-suite family instead (direction, speed, scale, appearance, flicker, "
        "heldout) or 'all' of them under OUT/<family>/; see cmpl_ray/data/suite.py",
    )
    p.add_argument(
        "--per-class", type=_positive_int, default=None, help="train videos per class (default 20; 60 with --family)"
    )
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--frames", type=_positive_int, default=48, help="frames per video (default 48)")
    p.add_argument("--size", type=_positive_int, default=64, help="frame height = width (default 64)")
    p.add_argument("--fps", type=_positive_int, default=12, help="frame rate (default 12)")
    p.add_argument(
        "--val-per-class",
        type=int,
        default=None,
        help="val videos per class (default max(1, per-class // 4); 50 with --family)",
    )
    p.add_argument(
        "--object-size",
        type=float,
        nargs=2,
        default=[0.11, 0.16],
        metavar=("LO", "HI"),
        help="object half-size range as a fraction of the frame (default 0.11 0.16; larger = easier "
        "shape classes, e.g. 0.20 0.26 for few-label comparisons)",
    )
    p.set_defaults(func=_guarded("synth", _cmd_synth))

    p = subparsers.add_parser(
        "prepare",
        help="convert UCF-101 / Kinetics-400 annotations to list files",
        description="Write train.txt, val.txt, classes.txt (paths relative to --root); "
        "listed videos that are missing on disk are reported and skipped.",
    )
    sub = p.add_subparsers(dest="dataset", metavar="{ucf101,kinetics400}")
    sub.required = True
    u = sub.add_parser("ucf101", help="from ucfTrainTestlist/ (classInd, trainlist0N, testlist0N)")
    u.add_argument("--root", required=True, help="dir with ucfTrainTestlist/ and UCF-101/ (or the class dirs)")
    u.add_argument("--split", type=int, choices=(1, 2, 3), default=1, help="official split (default 1)")
    u.add_argument("--out", default=None, help="output dir for the lists (default: --root)")
    u.set_defaults(func=_guarded("prepare ucf101", _cmd_prepare_ucf101))
    k = sub.add_parser("kinetics400", help="from annotations/{train,validate}.csv")
    k.add_argument("--root", required=True, help="dir with annotations/ and train/, val/ (or validate/)")
    k.add_argument("--out", default=None, help="output dir for the lists (default: --root)")
    k.set_defaults(func=_guarded("prepare kinetics400", _cmd_prepare_k400))

    p = subparsers.add_parser(
        "split",
        help="sample a labeled subset; the rest becomes the unlabeled set",
        description="Write labeled.txt and unlabeled.txt (and copy classes.txt found beside LIST).",
        epilog=_SPLIT_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("list", metavar="LIST", help="list file to split (e.g. train.txt), local or URI")
    how = p.add_mutually_exclusive_group(required=True)
    how.add_argument("--per-class", type=_positive_int, help="labeled videos per class")
    how.add_argument("--fraction", type=_fraction, help="labeled fraction of all videos, e.g. 0.01")
    p.add_argument("--seed", type=int, default=0, help="sampling seed; the protocol averages seeds 0, 1, 2")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument(
        "--category-wise",
        action="store_true",
        help="distribute the total in proportion to class frequency (paper Appendix C)",
    )
    p.set_defaults(func=_guarded("split", _cmd_split))
