"""``cmpl-ray ui``'s views on a real sqlite MLflow store (no server, no browser: tests/e2e/test_ui_browser.py)."""

import json
import subprocess
import sys

import pytest
from mlflow import MlflowClient

from cmpl_ray import ui


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A single run and a 2-trial sweep (parent + children, as cmpl-ray tune writes them) in one experiment."""
    d = tmp_path_factory.mktemp("uistore")
    uri = f"sqlite:///{d}/mlflow.db"
    c = MlflowClient(uri)
    exp = c.create_experiment("e")
    single = c.create_run(exp, run_name="single").info.run_id
    for k, v in {"algo.name": "supervised", "optim.lr": "0.1", "run.name": "single", "train.epochs": "3"}.items():
        c.log_param(single, k, v)
    parent = c.create_run(exp, run_name="sw", tags={"cmpl.sweep": "sw", "cmpl.role": "sweep"}).info.run_id
    c.log_param(parent, "sweep.axes", "optim.lr,algo.threshold")
    c.log_param(parent, "sweep.metric", "val_mean_class_acc")
    for i, lr in enumerate(("0.05", "0.2")):
        t = c.create_run(exp, run_name=f"trial-{i}", tags={"mlflow.parentRunId": parent}).info.run_id
        for k, v in {
            "algo.name": "cmpl",
            "optim.lr": lr,
            "algo.threshold": "0.9",
            "run.name": f"t{i}",
            "train.epochs": "3",
        }.items():
            c.log_param(t, k, v)
        c.log_metric(t, "val_top1", 10.0 * (i + 1))
    return uri, c, exp, parent


def test_column_ids_and_state_are_what_the_ui_writes():
    assert ui.column("metrics", "val_top1") == "metrics.`val_top1`"
    s = ui.view_state(["optim.lr"], metric="val_mean_class_acc", search_filter="x")
    assert s["selectedColumns"] == [
        "params.`optim.lr`",
        "metrics.`val_mean_class_acc`",
        "metrics.`val_top1`",
        "metrics.`aux_val_top1`",
    ]
    assert (s["orderByKey"], s["orderByAsc"], s["searchFilter"]) == ("metrics.`val_mean_class_acc`", False, "x")
    assert ui.share_key("cmpl-ray-sweep-a b/c") == "cmpl-ray-sweep-a-b-c"
    assert (
        ui.link("http://h:1/", "3", "k")
        == "http://h:1/#/experiments/3/runs?workflowType=machine_learning&viewStateShareKey=k"
    )


def test_experiment_view_shows_what_tells_runs_apart(store):
    uri, c, exp, _ = store
    exp_id, key = ui.prepare(uri)  # no experiment named: the newest run's
    assert exp_id == exp and key == "cmpl-ray-runs"
    state = json.loads(c.get_experiment(exp).tags[ui.SHARE_TAG + key])
    params = [col for col in state["selectedColumns"] if col.startswith("params.")]
    # algo.name always; lr and threshold differ (threshold is missing in one run: not a difference); run.* hidden;
    # train.epochs is the same everywhere; the sweep parent's own sweep.* params are not training parameters
    assert params == ["params.`algo.name`", "params.`optim.lr`"]
    assert state["searchFilter"] == ""


def test_sweep_view_filters_its_trials_and_sorts_on_the_sweep_metric(store):
    uri, c, exp, parent = store
    exp_id, key = ui.prepare(uri, sweep="sw")
    state = json.loads(c.get_experiment(exp).tags[ui.SHARE_TAG + key])
    assert key == "cmpl-ray-sweep-sw"
    assert state["searchFilter"] == f"tags.`mlflow.parentRunId` = '{parent}'"
    assert state["orderByKey"] == "metrics.`val_mean_class_acc`"
    assert state["selectedColumns"][:2] == ["params.`optim.lr`", "params.`algo.threshold`"]
    # the filter is valid MLflow search syntax and selects exactly the trials
    assert {r.info.run_name for r in c.search_runs([exp], filter_string=state["searchFilter"])} == {
        "trial-0",
        "trial-1",
    }
    with pytest.raises(LookupError, match="no sweep named 'nope'"):
        ui.prepare(uri, sweep="nope")


def test_link_only_command_prints_the_link_and_unknown_sweep_exits_1(store):
    uri = store[0]
    r = subprocess.run(
        [sys.executable, "-m", "cmpl_ray", "ui", "--store", uri, "--sweep", "sw", "--link-only", "--port", "5123"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().startswith("http://127.0.0.1:5123/#/experiments/")
    assert r.stdout.strip().endswith("viewStateShareKey=cmpl-ray-sweep-sw")
    r = subprocess.run(
        [sys.executable, "-m", "cmpl_ray", "ui", "--store", uri, "--sweep", "nope", "--link-only"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert r.returncode == 1 and "no sweep named 'nope'" in r.stderr
