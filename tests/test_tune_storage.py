"""Sweep state on a URI (pyarrow filesystems, as Ray uses for s3:// and gs://): written, read back, and the
space file travels inside it so ``--resume`` from a later job does not depend on the old upload directory."""

import os

from cmpl_ray.tune.driver import _load_state, _save_state, sweep_dir


def test_state_roundtrip_on_a_uri_and_space_text_restored(tmp_path):
    d = sweep_dir(f"file://{tmp_path}/store", "s1")
    assert d == f"file://{tmp_path}/store/s1"
    _save_state(
        d,
        {
            "space_path": "/gone/job_upload/space.yaml",
            "space_text": "preset: demo\n",
            "config_path": None,
            "config_text": None,
            "name": "s1",
        },
    )
    assert os.path.exists(tmp_path / "store" / "s1" / "sweep.json")
    st = _load_state(d)
    assert st["name"] == "s1" and st["space_path"] != "/gone/job_upload/space.yaml"
    assert open(st["space_path"]).read() == "preset: demo\n"


def test_local_sweep_dir_is_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert sweep_dir("outputs/tune", "x") == str(tmp_path / "outputs" / "tune" / "x")
