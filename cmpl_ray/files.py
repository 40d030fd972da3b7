"""Reading and writing small files on a local disk or an object store (``s3://``, ``gs://``, ... through
pyarrow, as Ray Train stores checkpoints): list files, run records, sweep state, a list's digest.

Why one module: the data lists, the run identity, the sweep driver and the MLflow dataset inputs all read such
files, and a path may be local on a laptop and a URI on a cluster."""

from __future__ import annotations

import os
import posixpath
import re

_URI_RE = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*://")


def is_uri(path: str) -> bool:
    """True for ``scheme://...`` paths (handled by pyarrow), False for plain local paths."""
    return bool(_URI_RE.match(str(path)))


def read_bytes(path: str) -> bytes:
    """A whole file, local or URI."""
    if is_uri(path):
        from pyarrow import fs as pafs

        filesystem, inner = pafs.FileSystem.from_uri(path)
        with filesystem.open_input_stream(inner) as stream:
            return stream.read()
    with open(path, "rb") as fh:
        return fh.read()


def read_text(path: str) -> str:
    """A whole text file, local (universal newlines) or URI (utf-8, BOM tolerated)."""
    if is_uri(path):
        return read_bytes(path).decode("utf-8-sig")
    with open(path, encoding="utf-8-sig") as fh:
        return fh.read()


def read_text_or_none(path: str) -> str | None:
    """:func:`read_text`, or None when the file is absent or unreadable."""
    try:
        return read_text(path)
    except (FileNotFoundError, OSError):
        return None


def write_text(path: str, text: str) -> None:
    """Write a text file, local (parents created) or URI."""
    if is_uri(path):
        from pyarrow import fs as pafs

        filesystem, inner = pafs.FileSystem.from_uri(path)
        parent = posixpath.dirname(inner)
        if parent:
            filesystem.create_dir(parent, recursive=True)
        with filesystem.open_output_stream(inner) as stream:
            stream.write(text.encode("utf-8"))
        return
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="\n") as fh:
        fh.write(text)
