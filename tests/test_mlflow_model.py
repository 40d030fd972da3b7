"""What a run shows in MLflow (issue 17): the best checkpoint as an MLflow PyTorch model, the list files as dataset
inputs, a model-training experiment. Real sqlite store, real checkpoint, real mp4s; no Ray (the model is logged from
a checkpoint written by ``save_checkpoint``, as ``run_training`` does at its end).

One module-scoped store: creating it runs MLflow's migrations (~9 s on 2 cores); logging the model ~3-4 s.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import socket

import numpy as np
import pytest
import torch

from cmpl_ray.cli import main
from cmpl_ray.config import ConfigError, load_config
from cmpl_ray.data.lists import read_list, split_labeled, write_list
from cmpl_ray.tracking import runs as mlflow_run
from cmpl_ray.tracking import tracker as tracking
from cmpl_ray.train import mlflow_model
from cmpl_ray.train.build import build_networks
from cmpl_ray.train.checkpoint import save_checkpoint
from cmpl_ray.train.ema import WeightEma
from cmpl_ray.train.inference import load_models, predict


def _cfg(root: str, splits, **over):
    sets = {
        "data.root": root,
        "data.labeled_list": f"{splits}/labeled.txt",
        "data.unlabeled_list": f"{splits}/unlabeled.txt",
        "data.val_list": f"{root}/val.txt",
        "data.classes_file": f"{root}/classes.txt",
        "data.crop_size": 32,
        "data.train_short_side": "[32, 40]",
        "data.test_short_side": 32,
        "data.raw_clip_len": 16,
        "data.eval_clips": 2,
        "data.eval_crops": 1,
    }
    sets.update(over)
    return load_config("demo", overrides=[f"{k}={v}" for k, v in sets.items()])


class _Ckpt:
    """The part of ray.train.Checkpoint that publish_best uses."""

    def __init__(self, path):
        self.path = str(path)

    def as_directory(self):
        return contextlib.nullcontext(self.path)


@pytest.fixture(scope="module")
def logged(synth_root, tmp_path_factory):
    """A checkpoint whose EMA differs from its live weights, a run with list inputs, the model logged and
    registered through publish_best (what run_training calls)."""
    d = tmp_path_factory.mktemp("mlmodel")
    lab, unl = split_labeled(read_list(os.path.join(synth_root, "train.txt")), per_class=2, seed=0)
    write_list(str(d / "labeled.txt"), lab)
    write_list(str(d / "unlabeled.txt"), unl)
    cfg = _cfg(synth_root, d, **{"tracking.uri": f"sqlite:///{d}/mlflow.db", "tracking.register_as": "cmpl-test"})
    torch.manual_seed(0)
    primary, aux = build_networks(cfg, 4)
    ema = WeightEma([primary, aux], 0.5)
    with torch.no_grad():
        for p in primary.parameters():
            p.add_(0.05)
    ema.update()  # EMA != live: the model must carry what validation measured (the EMA)
    opt = torch.optim.SGD(list(primary.parameters()) + list(aux.parameters()), lr=0.1)
    save_checkpoint(
        d / "best",
        primary=primary,
        aux=aux,
        optimizer=opt,
        scaler=None,
        epoch=1,
        global_step=6,
        config=cfg.to_dict(),
        metrics={"val_top1": 37.5},
        extra={"class_names": ["a", "b", "c", "d"]},
        ema=ema,
    )
    uri = cfg.tracking.uri
    run_id = mlflow_run.start_run(uri, "mlmodel-exp", "r1", {"algo.name": "cmpl"})
    assert mlflow_run.log_list_inputs(uri, run_id, cfg)
    client = tracking.mlflow_client(uri)
    client.log_metric(run_id, "val_top1", 37.5, step=6)
    done = mlflow_model.publish_best(cfg, uri, run_id, _Ckpt(d / "best"), verbose=False)
    return cfg, uri, run_id, d, done, client


def test_logged_model_loads_and_equals_the_checkpoint_primary(logged):
    import mlflow
    from mlflow.models import Model

    cfg, uri, run_id, d, done, client = logged
    assert done["model_uri"] == f"runs:/{run_id}/primary" and done["checkpoint"] == "best_checkpoint"
    mlflow.set_tracking_uri(uri)
    try:
        net = mlflow.pytorch.load_model(f"runs:/{run_id}/primary")
        local = mlflow.artifacts.download_artifacts(f"runs:/{run_id}/primary")
    finally:
        mlflow.set_tracking_uri(None)
    info = Model.load(local)
    assert info.flavors["pytorch"].get("serialization_format", "pt2") == "pt2"
    assert os.path.exists(os.path.join(local, "data", "model.pt2"))  # torch.export: no pickle to load
    sig_in, sig_out = info.signature.inputs.inputs[0], info.signature.outputs.inputs[0]
    T = cfg.data.raw_clip_len // cfg.data.primary_stride
    assert sig_in.shape == (-1, 3, T, 32, 32) and sig_in.type == np.float32 and sig_out.shape == (-1, 4)
    example = info.load_input_example(local)
    example = np.asarray(example[0] if isinstance(example, (tuple, list)) else example)
    assert example.shape == (2, 3, T, 32, 32) and example.dtype == np.float32
    assert example.min() < -1.0 and example.max() > 1.0  # normalised (mean/std), not raw 0..255 or 0..1
    meta = info.metadata["cmpl_ray"]
    assert meta["class_names"] == ["a", "b", "c", "d"] and meta["weights"] == "ema" and meta["global_step"] == 6
    _, primary, _, _ = load_models(d / "best")  # EMA weights, eval mode: what eval / predict use
    clips = torch.from_numpy(example)
    with torch.no_grad():
        out, want = net(clips), primary(clips)
        assert out.shape == (2, 4)
        torch.testing.assert_close(out, want)
        assert net(torch.cat([clips, clips[:1]])).shape == (3, 4)  # batch is dynamic (2-clip example)
    run = client.get_run(run_id)
    assert [m.model_id for m in run.outputs.model_outputs] == [done["model_id"]]
    lm = client.get_logged_model(done["model_id"])
    assert lm.name == "primary" and lm.experiment_id == run.info.experiment_id
    assert {m.key for m in lm.metrics} >= {"val_top1"}  # the best step's metrics are linked to the model
    version = client.get_model_version("cmpl-test", done["registered"])
    assert version.run_id == run_id


def test_predict_on_a_runs_and_models_uri_matches_the_checkpoint(logged, synth_root, capsys):
    cfg, uri, run_id, d, done, client = logged
    video = os.path.join(synth_root, read_list(f"{synth_root}/val.txt")[0].path)
    want = predict(str(d / "best"), [video], topk=4)[0]["top"]
    got = predict(f"runs:/{run_id}/primary", [video], topk=4, tracking_uri=uri)[0]["top"]
    assert [n for n, _ in got] == [n for n, _ in want]
    np.testing.assert_allclose([p for _, p in got], [p for _, p in want], rtol=1e-5, atol=1e-6)
    assert (
        main(["predict", f"models:/cmpl-test/{done['registered']}", video, "--tracking-uri", uri, "--topk", "2"]) == 0
    )
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == video and len(lines) == 3 and lines[1].split()[1] == want[0][0]


def test_list_files_are_dataset_inputs_with_their_hash(logged):
    cfg, uri, run_id, d, done, client = logged
    ins = client.get_run(run_id).inputs.dataset_inputs
    by_role = {next(t.value for t in i.tags if t.key == "cmpl.list"): i for i in ins}
    assert set(by_role) == {"labeled", "unlabeled", "val"}
    for role, path in (("labeled", cfg.data.labeled_list), ("val", cfg.data.val_list)):
        i = by_role[role]
        sha = hashlib.sha256(open(path, "rb").read()).hexdigest()
        assert i.dataset.name == os.path.basename(path) and i.dataset.digest == sha[:32]
        context = next(t.value for t in i.tags if t.key == "mlflow.data.context")
        assert context == ("validation" if role == "val" else "training")
    assert '"videos": 8' in by_role["val"].dataset.profile  # 4 classes x 2 val videos
    same = load_config(
        "demo",
        overrides=[
            f"data.labeled_list={cfg.data.val_list}",
            f"data.val_list={cfg.data.val_list}",
            f"data.unlabeled_list={cfg.data.unlabeled_list}",
        ],
    )
    tags = [{t.key: t.value for t in i.tags} for i in mlflow_run.list_inputs(same.data)]
    assert [(t["cmpl.list"], t["mlflow.data.context"]) for t in tags] == [
        ("labeled+val", "training+validation"),
        ("unlabeled", "training"),
    ]


def test_experiments_are_model_training_ones(logged):
    cfg, uri, run_id, d, done, client = logged
    exp = client.get_experiment_by_name("mlmodel-exp")
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
    other = client.create_experiment("user-kind")
    client.set_experiment_tag(other, "mlflow.experimentKind", "genai_development")
    mlflow_run.start_run(uri, "user-kind", "r", {})
    assert client.get_experiment(other).tags["mlflow.experimentKind"] == "genai_development"  # a user's choice wins
    assert done["url"] == (
        f"http://127.0.0.1:5000/#/experiments/{exp.experiment_id}/runs/{run_id}?workflowType=machine_learning"
    )
    assert mlflow_run.run_url("http://h:5001/", "3").startswith("http://h:5001/#/experiments/3/runs?")


def test_tracking_trouble_never_fails_the_run(logged, capsys):
    cfg, d = logged[0], logged[3]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"  # closed again: nothing listens there
    done = mlflow_model.publish_best(cfg, dead, "0" * 32, _Ckpt(d / "best"))
    assert "model_uri" not in done and "WARNING could not log" in capsys.readouterr().out
    assert mlflow_model.publish_best(cfg, dead, None, _Ckpt(d / "best")) == {}


@pytest.mark.parametrize("name", ["a/b", "a:b", ".."])
def test_register_as_is_validated(name):
    with pytest.raises(ConfigError, match="tracking.register_as"):
        load_config("demo", overrides=[f"tracking.register_as={name}"])
    with pytest.raises(ConfigError, match="tracking.log_model"):
        load_config("demo", overrides=["tracking.register_as=ok", "tracking.log_model=false"])
    assert load_config("demo", overrides=["tracking.register_as=cmpl-demo"]).tracking.register_as == "cmpl-demo"


def _as_metadata_says(clip: np.ndarray, norm: dict) -> np.ndarray:
    """Preprocess a uint8 (N, C, T, H, W) clip by the model metadata's words alone (what a serving client does)."""
    shape = (1, -1, 1, 1, 1)
    return (clip / norm["scale"] - np.reshape(norm["mean"], shape)) / np.reshape(norm["std"], shape)


def test_logged_metadata_states_the_normalisation_training_uses(logged):
    import mlflow
    from mlflow.models import Model

    from cmpl_ray.train import loop

    uri, run_id = logged[1], logged[2]
    mlflow.set_tracking_uri(uri)
    try:
        meta = Model.load(mlflow.artifacts.download_artifacts(f"runs:/{run_id}/primary")).metadata["cmpl_ray"]
    finally:
        mlflow.set_tracking_uri(None)
    assert meta["normalization"] == {"scale": 255.0, "mean": [loop.MEAN] * 3, "std": [loop.STD] * 3}
    assert f"minus mean {loop.MEAN}, over std {loop.STD}" in meta["input"] and "0.485" not in meta["input"]
    clip = torch.randint(0, 256, (2, 3, 4, 5, 5), dtype=torch.uint8)
    want = loop.normalize(clip, torch.device("cpu")).numpy()
    np.testing.assert_allclose(_as_metadata_says(clip.numpy(), meta["normalization"]), want, rtol=1e-5, atol=1e-5)


def test_normalisation_metadata_follows_the_training_constants(monkeypatch):
    from cmpl_ray.train import loop

    monkeypatch.setattr(loop, "MEAN", 0.3)
    monkeypatch.setattr(loop, "STD", 0.7)
    norm = mlflow_model.normalization_metadata()
    assert norm["mean"] == [0.3] * 3 and norm["std"] == [0.7] * 3
    assert "minus mean 0.3, over std 0.7" in mlflow_model.input_description()
    clip = torch.randint(0, 256, (1, 3, 2, 3, 3), dtype=torch.uint8)
    np.testing.assert_allclose(
        _as_metadata_says(clip.numpy(), norm), loop.normalize(clip, torch.device("cpu")).numpy(), rtol=1e-5, atol=1e-5
    )
