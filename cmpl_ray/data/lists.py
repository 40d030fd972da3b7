"""The one internal dataset format: mmaction-style list files, plus importers and splits.

Why one format: every dataset (UCF-101, Kinetics-400, the synthetic set) is
converted once into ``relative/path label`` lines, so the Ray Data pipeline, the
labeled/unlabeled splitter and the evaluators only ever read one thing.

Format rules (chosen to survive real-world names):

* one ``path label`` per line; the label is split off at the LAST whitespace, so
  paths may contain spaces (Kinetics class folders such as ``playing guitar``);
* paths are relative to the dataset root (see :func:`resolve_path`);
* blank lines and lines whose first non-blank character is ``#`` are ignored
  (no inline comments: ``#`` is legal inside a file name);
* labels are non-negative integer class ids; ``classes.txt`` holds one class
  name per line, line i naming class id i.

Files may be local paths or any pyarrow filesystem URI (``s3://``, ``gs://``,
``hdfs://``, ``file://``); plain local paths never go through pyarrow.
"""

from __future__ import annotations

import csv
import io
import math
import os
import posixpath
import warnings
from collections import defaultdict
from dataclasses import dataclass

import numpy as np

from ..files import is_uri, read_text, write_text  # noqa: F401  (is_uri: re-exported for the data commands)


@dataclass(frozen=True)
class VideoItem:
    """One video: ``path`` relative to the dataset root and integer class ``label``."""

    path: str
    label: int


class ListFormatError(ValueError):
    """A malformed list/classes file; the message starts with ``file:line:``."""


def resolve_path(root: str, rel: str) -> str:
    """Join the dataset ``root`` (local dir or URI) with a list's relative path.

    Absolute local paths and URIs in ``rel`` are returned unchanged, so a list
    may also hold absolute entries."""
    if is_uri(rel) or os.path.isabs(rel):
        return rel
    if is_uri(root):
        return root.rstrip("/") + "/" + rel.lstrip("/")
    return os.path.join(root, rel)


def parse_list(text: str, source: str = "<list>", num_classes: int | None = None) -> list[VideoItem]:
    """Parse list-file text; ``source`` names the file in error messages."""
    items = []
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.rsplit(None, 1)
        if len(parts) != 2:
            raise ListFormatError(f"{source}:{lineno}: missing label (expected 'path label'): {line!r}")
        path, label_s = parts[0].strip(), parts[1]
        try:
            label = int(label_s)
        except ValueError:
            raise ListFormatError(
                f"{source}:{lineno}: label {label_s!r} is not an integer (expected 'path label'): {line!r}"
            ) from None
        if label < 0:
            raise ListFormatError(f"{source}:{lineno}: negative label {label} in {line!r}")
        if num_classes is not None and label >= num_classes:
            raise ListFormatError(
                f"{source}:{lineno}: label {label} out of range for {num_classes} classes in {line!r}"
            )
        items.append(VideoItem(path, label))
    return items


def read_list(path: str, num_classes: int | None = None) -> list[VideoItem]:
    """Read a list file (local path or pyarrow URI); optionally check labels < num_classes."""
    return parse_list(read_text(path), str(path), num_classes)


def format_list(items) -> str:
    """Serialise items; rejects entries that would not read back identically."""
    lines = []
    for it in items:
        p, label = it.path, it.label
        if not isinstance(label, (int, np.integer)) or isinstance(label, bool) or label < 0:
            raise ValueError(f"label must be a non-negative int, got {label!r} for {p!r}")
        if not p or p != p.strip() or "\n" in p or "\r" in p or p.startswith("#"):
            raise ValueError(f"path cannot be written to a list file: {p!r}")
        lines.append(f"{p} {int(label)}\n")
    return "".join(lines)


def write_list(path: str, items) -> None:
    """Write ``items`` (VideoItem-like) as a list file (local or URI)."""
    write_text(path, format_list(items))


def read_classes(path: str) -> list[str]:
    """Read classes.txt: line i names class id i (trailing blank lines allowed)."""
    lines = [ln.strip() for ln in read_text(path).splitlines()]
    while lines and not lines[-1]:
        lines.pop()
    seen: dict[str, int] = {}
    for i, name in enumerate(lines, 1):
        if not name:
            raise ListFormatError(f"{path}:{i}: blank class name (line i must name class id i-1)")
        if name in seen:
            raise ListFormatError(f"{path}:{i}: duplicate class name {name!r} (first on line {seen[name]})")
        seen[name] = i
    return lines


def write_classes(path: str, names) -> None:
    """Write classes.txt, one name per line in class-id order."""
    names = [str(n) for n in names]
    for n in names:
        if not n.strip() or n != n.strip() or "\n" in n:
            raise ValueError(f"bad class name {n!r}")
    if len(set(names)) != len(names):
        raise ValueError("duplicate class names")
    write_text(path, "".join(n + "\n" for n in names))


# ----------------------------------------------------------------------------- importers
def prepare_ucf101(root: str, split: int = 1, out_dir: str | None = None) -> dict:
    """Convert the official UCF-101 split ``split`` (1..3) into train/val/classes lists.

    Reads ``ucfTrainTestlist/`` (under ``root`` or ``root/UCF-101``); videos live
    in ``root/UCF-101/`` or directly in ``root/`` (detected).  List paths are
    relative to ``root``.  classInd's 1-based ids become 0-based; test videos get
    their label from their folder.  Listed-but-missing videos are left out of the
    lists and reported in ``missing``.  ``out_dir`` defaults to ``root``.
    """
    if split not in (1, 2, 3):
        raise ValueError(f"UCF-101 split must be 1, 2 or 3, got {split}")
    ann = next(
        (
            d
            for d in (os.path.join(root, "ucfTrainTestlist"), os.path.join(root, "UCF-101", "ucfTrainTestlist"))
            if os.path.isdir(d)
        ),
        None,
    )
    if ann is None:
        raise FileNotFoundError(f"no ucfTrainTestlist/ under {root} (download UCF101TrainTestSplits)")
    class_file = os.path.join(ann, "classInd.txt")
    ids: dict[int, str] = {}
    for lineno, line in enumerate(read_text(class_file).splitlines(), 1):
        if line.strip():
            parts = line.split()
            if len(parts) != 2 or not parts[0].isdigit() or int(parts[0]) < 1:
                raise ListFormatError(f"{class_file}:{lineno}: expected '<id from 1> <ClassName>': {line!r}")
            ids[int(parts[0]) - 1] = parts[1]
    if sorted(ids) != list(range(len(ids))):
        raise ListFormatError(f"{class_file}:1: class ids are not 1..{len(ids)} without gaps")
    classes = [ids[i] for i in range(len(ids))]
    by_folder = {c.lower(): i for i, c in enumerate(classes)}  # official lists mix case
    prefix = (
        "UCF-101"
        if os.path.isdir(os.path.join(root, "UCF-101"))
        and any(os.path.isdir(os.path.join(root, "UCF-101", c)) for c in classes)
        else ""
    )

    def convert(name: str, labelled: bool) -> list[VideoItem]:
        fname = os.path.join(ann, name)
        items = []
        for lineno, line in enumerate(read_text(fname).splitlines(), 1):
            parts = line.split()
            if not parts:
                continue
            rel = parts[0].replace("\\", "/")
            label = by_folder.get(rel.split("/")[0].lower())
            if label is None:
                raise ListFormatError(f"{fname}:{lineno}: folder of {rel!r} is not a class in classInd.txt")
            if labelled:
                if len(parts) != 2 or not parts[1].isdigit():
                    raise ListFormatError(f"{fname}:{lineno}: expected '<Class/v_x.avi> <id>': {line!r}")
                if int(parts[1]) - 1 != label:
                    raise ListFormatError(f"{fname}:{lineno}: id {parts[1]} disagrees with folder of {rel!r}")
            # Use classInd's spelling of the folder: the lists' case may differ from disk.
            rel = classes[label] + "/" + rel.split("/", 1)[1] if "/" in rel else rel
            items.append(VideoItem(posixpath.join(prefix, rel) if prefix else rel, label))
        return items

    train = convert(f"trainlist0{split}.txt", True)
    val = convert(f"testlist0{split}.txt", False)
    return _finish("ucf101", root, out_dir, train, val, classes, split=split, video_root=prefix)


def prepare_kinetics400(root: str, out_dir: str | None = None) -> dict:
    """Convert Kinetics-400 CSV annotations into train/val/classes lists.

    Reads ``root/annotations/train.csv`` and ``validate.csv`` (or ``val.csv``)
    with columns ``label,youtube_id,time_start,time_end[,split,...]``; videos are
    ``<root>/<train|val|validate>/<label>/<youtube_id>_<start:06d>_<end:06d>.mp4``
    (a label folder with spaces replaced by ``_`` is accepted too).  Class ids are
    the train labels sorted alphabetically.  Missing videos are reported, not listed.
    """
    ann = os.path.join(root, "annotations")
    train_csv = os.path.join(ann, "train.csv")
    val_csv = next(
        (p for p in (os.path.join(ann, "validate.csv"), os.path.join(ann, "val.csv")) if os.path.isfile(p)), None
    )
    if not os.path.isfile(train_csv) or val_csv is None:
        raise FileNotFoundError(f"need {train_csv} and {ann}/validate.csv (or val.csv)")

    def rows(fname: str) -> list[tuple[str, str, str]]:
        reader = csv.DictReader(io.StringIO(read_text(fname)))
        need = {"label", "youtube_id", "time_start", "time_end"}
        if not need <= set(reader.fieldnames or []):
            raise ListFormatError(f"{fname}:1: header must contain {sorted(need)}, got {reader.fieldnames}")
        out = []
        for lineno, r in enumerate(reader, 2):
            try:
                start, end = int(float(r["time_start"])), int(float(r["time_end"]))
            except (TypeError, ValueError):
                raise ListFormatError(f"{fname}:{lineno}: bad time_start/time_end in {r}") from None
            if not r["label"] or not r["youtube_id"]:
                raise ListFormatError(f"{fname}:{lineno}: empty label or youtube_id")
            out.append((f"{fname}:{lineno}", r["label"].strip(), f"{r['youtube_id']}_{start:06d}_{end:06d}.mp4"))
        return out

    train_rows, val_rows = rows(train_csv), rows(val_csv)
    classes = sorted({lab for _, lab, _ in train_rows})
    index = {c: i for i, c in enumerate(classes)}

    def convert(rs, split_dirs: tuple[str, ...]) -> list[VideoItem]:
        split_dir = next((d for d in split_dirs if os.path.isdir(os.path.join(root, d))), split_dirs[0])
        folder: dict[str, str] = {}
        items = []
        for where, label, base in rs:
            if label not in index:
                raise ListFormatError(f"{where}: label {label!r} does not occur in train.csv")
            if label not in folder:
                alt = label.replace(" ", "_")
                folder[label] = (
                    alt
                    if (
                        not os.path.isdir(os.path.join(root, split_dir, label))
                        and os.path.isdir(os.path.join(root, split_dir, alt))
                    )
                    else label
                )
            items.append(VideoItem(f"{split_dir}/{folder[label]}/{base}", index[label]))
        return items

    train, val = convert(train_rows, ("train",)), convert(val_rows, ("val", "validate"))
    return _finish("kinetics400", root, out_dir, train, val, classes)


def _finish(dataset: str, root: str, out_dir: str | None, train, val, classes, **extra) -> dict:
    """Drop missing videos, write the lists, return the summary."""
    missing: list[str] = []
    kept = {}
    for name, items in (("train", train), ("val", val)):
        kept[name] = []
        for it in items:
            exists = os.path.isfile(os.path.join(root, it.path))
            (kept[name] if exists else missing).append(it if exists else it.path)
    out_dir = root if out_dir is None else out_dir
    files = {k: os.path.join(out_dir, f"{k}.txt") for k in ("train", "val", "classes")}
    write_list(files["train"], kept["train"])
    write_list(files["val"], kept["val"])
    write_classes(files["classes"], classes)
    return {
        "dataset": dataset,
        "root": root,
        "out_dir": out_dir,
        "num_classes": len(classes),
        "train": len(kept["train"]),
        "val": len(kept["val"]),
        "listed": len(train) + len(val),
        "missing": missing,
        "files": files,
        **extra,
    }


# ----------------------------------------------------------------------------- splits
def _quotas_category_wise(sizes: dict[int, int], total: int) -> dict[int, int]:
    """Largest-remainder apportionment of ``total`` proportional to class sizes,
    then at least one per class when total allows (taken from the largest quota)."""
    n = sum(sizes.values())
    exact = {c: total * k / n for c, k in sizes.items()}
    quota = {c: math.floor(e) for c, e in exact.items()}
    rest = total - sum(quota.values())
    for c in sorted(sizes, key=lambda c: (-(exact[c] - quota[c]), c))[:rest]:
        quota[c] += 1
    if total >= len(sizes):
        for c in sorted(sizes):
            if quota[c] == 0:
                donor = max(sorted(sizes), key=lambda d: quota[d])
                quota[donor] -= 1
                quota[c] = 1
    return quota


def split_labeled(
    items, *, per_class: int | None = None, fraction: float | None = None, seed: int = 0, category_wise: bool = False
) -> tuple[list[VideoItem], list[VideoItem]]:
    """Sample the labeled subset; return (labeled, unlabeled = everything else).

    Balanced (paper Sec. 4.1): ``per_class`` videos from every class, or
    ``max(1, round(fraction * N / num_classes))``; a class with fewer videos gives
    all it has (with a warning).  ``category_wise`` (paper Appendix C): the total
    ``per_class * num_classes`` (or ``round(fraction * N)``) is shared out in
    proportion to class frequency.  Classes are those present in ``items``.
    Deterministic for ``seed`` and independent of input order: items are sorted,
    and each class draws from its own generator seeded by (seed, label).
    Both outputs are sorted by (label, path).
    """
    if (per_class is None) == (fraction is None):
        raise ValueError("give exactly one of per_class or fraction")
    if per_class is not None and (int(per_class) != per_class or per_class < 1):
        raise ValueError(f"per_class must be a positive integer, got {per_class}")
    if fraction is not None and not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    if int(seed) != seed or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed}")
    items = sorted((VideoItem(it.path, int(it.label)) for it in items), key=lambda it: (it.label, it.path))
    if not items:
        raise ValueError("cannot split an empty list")
    if items[0].label < 0:
        raise ValueError(f"negative label {items[0].label} for {items[0].path!r}")
    seen: set[str] = set()
    groups: dict[int, list[VideoItem]] = defaultdict(list)
    for it in items:
        if it.path in seen:
            raise ValueError(f"duplicate path in list (would leak between splits): {it.path!r}")
        seen.add(it.path)
        groups[it.label].append(it)
    n, c = len(items), len(groups)
    if category_wise:
        total = per_class * c if per_class is not None else round(fraction * n)
        if total > n:
            raise ValueError(f"asked for {total} labeled videos but the list has only {n}")
        quota = _quotas_category_wise({k: len(v) for k, v in groups.items()}, max(1, total))
    else:
        k = per_class if per_class is not None else max(1, round(fraction * n / c))
        quota = {lab: k for lab in groups}
        short = [lab for lab, g in groups.items() if len(g) < k]
        if short:
            warnings.warn(
                f"{len(short)} classes have fewer than {k} videos and give all they have (first: {sorted(short)[:10]})",
                stacklevel=2,
            )
    labeled, unlabeled = [], []
    for lab in sorted(groups):
        group = groups[lab]
        take = min(quota[lab], len(group))
        chosen = set(np.random.default_rng([int(seed), lab]).permutation(len(group))[:take].tolist())
        for i, it in enumerate(group):
            (labeled if i in chosen else unlabeled).append(it)
    return labeled, unlabeled
