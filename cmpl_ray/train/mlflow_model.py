"""The best checkpoint as an MLflow model: the primary network, loadable with ``mlflow.pytorch.load_model``.

What is logged (:func:`log_primary_model`), as model ``primary`` of the run (``runs:/<run_id>/primary``):

- the primary network with the weights validation measured (the EMA when the run kept one, as ``cmpl-ray
  eval`` loads them), in eval mode, saved in MLflow's ``pt2`` format (``torch.export``): a self-contained graph,
  so loading needs neither pickle (no ``MLFLOW_ALLOW_PICKLE_DESERIALIZATION``) nor this package;
- signature: input float32 ``(-1, 3, T, H, W)``, the clip normalised as in training (uint8 / 255, minus
  ``loop.MEAN``, over ``loop.STD``, the same for every channel; :func:`cmpl_ray.train.loop.normalize`), output
  float32 ``(-1, num_classes)`` logits (softmax them for probabilities);
- input example: two normalised test-time views decoded from the validation list. Two, not one: ``torch.export``
  specialises a dimension whose example size is 1, so a one-clip example gives a model that accepts exactly one
  clip per call (measured on torch 2.13: "Guard failed: x.size()[0] == 1" for a batch of 3);
- metadata ``cmpl_ray``: class names, the resolved config (the test-time preprocessing ``cmpl-ray predict``
  repeats), the input normalisation (``normalization``: scale, per-channel mean and std, and the ``input``
  sentence, both read from ``loop``'s constants so they cannot disagree with training), epoch, global step and
  the checkpoint's validation metrics; the run's metrics at that step are linked to the model by MLflow (its
  ``step``);
- ``pip_requirements`` pinned to this torch and mlflow: given explicitly, MLflow does not spend seconds inferring
  them in a subprocess.

``tracking.register_as`` registers it in the model registry under that name (a new version per run).
:func:`publish_best` is what ``run_training`` calls at the end: checkpoint folder, model, a link; tracking trouble
never fails a finished run.
"""

from __future__ import annotations

import os
import time
from typing import Any

import numpy as np
import torch

from ..tracking import tracker as tracking

MODEL_NAME = "primary"
META_KEY = "cmpl_ray"
EXAMPLE_CLIPS = 2  # > 1 keeps the exported batch dimension dynamic (see module docstring)


def is_model_uri(s: str) -> bool:
    """An MLflow model URI (``runs:/<run_id>/primary``, ``models:/<name>/<version>``) rather than a file path."""
    return s.startswith(("runs:/", "models:/"))


def input_example(cfg: Any, num_classes: int, videos: list[str], n: int = EXAMPLE_CLIPS) -> np.ndarray:
    """``n`` normalised test-time views (float32 (n, 3, T, H, W)) of the first videos that decode; when fewer
    decode, the decoder's placeholder clip (zeros before normalisation) fills in: the shape is what matters."""
    from ..data.pipeline import val_decoder
    from .loop import normalize

    dec = val_decoder(cfg, num_classes, with_aux=False)
    views, fill = [], None
    for path in videos[: 2 * n]:
        out = dec.decode_val([(path, 0)])
        fill = out["v_p"][0][:1] if fill is None else fill
        if out["valid"][0]:
            views.extend(out["v_p"][0])
        if len(views) >= n:
            break
    if fill is None:
        raise ValueError("no video to build an input example from")
    clips = np.stack((views + [fill[0]] * n)[:n])
    return normalize(torch.from_numpy(clips), torch.device("cpu")).numpy().astype(np.float32)


def normalization_metadata() -> dict[str, Any]:
    """What :func:`cmpl_ray.train.loop.normalize` does, as numbers a client can apply: ``(x / scale - mean[c]) /
    std[c]``. Read from ``loop`` at call time, so the metadata always states the constants training used."""
    from . import loop

    return {"scale": 255.0, "mean": [loop.MEAN] * 3, "std": [loop.STD] * 3}


def input_description() -> str:
    """The model's input and output in one sentence, from :func:`normalization_metadata`."""
    norm = normalization_metadata()  # one value per channel, the same for all three
    return (
        f"float32 (N, 3, T, H, W): uint8 RGB / {norm['scale']:g}, minus mean {norm['mean'][0]}, over std "
        f"{norm['std'][0]} (every channel); output: logits (N, num_classes)"
    )


def signature_for(example: np.ndarray, num_classes: int):
    """Tensor signature: any batch of clips shaped like ``example`` -> logits."""
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    return ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, *example.shape[1:]))]),
        outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, num_classes))]),
    )


def _requirements() -> list[str]:
    import mlflow

    return [f"torch=={torch.__version__.split('+')[0]}", f"mlflow=={mlflow.__version__}", "numpy"]


def log_primary_model(
    uri: str,
    run_id: str,
    checkpoint: str,
    *,
    example: np.ndarray | None = None,
    register_as: str = "",
    videos: list[str] | None = None,
):
    """Log the checkpoint's primary network to ``run_id`` (see module docstring); returns MLflow's ``ModelInfo``.

    ``example`` defaults to views of ``videos`` (default: the checkpoint config's validation list)."""
    import mlflow
    from mlflow.tracking._tracking_service.utils import _use_tracking_uri

    from . import checkpoint as ckpt
    from .inference import models_from_state

    state = ckpt.load_checkpoint(checkpoint)
    cfg, primary, _, names = models_from_state(state)
    if example is None:
        example = input_example(cfg, len(names), videos if videos is not None else _val_videos(cfg))
    meta = {
        "class_names": names,
        "config": cfg.to_dict(),
        "epoch": int(state["epoch"]) + 1,
        "global_step": int(state["global_step"]),
        "weights": "ema" if state.get("ema") else "live",
        "metrics": state.get("metrics", {}),
        "normalization": normalization_metadata(),
        "input": input_description(),
    }
    uri = tracking.resolve_tracking_uri(uri)
    client = tracking.mlflow_client(uri)
    run = client.get_run(run_id)
    # created here, in the run's experiment: left to log_model, MLflow 3.17 puts a model logged for a run that is
    # not the fluent active run into the default experiment "0", where runs:/<run_id>/primary does not find it
    model = client.create_logged_model(
        run.info.experiment_id,
        name=MODEL_NAME,
        source_run_id=run_id,
        params=dict(run.data.params),
        tags={"cmpl.arch": cfg.model.primary_arch, "cmpl.algo": cfg.algo.name},
        model_type="video-classifier",
    )
    with _use_tracking_uri(uri):
        return mlflow.pytorch.log_model(
            primary,
            name=MODEL_NAME,
            run_id=run_id,
            model_id=model.model_id,
            signature=signature_for(example, len(names)),
            input_example=example,
            serialization_format="pt2",
            pip_requirements=_requirements(),
            metadata={META_KEY: meta},
            registered_model_name=register_as or None,
            step=int(state["global_step"]),
        )


def _val_videos(cfg: Any) -> list[str]:
    from ..data.lists import read_list, resolve_path

    return [resolve_path(cfg.data.root, it.path) for it in read_list(cfg.data.val_list)[: 2 * EXAMPLE_CLIPS]]


def load_logged_model(model_uri: str, tracking_uri: str = ""):
    """(config, network, class names) of a model logged by :func:`log_primary_model`: what ``predict`` needs to
    decode a video the way validation did and name the classes."""
    import mlflow
    from mlflow.models import Model
    from mlflow.tracking._tracking_service.utils import _use_tracking_uri

    from ..config import from_dict

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # predict prints only its answer
    with _use_tracking_uri(tracking.resolve_tracking_uri(tracking_uri)):
        local = mlflow.artifacts.download_artifacts(model_uri)
    meta = (Model.load(local).metadata or {}).get(META_KEY)
    if not meta:
        raise ValueError(f"{model_uri}: not a cmpl-ray model (no {META_KEY!r} metadata)")
    net = mlflow.pytorch.load_model(local)
    return from_dict(meta["config"]), net, list(meta["class_names"])


def publish_best(cfg: Any, uri: str, run_id: str | None, best: Any, verbose: bool = True) -> dict[str, Any]:
    """End of ``run_training``: the best checkpoint (a Ray ``Checkpoint``) as artifacts (``tracking.log_checkpoint``)
    and as model ``primary`` (``tracking.log_model``, registered when ``tracking.register_as``), then a link to
    the run. Returns what was done; any MLflow error is one printed warning, never an exception."""
    done: dict[str, Any] = {}
    if not run_id or best is None:
        return done
    t0 = time.perf_counter()
    try:
        with best.as_directory() as d:  # local checkpoints: the folder itself; remote ones: a download
            if cfg.tracking.log_checkpoint:
                tracking.mlflow_client(uri).log_artifacts(run_id, d, "best_checkpoint")
                done["checkpoint"] = "best_checkpoint"
            if cfg.tracking.log_model:
                t1 = time.perf_counter()
                info = log_primary_model(uri, run_id, d, register_as=cfg.tracking.register_as)
                done.update(
                    model_uri=f"runs:/{run_id}/{MODEL_NAME}",
                    model_id=info.model_id,
                    model_seconds=time.perf_counter() - t1,
                    registered=getattr(info, "registered_model_version", None),
                )
        from ..tracking.runs import run_url

        done["url"] = run_url(uri, tracking.mlflow_client(uri).get_run(run_id).info.experiment_id, run_id)
    except Exception as e:  # noqa: BLE001 - tracking trouble never fails a finished run
        print(f"[cmpl-ray] WARNING could not log the best checkpoint / model to MLflow: {e!r}", flush=True)
    done["seconds"] = time.perf_counter() - t0
    if verbose and "model_uri" in done:
        reg = (
            f", registered as {cfg.tracking.register_as!r} version {done['registered']}"
            if done.get("registered")
            else ""
        )
        print(
            f"[cmpl-ray] MLflow model {done['model_uri']}{reg} ({done['model_seconds']:.1f} s); predict with: "
            f"cmpl-ray predict {done['model_uri']} VIDEO.mp4",
            flush=True,
        )
    if verbose and "url" in done:
        print(f"[cmpl-ray] MLflow run page (model-training view): {done['url']}", flush=True)
    return done
