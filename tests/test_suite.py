"""The benchmark suite (``cmpl_ray.data.suite``), flip-label maps and per-sample sampling.

Why these checks: a family whose classes do not differ, or differ by something other than the declared cue,
would make the suite's numbers meaningless; a flip that mirrors a clip without remapping a direction label
teaches the network the wrong class; and clips that depend on which process decodes them make runs
irreproducible.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from cmpl_ray.config import ConfigError, load_config
from cmpl_ray.data import augment
from cmpl_ray.data.pipeline import ClipDecoder, resolve_flip_map
from cmpl_ray.data.suite import FAMILIES, HELD_OUT, TUNED, flip_label_map, render_family_clip, write_family


@pytest.mark.parametrize("name", list(FAMILIES))
def test_family_renders_declared_shape_and_is_deterministic(name):
    fam = FAMILIES[name]
    a = render_family_clip(fam, fam.classes[0], np.random.default_rng(7))
    b = render_family_clip(fam, fam.classes[0], np.random.default_rng(7))
    assert a.shape == (fam.frames, fam.height, fam.width, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b)
    assert a.std() > 5  # not a blank frame


@pytest.mark.parametrize("name", list(FAMILIES))
def test_classes_of_a_family_differ_under_the_same_nuisances(name):
    """Same generator seed (same background, camera and distractors), different class -> different video."""
    fam = FAMILIES[name]
    clips = [render_family_clip(fam, c, np.random.default_rng(11)).astype(np.float32) for c in fam.classes]
    for i in range(len(clips)):
        for j in range(i + 1, len(clips)):
            assert np.abs(clips[i] - clips[j]).mean() > 0.3, (fam.classes[i], fam.classes[j])


def test_suite_has_a_held_out_family_with_its_own_photos():
    from cmpl_ray.data.suite import PHOTOS_HELDOUT, PHOTOS_TUNE

    assert HELD_OUT and TUNED and not set(HELD_OUT) & set(TUNED)
    assert not set(PHOTOS_HELDOUT) & set(PHOTOS_TUNE)
    held = {c for f in HELD_OUT for c in FAMILIES[f].classes}
    tuned = {c for f in TUNED for c in FAMILIES[f].classes}
    assert not held & tuned  # its classes are not renamed tuned classes
    sizes = {(FAMILIES[f].width, FAMILIES[f].height) for f in FAMILIES}
    assert min(min(s) for s in sizes) <= 48 and max(max(s) for s in sizes) >= 128  # 48-128 px


def test_write_family_lists_spec_and_decodable_videos(tmp_path):
    from cmpl_ray.data.lists import read_classes, read_list

    info = write_family(str(tmp_path), "direction", per_class=2, val_per_class=1, seed=3)
    fam = FAMILIES["direction"]
    assert info["train"] == 2 * len(fam.classes) and info["val"] == len(fam.classes)
    assert read_classes(str(tmp_path / "classes.txt")) == list(fam.classes)
    spec = json.load(open(tmp_path / "suite.json"))
    assert spec["flip_label_map"] == flip_label_map(fam) == "right:left,orbit_cw:orbit_ccw"
    items = read_list(str(tmp_path / "train.txt"))
    import decord

    vr = decord.VideoReader(os.path.join(tmp_path, items[0].path))
    assert len(vr) == fam.frames and vr[0].shape == (fam.height, fam.width, 3)
    # a larger set keeps the smaller one's videos (each video has its own seed)
    write_family(str(tmp_path / "big"), "direction", per_class=3, val_per_class=1, seed=3)
    assert open(tmp_path / items[0].path, "rb").read() == open(tmp_path / "big" / items[0].path, "rb").read()


def test_resolve_flip_map_by_name_and_id_and_refuses_unknown():
    names = ["right", "left", "up"]
    assert resolve_flip_map("", names) is None
    assert resolve_flip_map("right:left", names) == [1, 0, 2]
    assert resolve_flip_map("0:1", names) == [1, 0, 2]
    with pytest.raises(ValueError, match="data.flip_label_map.*down"):
        resolve_flip_map("right:down", names)


def test_flip_config_is_validated_at_load():
    with pytest.raises(ConfigError, match="data.flip_label_map"):
        load_config("demo", overrides=["data.flip_label_map=right-left"])
    with pytest.raises(ConfigError, match="data.flip_label_map"):
        load_config("demo", overrides=["data.flip=false", "data.flip_label_map=right:left"])
    cfg = load_config("demo", overrides=["data.flip=false"])
    assert cfg.data.flip is False


def test_forced_flip_is_an_exact_mirror():
    clip = np.random.default_rng(0).integers(0, 255, (4, 40, 52, 3), dtype=np.uint8)
    a = augment.standard(clip, 32, (36, 40), np.random.default_rng(5), flip=False)
    b = augment.standard(clip, 32, (36, 40), np.random.default_rng(5), flip=True)
    assert np.array_equal(b.numpy(), a.flip(-1).numpy())


def _decoder(root: str, **data) -> ClipDecoder:
    from cmpl_ray.data.lists import read_list
    from cmpl_ray.data.pipeline import _pairs, resolve_data

    cfg = load_config("demo", overrides=[f"data.root={root}"] + [f"data.{k}={v}" for k, v in data.items()])
    items = read_list(os.path.join(root, "train.txt"))
    resolve_data(cfg, items)  # the preset derives the crop from the videos, as the trainer does
    names = [ln.strip() for ln in open(os.path.join(root, "classes.txt"))]
    import dataclasses

    return ClipDecoder(
        "train",
        dataclasses.asdict(cfg.data),
        len(names),
        False,
        seed=4,
        labeled=_pairs(items, root),
        flip_map=resolve_flip_map(cfg.data.flip_label_map, names),
    )


def test_flipped_labeled_clips_get_the_mapped_label(tmp_path):
    write_family(str(tmp_path), "direction", per_class=1, val_per_class=0, seed=1)
    rows = np.zeros((40, 1), np.int64)  # video 0 ("right") 40 times, each its own sample key
    keys = np.arange(40, dtype=np.int64)
    out = _decoder(str(tmp_path), flip_label_map="right:left")({"data": rows, "key": keys})
    assert set(out["y_l"].tolist()) == {0, 1}  # right, or left when mirrored
    assert 8 <= int((out["y_l"] == 1).sum()) <= 32
    off = _decoder(str(tmp_path), flip="false")({"data": rows, "key": keys})
    assert set(off["y_l"].tolist()) == {0}


def test_clips_are_a_function_of_the_sample_key_not_the_decoder(tmp_path):
    write_family(str(tmp_path), "speed", per_class=1, val_per_class=0, seed=2)
    rows = np.arange(4, dtype=np.int64)[:, None]
    keys = np.array([10, 11, 12, 13], np.int64)
    a = _decoder(str(tmp_path))({"data": rows, "key": keys})
    b = _decoder(str(tmp_path))({"data": rows[::-1].copy(), "key": keys[::-1].copy()})  # other order, other actor
    assert np.array_equal(a["l_p"], b["l_p"][::-1])
    c = _decoder(str(tmp_path))({"data": rows, "key": keys + 100})  # another epoch: other clips
    assert not np.array_equal(a["l_p"], c["l_p"])


def test_synth_cli_writes_a_family(tmp_path, capsys):
    from cmpl_ray.cli import main

    assert main(["synth", str(tmp_path / "f"), "--family", "heldout", "--per-class", "1", "--val-per-class", "1"]) == 0
    out = capsys.readouterr().out
    assert "held out" in out and "flip_label_map=spin_cw:spin_ccw" in out
    assert len(open(tmp_path / "f" / "train.txt").read().splitlines()) == len(FAMILIES["heldout"].classes)
    assert main(["synth", str(tmp_path / "g"), "--family", "nope"]) == 2
