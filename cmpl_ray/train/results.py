"""Where a run's result files live: the run's folder on ``run.storage_path``, not rank 0's disk.

On a cluster rank 0 runs on some worker node and the driver on the head; each has its own disk. Rank 0 writes
``metrics.json``, ``config.yaml``, ``per_class.csv`` and the plots to a local scratch folder and copies it to
``<storage_path>/<run name>/result/`` (a shared folder or a pyarrow URI, like Ray Train's checkpoints); the
driver copies that folder into ``run.output_dir``. So the driver, a re-run, ``report`` and ``eval`` read the
same files wherever rank 0 ran.
"""

from __future__ import annotations

import os

RESULT_DIR = "result"


def result_dir(run_folder: str) -> str:
    """``<run folder>/result`` for a local path or a URI."""
    return f"{run_folder.rstrip('/')}/{RESULT_DIR}" if "://" in run_folder else os.path.join(run_folder, RESULT_DIR)


def _fs(path: str):
    import pyarrow.fs as pafs

    if "://" in path:
        return pafs.FileSystem.from_uri(path)
    return pafs.LocalFileSystem(), os.path.abspath(path)


def upload(local_dir: str, run_folder: str) -> str:
    """Copy every file of ``local_dir`` into the run's result folder (replacing older copies); its path."""
    import pyarrow.fs as pafs

    dest = result_dir(run_folder)
    fs, p = _fs(dest)
    fs.create_dir(p, recursive=True)
    pafs.copy_files(os.path.abspath(local_dir), p, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs)
    return dest


def download(run_folder: str, local_dir: str) -> list[str]:
    """Copy the run's result folder into ``local_dir``; the names copied ([] when there is none)."""
    import pyarrow.fs as pafs

    fs, p = _fs(result_dir(run_folder))
    try:
        infos = fs.get_file_info(pafs.FileSelector(p, allow_not_found=True))
    except OSError:
        return []
    files = [i for i in infos if i.type == pafs.FileType.File]
    if not files:
        return []
    os.makedirs(local_dir, exist_ok=True)
    for info in files:
        name = os.path.basename(info.path)
        with fs.open_input_stream(info.path) as src, open(os.path.join(local_dir, name), "wb") as dst:
            dst.write(src.read())
    return sorted(os.path.basename(i.path) for i in files)
