"""Evaluate or run a saved checkpoint outside training: ``cmpl-ray eval`` and ``cmpl-ray predict`` (which also
takes the MLflow model a run logged, :mod:`cmpl_ray.train.mlflow_model`).

Uses the same multi-clip x multi-crop protocol as training-time evaluation (softmax averaged over views,
primary network for the answer, auxiliary reported for analysis).
"""

from __future__ import annotations

import torch

from ..config import Config, from_dict
from ..data.lists import read_list
from ..data.pipeline import ERR_CODES, iter_val_batches, val_decoder
from . import checkpoint as ckpt
from .build import build_networks
from .loop import evaluate, normalize, summarize_eval


def load_models(path: str) -> tuple[Config, torch.nn.Module, torch.nn.Module | None, list[str]]:
    return models_from_state(ckpt.load_checkpoint(path))


def models_from_state(state: dict) -> tuple[Config, torch.nn.Module, torch.nn.Module | None, list[str]]:
    """Config, primary, auxiliary (or None) in eval mode with the weights validation measured, class names."""
    cfg = from_dict(state["config"])
    names = state.get("extra", {}).get("class_names") or []
    num_classes = state["primary"]["fc.weight"].shape[0] if "fc.weight" in state["primary"] else len(names)
    if not names:
        names = [f"class_{i}" for i in range(num_classes)]
    primary, aux = build_networks(cfg, num_classes)
    ckpt.restore(state, primary=primary, aux=aux, rng=False, weights="ema")  # what validation measured
    return cfg, primary.eval(), (aux.eval() if aux is not None else None), names


def evaluate_checkpoint(path: str, list_path: str, root: str | None = None, batch_size: int = 2) -> dict[str, float]:
    """Top-1 / top-5 / mean class accuracy of a checkpoint on a list file (same protocol as training)."""
    cfg, primary, aux, names = load_models(path)
    if root is not None:
        cfg.data.root = root
    items = read_list(list_path)
    batches = iter_val_batches(cfg, items, len(names), aux is not None, batch_size=batch_size)
    counts = evaluate(primary, aux, batches, len(names), torch.device("cpu"))
    return summarize_eval(counts, aux is not None)


def load_primary(path: str, tracking_uri: str = "") -> tuple[Config, torch.nn.Module, list[str]]:
    """(config, primary network, class names) from a checkpoint path or an MLflow model URI (``runs:/<run_id>/
    primary``, ``models:/<name>/<version>``: the logged model, whose metadata carries the config and names)."""
    from .mlflow_model import is_model_uri, load_logged_model

    if is_model_uri(path):
        return load_logged_model(path, tracking_uri)
    cfg, primary, _, names = load_models(path)
    return cfg, primary, names


@torch.no_grad()
def predict(path: str, videos: list[str], topk: int = 5, tracking_uri: str = "") -> list[dict]:
    """Top-k (class name, probability) of the primary network for each video file (decoded in-process with the
    test-time preprocessing of the run's config); ``path``: a checkpoint or an MLflow model URI."""
    cfg, primary, names = load_primary(path, tracking_uri)
    batch = val_decoder(cfg, len(names), with_aux=False).decode_val([(v, 0) for v in videos])
    out = []
    for i, video in enumerate(videos):
        if not batch["valid"][i]:
            out.append({"video": video, "error": ERR_CODES.get(int(batch["err"][i]), "undecodable")})
            continue
        views = torch.from_numpy(batch["v_p"][i])  # (V, C, T, H, W)
        prob = torch.softmax(primary(normalize(views, torch.device("cpu"))).float(), dim=1).mean(0)
        p, idx = prob.topk(min(topk, len(names)))
        out.append({"video": video, "top": [(names[j], float(q)) for q, j in zip(p.tolist(), idx.tolist())]})
    return out
