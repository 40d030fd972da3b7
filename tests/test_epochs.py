"""What an epoch samples depends on (train.seed, epoch, position) only (issue 20).

Why these tests: a seed must fix every draw (so paired comparisons are paired on data too), every epoch must
group the videos afresh (no two epochs share batches and their BatchNorm statistics), and a clip must not
depend on the decode actor, the batch or the order it was decoded in: with an actor pool those are decided by
scheduling.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import pytest
import ray

from cmpl_ray.config import load_config
from cmpl_ray.data.epochs import KEY_STRIDE, EpochTable, epoch_rows, row_keys, start_clock
from cmpl_ray.data.lists import read_list
from cmpl_ray.data.pipeline import ClipDecoder, _pairs, build_train_dataset

CLIPS = ("l_p", "u_weak_p", "u_strong_p")  # FixMatch: no auxiliary clips


def test_epoch_rows_are_drawn_afresh_every_epoch_and_keep_their_coverage():
    n_lab, n_unl, per_epoch, ratio = 5, 24, 12, 2
    epochs = [epoch_rows(n_lab, n_unl, per_epoch, ratio, [7, e]) for e in range(4)]
    for rows in epochs:
        assert rows.shape == (per_epoch, 1 + ratio)
        assert sorted(rows[:, 1:].ravel().tolist()) == list(range(n_unl))  # every unlabeled video once
        counts = np.bincount(rows[:, 0], minlength=n_lab)
        assert counts.max() - counts.min() <= 1 and counts.sum() == per_epoch  # the labeled list cycles evenly
    for a in range(4):
        for b in range(a + 1, 4):  # new groupings, not just the old batches in another order
            groups_a = {frozenset(r[1:]) for r in epochs[a]}
            groups_b = {frozenset(r[1:]) for r in epochs[b]}
            assert groups_a != groups_b and not np.array_equal(epochs[a][:, 0], epochs[b][:, 0])
    assert np.array_equal(epochs[2], epoch_rows(n_lab, n_unl, per_epoch, ratio, [7, 2]))  # fixed for a seed
    assert not np.array_equal(epochs[2], epoch_rows(n_lab, n_unl, per_epoch, ratio, [8, 2]))
    table = EpochTable(n_lab, n_unl, per_epoch, ratio, 7)
    assert np.array_equal(table(3), epochs[3]) and np.array_equal(table(1), epochs[1])


def _cfg(root, **over):
    sets = [
        f"data.root={root}",
        "data.crop_size=32",
        "data.train_short_side=[32, 40]",
        "data.test_short_side=32",
        "data.raw_clip_len=16",
        "data.primary_stride=4",
        "data.aux_stride=2",
        "train.batch_labeled=2",
        "algo.unlabeled_ratio=2",
        "data.decode_batch=2",
        "data.cpus_per_decoder=0.5",
        "algo.name=fixmatch",
        "data.decode_actors=2",
    ] + [f"{k}={v}" for k, v in over.items()]
    return load_config("demo", overrides=sets)


def _lists(root):
    items = read_list(os.path.join(root, "train.txt"))
    return items[:4], items[4:16]


def _decoder(cfg, labeled, unlabeled, per_epoch=0):
    return ClipDecoder(
        "train",
        dataclasses.asdict(cfg.data),
        4,
        cfg.uses_aux,
        cfg.train.seed,
        _pairs(labeled, cfg.data.root),
        _pairs(unlabeled, cfg.data.root),
        cfg.algo.unlabeled_ratio,
        per_epoch=per_epoch,
    )


def test_a_keyed_clip_does_not_depend_on_its_batch_or_decoder(synth_root):
    cfg = _cfg(synth_root)
    labeled, unlabeled = _lists(synth_root)
    rows = epoch_rows(4, 12, 6, 2, [0, 1])
    keys = row_keys(1, np.arange(6))
    together = _decoder(cfg, labeled, unlabeled)({"data": rows[[4, 1, 3]], "key": keys[[4, 1, 3]]})
    other = _decoder(cfg, labeled, unlabeled)
    alone = [other({"data": rows[[i]], "key": keys[[i]]}) for i in (3, 1, 4)]  # another order, one per batch
    for j, a in zip((2, 1, 0), alone):
        for k in CLIPS + ("y_l", "key"):
            np.testing.assert_array_equal(together[k][j], a[k][0], err_msg=k)
    # a position row draws the epoch's rows itself: the same clips as the rows it names
    by_pos = _decoder(cfg, labeled, unlabeled, per_epoch=6)({"pos": np.array([1, 3])})
    direct = _decoder(cfg, labeled, unlabeled)(
        {"data": epoch_rows(4, 12, 6, 2, [0, 0])[[1, 3]], "key": row_keys(0, np.array([1, 3]))}
    )
    for k in CLIPS + ("u_index", "key"):
        np.testing.assert_array_equal(by_pos[k], direct[k], err_msg=k)
    # a run-long stream: position 6 + p is row p of epoch 1, also in a batch that straddles the epochs
    straddle = _decoder(cfg, labeled, unlabeled, per_epoch=6)({"pos": np.array([5, 6, 9])})
    assert straddle["key"].tolist() == [5, KEY_STRIDE, KEY_STRIDE + 3]
    next_epoch = _decoder(cfg, labeled, unlabeled)(
        {"data": epoch_rows(4, 12, 6, 2, [0, 1])[[0, 3]], "key": row_keys(1, np.array([0, 3]))}
    )
    for k in CLIPS + ("u_index", "key"):
        np.testing.assert_array_equal(straddle[k][1:], next_epoch[k], err_msg=k)
    # another key, another clip (the strong views and crops are random)
    moved = _decoder(cfg, labeled, unlabeled)({"data": rows[[4]], "key": keys[[4]] + 1})
    assert not np.array_equal(moved["u_strong_p"][0], together["u_strong_p"][0])


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def test_ray_stream_is_ordered_and_reproducible_with_two_decode_actors(synth_root, local_ray):
    """One stream for the whole run (no pipeline restart per epoch): epoch e's rows follow epoch e-1's, in
    order, each epoch redrawn; a stream started at epoch 1 (a resumed run) yields exactly what the
    uninterrupted stream gave for epoch 1."""
    cfg = _cfg(synth_root)
    labeled, unlabeled = _lists(synth_root)
    steps = 3
    clock = start_clock()
    ds = build_train_dataset(cfg, labeled, unlabeled, 4, world=1, steps=steps, clock=clock, epochs=2)
    per_epoch = steps * 2

    def stream(start, n_batches):
        ray.get(clock.set.remote(start))
        out = []
        for b in ds.iter_batches(batch_size=2, batch_format="numpy", prefetch_batches=2):
            out.append(b)
            if len(out) == n_batches:  # a resumed run stops reading where the run ends
                break
        return out

    full = stream(0, 2 * steps)
    keys = np.concatenate([b["key"] for b in full])
    assert keys.tolist() == [e * KEY_STRIDE + p for e in (0, 1) for p in range(per_epoch)]  # preserve_order
    want = _decoder(cfg, labeled, unlabeled, per_epoch=per_epoch)({"pos": np.arange(per_epoch)})
    for k in CLIPS:  # a decode actor's clips are the in-process decoder's
        np.testing.assert_array_equal(np.concatenate([b[k] for b in full[:steps]]), want[k], err_msg=k)
    u0 = np.concatenate([b["u_index"] for b in full[:steps]]).ravel()
    u1 = np.concatenate([b["u_index"] for b in full[steps:]]).ravel()
    assert sorted(u0) == sorted(u1) == list(range(12)) and not np.array_equal(u0, u1)  # redrawn per epoch
    resumed = stream(1, steps)
    for a, b in zip(full[steps:], resumed):
        for k in CLIPS + ("key", "u_index"):
            np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    ray.kill(clock)


def test_two_ranks_get_the_same_rows_every_time_an_epoch_runs(synth_root, local_ray):
    """With several workers, ``streaming_split`` deals blocks to whichever rank has fewest rows; with
    ``preserve_order`` that follows the block order, so each rank's batches are a function of (seed, epoch)."""
    import threading

    cfg = _cfg(synth_root)
    labeled, unlabeled = _lists(synth_root)
    clock = start_clock()
    ds = build_train_dataset(cfg, labeled, unlabeled, 4, world=2, steps=2, clock=clock)
    shards = ds.streaming_split(2, equal=True)

    def run(epoch):
        ray.get(clock.set.remote(epoch))
        got = {}

        def consume(rank):
            got[rank] = [b["key"].tolist() for b in shards[rank].iter_batches(batch_size=2, batch_format="numpy")]

        threads = [threading.Thread(target=consume, args=(r,)) for r in range(2)]
        [t.start() for t in threads]
        [t.join(timeout=300) for t in threads]
        return got

    first, second = run(1), run(1)
    assert first == second and len(first[0]) == len(first[1]) == 2
    assert sorted(k for r in first.values() for b in r for k in b) == list(KEY_STRIDE + np.arange(8))
    ray.kill(clock)


def test_row_ledgers_of_two_ranks_combine_hand_computed():
    from cmpl_ray.data.epochs import RowLedger, split_check

    # epochs 1 and 2 of a run resumed at epoch 1, 4 rows per epoch: 8 rows in all
    a, b = RowLedger(1, 3, 4), RowLedger(1, 3, 4)
    a.add(row_keys(1, np.array([0, 1])))
    b.add(row_keys(1, np.array([2, 3])))
    a.add(row_keys(2, np.array([0, 1])))
    b.add(row_keys(2, np.array([2, 3])))
    assert split_check([a.packed(), b.packed()]) == {"rows": 8, "trained": 8, "twice": 0, "missing": 0, "outside": 0}
    # rank b trains row 1 of epoch 2 too (a second rank), row 3 again (itself) and a row of epoch 0 (no epoch of
    # this session); row 2 of a third epoch-2 ledger is never trained
    b.add(np.concatenate([row_keys(2, np.array([1, 3])), row_keys(0, np.array([0]))]))
    got = split_check([a.packed(), b.packed()])
    assert got == {"rows": 8, "trained": 10, "twice": 2, "missing": 0, "outside": 1}
    c = RowLedger(1, 3, 4)
    c.add(row_keys(1, np.arange(4)))
    c.add(row_keys(2, np.array([0, 1, 3])))
    assert split_check([c.packed()]) == {"rows": 8, "trained": 7, "twice": 0, "missing": 1, "outside": 0}
    assert split_check([]) == {"rows": 0, "trained": 0, "twice": 0, "missing": 0, "outside": 0}
