"""Checkpoint integrity (issue 7): truncated, foreign and malicious files are refused with a clear message,
and loading never unpickles arbitrary objects."""

import os
import pickle

import pytest
import torch

from cmpl_ray.models import build_model
from cmpl_ray.train.checkpoint import CheckpointError, load_checkpoint, restore, save_checkpoint


def _save(tmp_path):
    f, a = build_model("tiny", 4, 1.0, 0.0), build_model("tiny", 4, 0.5, 0.0)
    opt = torch.optim.SGD(list(f.parameters()) + list(a.parameters()), lr=0.1, momentum=0.9)
    return (
        save_checkpoint(
            tmp_path,
            primary=f,
            aux=a,
            optimizer=opt,
            scaler=None,
            epoch=3,
            global_step=12,
            config={"algo": {"name": "cmpl"}},
            metrics={"val_top1": 50.0},
            extra={},
        ),
        f,
        a,
    )


def test_roundtrip(tmp_path):
    path, f, a = _save(tmp_path)
    state = load_checkpoint(tmp_path)
    assert state["epoch"] == 3 and state["global_step"] == 12
    f2, a2 = build_model("tiny", 4, 1.0, 0.0), build_model("tiny", 4, 0.5, 0.0)
    restore(state, primary=f2, aux=a2)
    assert all(torch.equal(p, q) for p, q in zip(f.state_dict().values(), f2.state_dict().values()))


def test_truncated_checkpoint_is_refused(tmp_path):
    path, _, _ = _save(tmp_path)
    data = open(path, "rb").read()
    with open(path, "wb") as fh:
        fh.write(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="not a readable cmpl-ray checkpoint"):
        load_checkpoint(path)


def test_foreign_and_missing_files_are_refused(tmp_path):
    torch.save({"state_dict": {"w": torch.zeros(2)}}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not a cmpl-ray checkpoint"):
        load_checkpoint(tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "nope")


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch PWNED",))


def test_malicious_pickle_is_not_executed(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with open(tmp_path / "evil.pt", "wb") as fh:
        pickle.dump({"format": "x", "payload": _Evil()}, fh)
    with pytest.raises(CheckpointError):
        load_checkpoint(tmp_path / "evil.pt")
    assert not (tmp_path / "PWNED").exists()
