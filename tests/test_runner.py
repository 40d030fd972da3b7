"""The epoch runner shared by the Ray Train worker and the Ray-free runner, on a fake shard (no Ray, no video):
evaluation cadence, checkpoint score, bad-sample accounting over ranks, counters through a checkpoint."""

import pytest
import torch

from cmpl_ray.config import load_config
from cmpl_ray.data.clip_decoder import ERR_CODES
from cmpl_ray.train.runner import (
    CHECKPOINT_SCORE,
    UNEVALUATED_SCORE,
    Collectives,
    RunCounters,
    build_nets,
    is_eval_epoch,
    run_epoch,
)

K, S, T = 3, 16, 4  # classes, crop, frames


def _cfg(**over):
    sets = {"algo.name": "cmpl", "model.primary_arch": "tiny", "model.aux_arch": "tiny", "model.num_classes": K,
            "data.crop_size": S, "data.raw_clip_len": 8, "data.primary_stride": 2, "data.aux_stride": 2,
            "train.batch_labeled": 2, "algo.unlabeled_ratio": 1, "train.epochs": 3, "train.eval_every": 2,
            "train.ema_decay": 0.0, "optim.warmup_epochs": 0, "train.log_every": 1}  # fmt: skip
    sets.update(over)
    return load_config("demo", overrides=[f"{k}={v}" for k, v in sets.items()])


def _train_batch(bad: tuple[int, int] | None = None) -> dict[str, torch.Tensor]:
    """One step's rows as the decoder delivers them; ``bad=(index, code)`` marks the first labeled row bad."""
    clip = lambda b: torch.randint(0, 255, (b, 3, T, S, S), dtype=torch.uint8)  # noqa: E731
    batch = {"l_p": clip(2), "l_a": clip(2), "y_l": torch.tensor([0, 1]), "l_valid": torch.tensor([True, True]),
             "l_err": torch.tensor([0, 0]), "l_index": torch.tensor([0, 1]), "y_u": torch.tensor([2, 0]),
             "u_valid": torch.tensor([True, True])}  # fmt: skip
    for v in ("weak", "strong"):
        batch[f"u_{v}_p"], batch[f"u_{v}_a"] = clip(2), clip(2)
    if bad is not None:
        batch["l_index"][0], batch["l_err"][0], batch["l_valid"][0] = bad[0], bad[1], False
    return batch


def _val_batches():
    v = torch.randint(0, 255, (3, 1, 3, T, S, S), dtype=torch.uint8)
    return [{"v_p": v, "v_a": v, "y": torch.tensor([0, 1, 2]), "valid": torch.tensor([True, True, True])}]


def _epochs(cfg, counters, coll=None, batches=None, epochs=None):
    torch.manual_seed(0)
    nets = build_nets(cfg, K, torch.device("cpu"))
    outs, step = [], 0
    for epoch in epochs if epochs is not None else range(cfg.train.epochs):
        out = run_epoch(
            nets, batches(epoch) if batches else [_train_batch(), _train_batch()], cfg, counters, epoch=epoch,
            steps=2, global_step=step, total_steps=2 * cfg.train.epochs, device=torch.device("cpu"),
            val_batches=_val_batches, num_classes=K, coll=coll,
        )  # fmt: skip
        step = out.global_step
        outs.append(out)
    return outs


def test_evaluates_every_eval_every_epochs_and_the_last_and_scores_only_those():
    cfg = _cfg()
    assert [is_eval_epoch(cfg, e) for e in range(3)] == [False, True, True]
    counters = RunCounters()
    outs = _epochs(cfg, counters)
    assert [o.evaluated for o in outs] == [False, True, True]
    assert outs[0].metrics[CHECKPOINT_SCORE] == UNEVALUATED_SCORE and "val_top1" not in outs[0].metrics
    for o in outs[1:]:
        assert o.metrics[CHECKPOINT_SCORE] == o.metrics["val_top1"] and o.counts["total"].sum() == 3
    assert counters.best == max(o.metrics["val_top1"] for o in outs[1:])
    assert [h["epoch"] for h in counters.history] == [1.0, 2.0, 3.0]
    assert [o.global_step for o in outs] == [2, 4, 6]
    assert set(outs[-1].pseudo) == {"f", "a"}  # CMPL: pseudo-labels per class of both networks


def test_bad_samples_are_counted_over_ranks_and_named_once():
    gather = lambda obj: [obj, obj]  # noqa: E731 - two ranks that saw the same thing
    coll = Collectives(world=2, gather=gather)
    counters = RunCounters()
    cfg = _cfg(**{"train.epochs": 2, "train.eval_every": 2})
    outs = _epochs(cfg, counters, coll, batches=lambda e: [_train_batch(bad=(5, 3)), _train_batch()])
    # each epoch: one bad row per rank, 2 ranks -> 2; named once over the whole run (same file)
    assert counters.skipped_total == 4 and outs[-1].metrics["skipped_samples"] == 4
    assert outs[0].new_bad == [("l", 5, 3)] and outs[1].new_bad == []
    assert counters.bad_files == {"l:5": ERR_CODES[3]}
    # good rows (streams that carry an error code: labeled here): 1 in the bad step + 2, per rank and epoch
    assert counters.good_total == 2 * 2 * 3


def test_counters_go_through_a_checkpoint_whole_and_a_resumed_run_continues_them():
    cfg = _cfg()
    counters = RunCounters()
    _epochs(cfg, counters, epochs=[0, 1], batches=lambda e: [_train_batch(bad=(4, 1)), _train_batch()])
    restored = RunCounters.from_extra(counters.to_extra())
    assert restored == counters
    _epochs(cfg, restored, epochs=[2])
    assert [h["epoch"] for h in restored.history] == [1.0, 2.0, 3.0] and restored.skipped_total == 2


def test_an_epoch_where_every_row_failed_stops_the_run():
    cfg = _cfg(**{"algo.name": "supervised"})
    all_bad = {"l_p": torch.zeros(2, 3, T, S, S, dtype=torch.uint8), "y_l": torch.tensor([0, 0]),
               "l_valid": torch.tensor([False, False]), "l_err": torch.tensor([1, 1]),
               "l_index": torch.tensor([0, 1])}  # fmt: skip
    with pytest.raises(RuntimeError, match="every training video of this epoch failed to decode"):
        _epochs(cfg, RunCounters(), batches=lambda e: [all_bad, all_bad], epochs=[0])
