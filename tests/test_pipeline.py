"""Ray Data pipeline: epoch layout, the decoder on real mp4s (good and bad), a 2-way streamed epoch."""

import dataclasses
import os
import threading

import numpy as np
import pytest
import ray
import torch

from cmpl_ray.config import load_config
from cmpl_ray.data.lists import VideoItem, read_list
from cmpl_ray.data.pipeline import ClipDecoder, build_train_dataset, epoch_rows, iter_val_batches, steps_per_epoch


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def small_cfg(root, **over):
    sets = [
        f"data.root={root}",
        "data.crop_size=32",
        "data.train_short_side=[32, 40]",
        "data.test_short_side=32",
        "data.raw_clip_len=16",
        "data.primary_stride=4",
        "data.aux_stride=2",
        "data.eval_clips=2",
        "data.eval_crops=1",
        "train.batch_labeled=2",
        "algo.unlabeled_ratio=2",
        "data.decode_batch=2",
        "data.cpus_per_decoder=0.25",
        "train.steps_per_epoch=0",
        "train.passes=0",
        "train.min_steps=0",
    ] + [f"{k}={v}" for k, v in over.items()]
    return load_config("demo", overrides=sets)


def test_epoch_rows_cover_unlabeled_once_and_cycle_labeled():
    rows = epoch_rows(n_labeled=3, n_unlabeled=12, per_epoch=6, ratio=2, seed=0)
    assert rows.shape == (6, 3)
    assert sorted(rows[:, 1:].ravel().tolist()) == list(range(12))  # every unlabeled video exactly once
    assert np.bincount(rows[:, 0], minlength=3).tolist() == [2, 2, 2]  # labeled list cycles evenly
    assert np.array_equal(rows, epoch_rows(3, 12, 6, 2, seed=0))
    assert not np.array_equal(rows, epoch_rows(3, 12, 6, 2, seed=1))


def test_steps_per_epoch_is_the_same_for_every_algorithm():
    base = [
        "train.batch_labeled=2",
        "algo.unlabeled_ratio=3",
        "train.steps_per_epoch=0",
        "train.passes=0",
        "train.min_steps=0",
    ]  # one pass over the unlabeled set
    cfg = load_config("demo", overrides=base)
    assert steps_per_epoch(cfg, 10, 60, world=2) == 5
    sup = load_config("demo", overrides=base + ["algo.name=supervised"])
    assert steps_per_epoch(sup, 10, 60, world=2) == 5
    with pytest.raises(ValueError, match="too few videos"):
        steps_per_epoch(cfg, 1, 3, world=2)
    fixed = load_config("demo", overrides=base + ["train.steps_per_epoch=7"])
    assert steps_per_epoch(fixed, 10, 60, world=2) == 7


def _bad_files(root, write_mp4):
    """missing, zero-byte, garbage, truncated and a 6-frame (short) video, plus a bad label."""
    bad = os.path.join(root, "bad")
    os.makedirs(bad, exist_ok=True)
    open(os.path.join(bad, "empty.mp4"), "wb").close()
    with open(os.path.join(bad, "garbage.mp4"), "wb") as f:
        f.write(os.urandom(4000))
    good = os.path.join(root, read_list(os.path.join(root, "train.txt"))[0].path)
    data = open(good, "rb").read()
    with open(os.path.join(bad, "truncated.mp4"), "wb") as f:
        f.write(data[: len(data) // 3])
    write_mp4(os.path.join(bad, "short.mp4"), np.full((6, 40, 40, 3), 100, np.uint8), 12)
    return [
        ("bad/missing.mp4", 0, 1),
        ("bad/empty.mp4", 0, 2),
        ("bad/garbage.mp4", 0, 3),
        ("bad/truncated.mp4", 0, 3),
        ("bad/short.mp4", 0, 99),
        (read_list(os.path.join(root, "train.txt"))[0].path, 99, 5),
    ]


def test_decoder_skips_and_counts_bad_videos(synth_root, write_mp4):
    cases = _bad_files(synth_root, write_mp4)
    good = read_list(os.path.join(synth_root, "train.txt"))[:2]
    cfg = small_cfg(synth_root)
    labeled = [(os.path.join(synth_root, it.path), it.label) for it in good]
    unlabeled = [(os.path.join(synth_root, p), y) for p, y, _ in cases]
    dec = ClipDecoder("train", dataclasses.asdict(cfg.data), 4, True, 0, labeled, unlabeled, ratio=3)
    out = dec({"data": np.array([[0, 0, 1, 2], [1, 3, 4, 5]])})
    assert out["l_p"].shape == (2, 3, 4, 32, 32) and out["l_a"].shape == (2, 3, 8, 32, 32)
    assert out["u_strong_a"].shape == (2, 3, 3, 8, 32, 32) and out["u_weak_p"].dtype == np.uint8
    assert out["l_valid"].all()
    codes = out["u_err"].ravel().tolist()
    # unlabeled labels are statistics only, so the out-of-range label (case 6) is not a decode failure
    assert codes == [1, 2, 3, 3, 99, 0]
    assert out["u_valid"].ravel().tolist() == [False, False, False, False, True, True]
    assert not out["u_weak_p"].reshape(6, -1)[:4].any()  # skipped clips are zeros, shapes unchanged
    # a labeled video with an out-of-range label is skipped with its own code
    dec2 = ClipDecoder("train", dataclasses.asdict(cfg.data), 4, False, 0, [unlabeled[5]], None, ratio=0)
    assert dec2({"data": np.array([[0]])})["l_err"].tolist() == [5]


def test_val_batches_exact_split_over_ranks(synth_root):
    cfg = small_cfg(synth_root)
    items = read_list(os.path.join(synth_root, "val.txt"))
    seen = []
    for rank in range(2):
        for b in iter_val_batches(cfg, items, 4, True, rank=rank, world=2, batch_size=3):
            assert b["v_p"].shape[1:] == (2, 3, 4, 32, 32) and b["v_a"].shape[1:] == (2, 3, 8, 32, 32)
            assert b["valid"].all()
            seen += b["y"].tolist()
    assert sorted(seen) == sorted(it.label for it in items)  # nothing dropped, nothing duplicated


def test_streamed_epochs_two_workers(synth_root, local_ray):
    cfg = small_cfg(synth_root)
    train = read_list(os.path.join(synth_root, "train.txt"))
    labeled, unlabeled = train[:4], train[4:]
    world = 2
    steps = steps_per_epoch(cfg, len(labeled), len(unlabeled), world)
    ds = build_train_dataset(cfg, labeled, unlabeled, 4, world, steps)
    shards = ds.streaming_split(world, equal=True)
    results = {r: [] for r in range(world)}

    def consume(rank):
        for _epoch in range(2):
            batches = list(shards[rank].iter_torch_batches(batch_size=2, drop_last=True))
            results[rank].append(batches)

    threads = [threading.Thread(target=consume, args=(r,)) for r in range(world)]
    [t.start() for t in threads]
    [t.join(timeout=300) for t in threads]
    for rank in range(world):
        assert len(results[rank]) == 2
        for epoch in results[rank]:
            assert len(epoch) == steps  # every rank, every epoch: the same number of steps
            b = epoch[0]
            assert tuple(b["l_p"].shape) == (2, 3, 4, 32, 32) and tuple(b["u_weak_a"].shape) == (2, 2, 3, 8, 32, 32)
            assert b["l_valid"].all() and b["u_valid"].all()
    per_epoch_u = [
        sorted(int(i) for r in range(world) for b in results[r][e] for i in b["u_index"].flatten()) for e in range(2)
    ]
    expected = steps * 2 * 2 * world  # steps x B_u x world
    assert len(per_epoch_u[0]) == expected and len(set(per_epoch_u[0])) == expected  # no duplicates in an epoch


def test_all_unreadable_list_fails_fast_with_a_clear_error(tmp_path):
    from cmpl_ray.train.launch import preflight

    for i in range(3):
        (tmp_path / f"v{i}.mp4").write_bytes(b"\x00" * 100 * i)
    cfg = load_config("demo", overrides=[f"data.root={tmp_path}"])
    items = [VideoItem(f"v{i}.mp4", 0) for i in range(3)] + [VideoItem("gone.mp4", 0)]
    with pytest.raises(RuntimeError, match="data.unlabeled_list: none of 4 sampled videos could be opened"):
        preflight(cfg, items, "unlabeled_list")
    with pytest.raises(ValueError, match="data.labeled_list: the list is empty"):
        preflight(cfg, [], "labeled_list")


def test_val_batches_without_auxiliary(synth_root):
    cfg = small_cfg(synth_root, **{"algo.name": "fixmatch"})
    items = read_list(os.path.join(synth_root, "val.txt"))[:3]
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        batches = list(iter_val_batches(cfg, items, 4, with_aux=False, batch_size=2))
        assert torch.get_num_threads() == 2  # a worker decoding its own evaluation keeps its intra-op threads
    finally:
        torch.set_num_threads(before)
    assert [tuple(b["v_p"].shape) for b in batches] == [(2, 2, 3, 4, 32, 32), (1, 2, 3, 4, 32, 32)]
    assert all("v_a" not in b for b in batches)


def test_val_dataset_streamed_to_two_ranks_is_exact(synth_root, local_ray):
    from cmpl_ray.data.pipeline import build_val_dataset

    cfg = small_cfg(synth_root)
    items = read_list(os.path.join(synth_root, "val.txt"))[:7]  # odd: one padding row evens the split
    shards = build_val_dataset(cfg, items, 4, world=2, with_aux=True).streaming_split(2, equal=True)
    got = {}

    def consume(rank):
        got[rank] = list(shards[rank].iter_torch_batches(batch_size=2))

    threads = [threading.Thread(target=consume, args=(r,)) for r in range(2)]
    [t.start() for t in threads]
    [t.join(timeout=300) for t in threads]
    rows = [
        (int(i), bool(v), int(e)) for r in range(2) for b in got[r] for i, v, e in zip(b["index"], b["valid"], b["err"])
    ]
    assert sorted(i for i, v, _ in rows if v) == list(range(7))  # every video once, none dropped
    assert [(v, e) for i, v, e in rows if i == -1] == [(False, 98)]  # exactly one padding row
    b = got[0][0]
    assert tuple(b["v_p"].shape[1:]) == (2, 3, 4, 32, 32) and tuple(b["v_a"].shape[1:]) == (2, 3, 8, 32, 32)
    # data.val_decode=worker (each rank decodes items[rank::world] itself) gives the same clips, so the same
    # numbers: compare every video's views, matched by label order within the same video positions
    streamed = {
        int(i): (vp, va)
        for r in range(2)
        for b in got[r]
        for i, vp, va in zip(b["index"], b["v_p"], b["v_a"])
        if int(i) >= 0
    }
    in_worker = [
        (vp, va)
        for rank in range(2)
        for b in iter_val_batches(cfg, items, 4, True, rank=rank, world=2, batch_size=2, threads=2)
        for vp, va in zip(b["v_p"], b["v_a"])
    ]
    order = [i for rank in range(2) for i in range(7)[rank::2]]
    for i, (vp, va) in zip(order, in_worker, strict=True):
        assert torch.equal(vp, streamed[i][0]) and torch.equal(va, streamed[i][1]), f"video {i} differs"


def test_val_decode_auto_picks_the_worker_for_short_lists():
    from cmpl_ray.data.pipeline import VAL_IN_WORKER_MAX, val_decode_mode

    cfg = load_config("demo")
    assert cfg.data.val_decode == "auto"
    assert val_decode_mode(cfg, 24, 1) == "worker"  # the demo, the suite: nothing to start per evaluation
    assert val_decode_mode(cfg, 2 * VAL_IN_WORKER_MAX, 2) == "worker"  # per worker, not in all
    assert val_decode_mode(cfg, 2 * VAL_IN_WORKER_MAX + 1, 2) == "ray_data"  # UCF-101's 3783 on 8 GPUs: the pool
    for mode in ("worker", "ray_data"):
        assert (
            val_decode_mode(
                load_config("demo", overrides=[f"data.val_decode={mode}"]), 10**6 if mode == "worker" else 1, 1
            )
            == mode
        )
