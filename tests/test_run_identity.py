"""Run identity (issue 16): a changed config never resumes, reports or logs into another run.

Unit tests of :mod:`cmpl_ray.train.identity` (fingerprint, diff, the run record), then the user's sequence
end to end on a real local Ray, real mp4s and a real sqlite MLflow store: supervised, then FixMatch under the
same ``run.name`` (refused with exit 2, nothing trained, old result not reported), ``--fresh`` (trains, new
MLflow run; CMPL likewise), an identical re-run (reports, trains nothing), a longer schedule (refused), and
``run_training`` re-entered as a Tune trial is (unchanged: reported; changed axis value: refused).
"""

import json
import os

import pytest
import ray
from mlflow import MlflowClient

from cmpl_ray.cli import main
from cmpl_ray.config import load_config
from cmpl_ray.data.lists import VideoItem, read_list, split_labeled, write_list
from cmpl_ray.train import identity as ident_mod
from cmpl_ray.train.identity import RunMismatch


def _ident(**over):
    cfg = load_config("demo", overrides=[f"{k}={v}" for k, v in over.items()])
    return ident_mod.identity(cfg.flat(), "d1")


def test_identity_ignores_paths_and_tracking_but_not_what_is_trained():
    base = _ident()
    assert ident_mod.fingerprint(base) == ident_mod.fingerprint(
        _ident(
            **{
                "run.output_dir": "elsewhere",
                "run.name": "x",
                "tracking.experiment": "e",
                "train.log_every": 3,
                "train.cpus_per_worker": 3,
                "data.decode_actors": 5,
                "run.resume": "/somewhere",
            }
        )
    )
    for key, value in [
        ("algo.name", "fixmatch"),
        ("train.epochs", 9),
        ("optim.lr", 0.05),
        ("data.crop_size", 48),
        ("data.decode_batch", 7),
        ("train.num_workers", 2),
    ]:
        other = _ident(**{key: value})
        assert ident_mod.fingerprint(other) != ident_mod.fingerprint(base), key
        assert [d for d in ident_mod.diff(base, other) if d.startswith(key + ":")], key
    assert ident_mod.diff(base, _ident(**{"algo.name": "fixmatch"})) == ["algo.name: cmpl -> fixmatch"]
    # a re-split list under the same path is another run
    a = ident_mod.lists_digest([VideoItem("a.mp4", 0)], [], [])
    assert a != ident_mod.lists_digest([VideoItem("a.mp4", 1)], [], [])
    assert a != ident_mod.lists_digest([], [VideoItem("a.mp4", 0)], [])


def test_run_record_new_resume_mismatch_complete_and_fresh(tmp_path):
    store, ident = str(tmp_path), _ident(**{"algo.name": "supervised"})
    assert ident_mod.check(store, "r", ident) is None  # nothing there yet
    rec = ident_mod.begin(store, "r", ident, None)
    assert ident_mod.check(store, "r", ident)["uid"] == rec["uid"]  # same config: resume, same MLflow uid
    with pytest.raises(RunMismatch, match=r"algo.name: supervised -> fixmatch.*run.name=r-2.*--fresh"):
        ident_mod.check(store, "r", _ident(**{"algo.name": "fixmatch"}))
    ident_mod.complete(store, "r", rec, {"val_top1": 42.0, "history": [{"epoch": 8.0}]})
    done = ident_mod.check(store, "r", ident)
    assert done["status"] == "complete" and done["metrics"]["val_top1"] == 42.0
    moved = ident_mod.move_aside(store, "r")
    assert moved and os.path.exists(os.path.join(moved, ident_mod.FILE)) and ident_mod.check(store, "r", ident) is None
    os.makedirs(tmp_path / "legacy" / "checkpoint_000000")  # a run from before identities: cannot be checked
    with pytest.raises(RunMismatch, match="older cmpl-ray"):
        ident_mod.check(store, "legacy", ident)


def test_checkpoint_of_another_config_is_refused_also_without_a_stored_identity():
    cfg = load_config("demo", overrides=["algo.name=supervised"])
    ident = ident_mod.identity(cfg.flat(), "d1")
    legacy = {"config": cfg.to_dict(), "extra": {}}
    ident_mod.check_checkpoint(legacy, ident, "ckpt")  # same config: accepted
    other = ident_mod.identity(load_config("demo", overrides=["algo.name=cmpl"]).flat(), "d1")
    with pytest.raises(RunMismatch, match="algo.name: supervised -> cmpl"):
        ident_mod.check_checkpoint(legacy, other, "ckpt")
    with pytest.raises(RunMismatch, match="algo.name: cmpl -> supervised"):
        ident_mod.check_checkpoint({"extra": {"identity": other}}, ident, "ckpt")


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False)
    yield
    ray.shutdown()


def _args(root, tmp, algo, out, *extra, **over):
    sets = {
        "data.root": root,
        "data.labeled_list": f"{tmp}/lab.txt",
        "data.unlabeled_list": f"{tmp}/unl.txt",
        "data.val_list": f"{root}/val.txt",
        "data.classes_file": f"{root}/classes.txt",
        "data.crop_size": 32,
        "data.train_short_side": "[32,40]",
        "data.test_short_side": 32,
        "data.eval_clips": 1,
        "train.batch_labeled": 2,
        "algo.unlabeled_ratio": 2,
        "train.epochs": 1,
        "train.steps_per_epoch": 2,
        "train.eval_every": 1,
        "optim.warmup_epochs": 0,
        "algo.name": algo,
        "run.output_dir": f"{tmp}/{out}",
        "run.storage_path": f"{tmp}/ray_results",
        "run.name": "demo",
        "tracking.uri": f"sqlite:///{tmp}/mlflow.db",
    }
    sets.update(over)
    return ["train", "--preset", "demo", *extra] + [a for k, v in sets.items() for a in ("--set", f"{k}={v}")]


@pytest.mark.slow
def test_changed_algorithm_is_refused_fresh_trains_identical_rerun_reports(synth_root, tmp_path, local_ray, capsys):
    """The issue's sequence: supervised, FixMatch, CMPL under one run.name (FixMatch used to report the
    supervised result as its own, CMPL died in the checkpoint loader, all three shared one MLflow run)."""
    lab, unl = split_labeled(read_list(os.path.join(synth_root, "train.txt")), per_class=2, seed=0)
    write_list(str(tmp_path / "lab.txt"), lab)
    write_list(str(tmp_path / "unl.txt"), unl)
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")

    def runs():
        return client.search_runs(
            [e.experiment_id for e in client.search_experiments()], "tags.`cmpl.run_name` = 'demo'"
        )

    assert main(_args(synth_root, tmp_path, "supervised", "sup")) == 0
    sup = json.loads((tmp_path / "sup" / "metrics.json").read_text())
    capsys.readouterr()

    # FixMatch under the same run name: refused before any training, the supervised result is not reported
    assert main(_args(synth_root, tmp_path, "fixmatch", "fm")) == 2
    err = capsys.readouterr().err
    assert "algo.name: supervised -> fixmatch" in err and "--fresh" in err and "run.name=demo-2" in err
    assert not (tmp_path / "fm").exists()
    # CMPL (used to die in the checkpoint loader): refused the same way
    assert main(_args(synth_root, tmp_path, "cmpl", "cm")) == 2
    assert "algo.name: supervised -> cmpl" in capsys.readouterr().err
    assert len(runs()) == 1  # nothing logged by the refused runs

    # --fresh: trains FixMatch, keeps the old run's folder, logs into a NEW MLflow run
    assert main(_args(synth_root, tmp_path, "fixmatch", "fm", "--fresh")) == 0
    fm = json.loads((tmp_path / "fm" / "metrics.json").read_text())
    assert fm["mlflow_run_id"] != sup["mlflow_run_id"] and fm["fingerprint"] != sup["fingerprint"]
    assert [h["epoch"] for h in fm["history"]] == [1.0] and "already_complete" not in fm
    # ... and CMPL with --fresh trains too, with its auxiliary network
    assert main(_args(synth_root, tmp_path, "cmpl", "cm", "--fresh")) == 0
    cm = json.loads((tmp_path / "cm" / "metrics.json").read_text())
    assert "aux_val_top1" in cm and len({sup["fingerprint"], fm["fingerprint"], cm["fingerprint"]}) == 3
    assert len([p for p in os.listdir(tmp_path / "ray_results") if p.startswith("demo.old-")]) == 2
    by_algo = {r.data.params["algo.name"]: r for r in runs()}
    assert sorted(by_algo) == ["cmpl", "fixmatch", "supervised"]  # one MLflow run each, none shared
    assert {a: r.data.tags["cmpl.fingerprint"] for a, r in by_algo.items()} == {
        "supervised": sup["fingerprint"],
        "fixmatch": fm["fingerprint"],
        "cmpl": cm["fingerprint"],
    }
    assert by_algo["cmpl"].info.run_id == cm["mlflow_run_id"]
    capsys.readouterr()

    # the identical command again: says it is complete, prints its result, trains and logs nothing
    run_dir, metrics_file = tmp_path / "ray_results" / "demo", tmp_path / "cm" / "metrics.json"
    before, mtime = sorted(os.listdir(run_dir)), metrics_file.stat().st_mtime_ns
    assert main(_args(synth_root, tmp_path, "cmpl", "cm")) == 0
    out = capsys.readouterr().out
    assert "already completed with this exact config" in out and f"val top1 {cm['val_top1']:.2f}%" in out
    assert f"aux top1 {cm['aux_val_top1']:.2f}%" in out and " labeled, " not in out  # no training banner
    assert sorted(os.listdir(run_dir)) == before and metrics_file.stat().st_mtime_ns == mtime
    assert len(runs()) == 3

    # a longer schedule is another run (the cosine LR depends on the total): refused, with the key named
    assert main(_args(synth_root, tmp_path, "cmpl", "cm", **{"train.epochs": 2})) == 2
    assert "train.epochs: 1 -> 2" in capsys.readouterr().err


@pytest.mark.slow
def test_run_training_reports_a_completed_run_and_refuses_a_changed_one(synth_root, tmp_path, local_ray):
    """The API ``trial_fn`` (Tune) relies on: re-entered unchanged, ``run_training`` returns the stored result
    with ``already_complete`` (the trial reports it to Tune); re-entered with another value of a swept axis it
    raises :class:`RunMismatch` (the trial errors). The real Tune re-entry is in ``test_tune_e2e.py``."""
    from cmpl_ray.train.launch import run_training

    lab, unl = split_labeled(read_list(os.path.join(synth_root, "train.txt")), per_class=2, seed=0)
    write_list(str(tmp_path / "lab.txt"), lab)
    write_list(str(tmp_path / "unl.txt"), unl)

    def cfg(tau):
        args = _args(
            synth_root,
            tmp_path,
            "fixmatch",
            "trial",
            **{"run.name": "sw-t0", "algo.threshold": tau, "tracking.enabled": "false"},
        )
        return load_config("demo", overrides=[a for a in args[3:] if a != "--set"])

    first = run_training(cfg(0.5), verbose=False)
    assert not first.get("already_complete")
    again = run_training(cfg(0.5), verbose=False)
    assert again["already_complete"] and again["val_top1"] == first["val_top1"]
    assert again["history"] == first["history"]
    with pytest.raises(RunMismatch, match="algo.threshold: 0.5 -> 0.7"):
        run_training(cfg(0.7), verbose=False)
