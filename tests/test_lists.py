"""List-file format, dataset importers, labeled/unlabeled splits and the data CLI.

Why these tests: every later stage trusts the lists blindly, so malformed input
must fail loudly with ``file:line:``, and splits must be reproducible per seed
(the paper averages three seeds) with no labeled/unlabeled overlap.
"""

from __future__ import annotations

import argparse
import os
from collections import Counter

import pytest

from cmpl_ray.data import commands
from cmpl_ray.data.lists import (
    ListFormatError,
    VideoItem,
    prepare_kinetics400,
    prepare_ucf101,
    read_classes,
    read_list,
    resolve_path,
    split_labeled,
    write_classes,
    write_list,
)


def _write(path, text):
    os.makedirs(os.path.dirname(str(path)), exist_ok=True)
    with open(path, "w") as fh:
        fh.write(text)
    return str(path)


# ----------------------------------------------------------------------------- format
def test_parse_comments_blanks_spaces_and_tabs(tmp_path):
    p = _write(
        tmp_path / "a.txt",
        "# header\n\na/b.mp4 0\n  playing guitar/x y.mp4   3  \nc.avi\t2\r\n   # indented comment\nd#e.mp4 1\n",
    )
    assert read_list(p) == [
        VideoItem("a/b.mp4", 0),
        VideoItem("playing guitar/x y.mp4", 3),
        VideoItem("c.avi", 2),
        VideoItem("d#e.mp4", 1),
    ]


@pytest.mark.parametrize(
    "line,needle",
    [
        ("onlypath.mp4", "missing label"),
        ("a.mp4 x", "not an integer"),
        ("a.mp4 1.5", "not an integer"),
        ("a.mp4 -1", "negative label"),
    ],
)
def test_parse_errors_name_file_and_line(tmp_path, line, needle):
    p = _write(tmp_path / "bad.txt", f"# c\nok.mp4 0\n{line}\n")
    with pytest.raises(ListFormatError) as exc:
        read_list(p)
    msg = str(exc.value)
    assert msg.startswith(f"{p}:3:") and needle in msg


def test_label_range_check(tmp_path):
    p = _write(tmp_path / "l.txt", "a.mp4 0\nb.mp4 4\n")
    assert len(read_list(p, num_classes=5)) == 2
    with pytest.raises(ListFormatError, match=r":2: label 4 out of range"):
        read_list(p, num_classes=4)


def test_round_trip_local_and_uri(tmp_path):
    items = [VideoItem("x/with space.mp4", 2), VideoItem("y.mp4", 0), VideoItem("a b/c d.avi", 10)]
    write_list(str(tmp_path / "sub" / "l.txt"), items)
    assert read_list(str(tmp_path / "sub" / "l.txt")) == items
    uri = (tmp_path / "uri" / "l.txt").as_uri()  # file:// goes through pyarrow.fs
    write_list(uri, items)
    assert read_list(uri) == items
    write_classes(uri.replace("l.txt", "classes.txt"), ["a", "b c"])
    assert read_classes(str(tmp_path / "uri" / "classes.txt")) == ["a", "b c"]


def test_write_rejects_unreadable_entries(tmp_path):
    for bad in (
        [VideoItem(" lead.mp4", 0)],
        [VideoItem("a.mp4", -1)],
        [VideoItem("#a.mp4", 0)],
        [VideoItem("", 0)],
        [VideoItem("a\nb", 0)],
    ):
        with pytest.raises(ValueError):
            write_list(str(tmp_path / "x.txt"), bad)


def test_classes_file(tmp_path):
    write_classes(str(tmp_path / "c.txt"), ["run", "jump rope"])
    assert read_classes(str(tmp_path / "c.txt")) == ["run", "jump rope"]
    _write(tmp_path / "d.txt", "a\n\nb\n")
    with pytest.raises(ListFormatError, match=r"d.txt:2: blank"):
        read_classes(str(tmp_path / "d.txt"))
    _write(tmp_path / "e.txt", "a\nb\na\n\n")
    with pytest.raises(ListFormatError, match=r"e.txt:3: duplicate"):
        read_classes(str(tmp_path / "e.txt"))


def test_resolve_path():
    assert resolve_path("/data/k400", "train/a b/x.mp4") == "/data/k400/train/a b/x.mp4"
    assert resolve_path("s3://bucket/k400/", "train/x.mp4") == "s3://bucket/k400/train/x.mp4"
    assert resolve_path("s3://bucket/k400", "/abs/x.mp4") == "/abs/x.mp4"
    assert resolve_path("/data", "gs://b/x.mp4") == "gs://b/x.mp4"


# ----------------------------------------------------------------------------- importers
def _fake_ucf(root, with_subdir=True):
    vids = os.path.join(root, "UCF-101") if with_subdir else root
    ann = os.path.join(root, "ucfTrainTestlist")
    _write(os.path.join(ann, "classInd.txt"), "1 ApplyEyeMakeup\r\n2 HandstandPushups\r\n3 YoYo\r\n")
    train = [
        "ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi 1",
        "HandstandPushups/v_HandStandPushups_g08_c01.avi 2",
        "YoYo/v_YoYo_g08_c01.avi 3",
        "YoYo/v_YoYo_g09_c01.avi 3",
    ]
    test = [
        "ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi",
        "HandStandPushups/v_HandStandPushups_g01_c01.avi",
        "YoYo/v_YoYo_g01_c01.avi",
    ]
    _write(os.path.join(ann, "trainlist01.txt"), "\r\n".join(train) + "\r\n")
    _write(os.path.join(ann, "testlist01.txt"), "\r\n".join(test) + "\r\n")
    missing = {"YoYo/v_YoYo_g09_c01.avi", "YoYo/v_YoYo_g01_c01.avi"}
    for rel in [ln.split()[0] for ln in train + test]:
        if rel not in missing:
            folder = "HandstandPushups" if rel.lower().startswith("handstand") else rel.split("/")[0]
            _write(os.path.join(vids, folder, rel.split("/")[1]), "x")
    return missing


@pytest.mark.parametrize("with_subdir", [True, False])
def test_prepare_ucf101(tmp_path, with_subdir):
    root = str(tmp_path / "ucf")
    missing = _fake_ucf(root, with_subdir)
    s = prepare_ucf101(root, split=1, out_dir=str(tmp_path / "out"))
    prefix = "UCF-101/" if with_subdir else ""
    assert s["num_classes"] == 3 and s["train"] == 3 and s["val"] == 2 and s["listed"] == 7
    assert sorted(s["missing"]) == sorted(prefix + m for m in missing)
    assert read_classes(str(tmp_path / "out" / "classes.txt")) == ["ApplyEyeMakeup", "HandstandPushups", "YoYo"]
    train = read_list(str(tmp_path / "out" / "train.txt"))
    assert [it.label for it in train] == [0, 1, 2]
    assert all(it.path.startswith(prefix) for it in train)
    val = read_list(str(tmp_path / "out" / "val.txt"))
    assert [it.label for it in val] == [0, 1]  # label from the (case-insensitive) folder


def test_prepare_ucf101_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        prepare_ucf101(str(tmp_path))
    root = str(tmp_path / "u")
    _fake_ucf(root)
    _write(os.path.join(root, "ucfTrainTestlist", "trainlist01.txt"), "YoYo/v.avi 1\n")
    with pytest.raises(ListFormatError, match=r"trainlist01.txt:1: id 1 disagrees"):
        prepare_ucf101(root)


def _fake_k400(root, val_dir="val", val_csv="validate.csv"):
    header = "label,youtube_id,time_start,time_end,split,is_cc\n"
    _write(
        os.path.join(root, "annotations", "train.csv"),
        header + "riding a bike,abc,10,20,train,0\n"
        "abseiling,-x_Y,0,10,train,0\n"
        "abseiling,zzz,5,15,train,0\n"
        "riding a bike,gone,1,11,train,0\n",
    )
    _write(
        os.path.join(root, "annotations", val_csv), header + "abseiling,vvv,30,40,val,0\nriding a bike,www,2,12,val,0\n"
    )
    for rel in [
        "train/riding a bike/abc_000010_000020.mp4",
        "train/abseiling/-x_Y_000000_000010.mp4",
        "train/abseiling/zzz_000005_000015.mp4",
        f"{val_dir}/abseiling/vvv_000030_000040.mp4",
    ]:
        _write(os.path.join(root, rel), "x")


@pytest.mark.parametrize("val_dir,val_csv", [("val", "validate.csv"), ("validate", "val.csv")])
def test_prepare_kinetics400(tmp_path, val_dir, val_csv):
    root = str(tmp_path / "k")
    _fake_k400(root, val_dir, val_csv)
    s = prepare_kinetics400(root)
    assert (s["num_classes"], s["train"], s["val"]) == (2, 3, 1)
    assert sorted(s["missing"]) == [
        "train/riding a bike/gone_000001_000011.mp4",
        f"{val_dir}/riding a bike/www_000002_000012.mp4",
    ]
    assert read_classes(os.path.join(root, "classes.txt")) == ["abseiling", "riding a bike"]
    train = read_list(os.path.join(root, "train.txt"))
    assert VideoItem("train/riding a bike/abc_000010_000020.mp4", 1) in train
    assert VideoItem("train/abseiling/-x_Y_000000_000010.mp4", 0) in train
    assert read_list(os.path.join(root, "val.txt")) == [VideoItem(f"{val_dir}/abseiling/vvv_000030_000040.mp4", 0)]


def test_prepare_kinetics400_bad_header(tmp_path):
    root = str(tmp_path / "k")
    _fake_k400(root)
    _write(os.path.join(root, "annotations", "train.csv"), "name,id\nx,y\n")
    with pytest.raises(ListFormatError, match=r"train.csv:1: header"):
        prepare_kinetics400(root)


# ----------------------------------------------------------------------------- splits
def _items(sizes):
    return [VideoItem(f"c{c}/v{i:03d}.mp4", c) for c, n in enumerate(sizes) for i in range(n)]


def test_split_balanced_deterministic_order_independent():
    items = _items([30, 25, 40, 12])
    lab, unl = split_labeled(items, per_class=5, seed=1)
    assert Counter(it.label for it in lab) == {0: 5, 1: 5, 2: 5, 3: 5}
    assert not set(lab) & set(unl) and sorted(lab + unl, key=str) == sorted(items, key=str)
    assert split_labeled(list(reversed(items)), per_class=5, seed=1) == (lab, unl)
    assert split_labeled(items, per_class=5, seed=2)[0] != lab


def test_split_fraction_and_short_classes():
    items = _items([100, 100, 100, 100])
    lab, _ = split_labeled(items, fraction=0.1, seed=0)
    assert Counter(it.label for it in lab) == {c: 10 for c in range(4)}
    lab, _ = split_labeled(_items([5, 5]), fraction=0.01, seed=0)  # at least 1 per class
    assert Counter(it.label for it in lab) == {0: 1, 1: 1}
    with pytest.warns(UserWarning, match="fewer than 6"):
        lab, unl = split_labeled(_items([3, 20]), per_class=6, seed=0)
    assert Counter(it.label for it in lab) == {0: 3, 1: 6} and len(unl) == 14


def test_split_category_wise_proportions():
    items = _items([100, 50, 30, 20])  # N = 200
    lab, unl = split_labeled(items, per_class=5, seed=0, category_wise=True)  # total 20
    assert Counter(it.label for it in lab) == {0: 10, 1: 5, 2: 3, 3: 2}
    lab, _ = split_labeled(items, fraction=0.05, seed=0, category_wise=True)  # total 10
    assert Counter(it.label for it in lab) == {0: 5, 1: 3, 2: 1, 3: 1}  # remainder tie .5/.5 -> lower label
    lab, _ = split_labeled(_items([97, 1, 1, 1]), per_class=1, seed=0, category_wise=True)
    assert Counter(it.label for it in lab) == {0: 1, 1: 1, 2: 1, 3: 1}  # >= 1 each when possible
    assert (
        split_labeled(items, per_class=5, seed=0, category_wise=True)[0]
        != split_labeled(items, per_class=5, seed=3, category_wise=True)[0]
    )


def test_split_argument_errors():
    items = _items([4, 4])
    for kw in (
        dict(),
        dict(per_class=1, fraction=0.5),
        dict(per_class=0),
        dict(fraction=1.5),
        dict(per_class=1, seed=-1),
    ):
        with pytest.raises(ValueError):
            split_labeled(items, **kw)
    with pytest.raises(ValueError, match="duplicate path"):
        split_labeled(items + [VideoItem("c0/v000.mp4", 1)], per_class=1)
    with pytest.raises(ValueError, match="only 8"):
        split_labeled(items, per_class=5, category_wise=True)


# ----------------------------------------------------------------------------- CLI
@pytest.fixture
def cli():
    parser = argparse.ArgumentParser(prog="cmpl-ray")
    commands.register(parser.add_subparsers(dest="command", required=True))

    def run(*argv):
        args = parser.parse_args([str(a) for a in argv])
        return args.func(args)

    return run


def test_cli_split(cli, tmp_path, capsys):
    write_list(str(tmp_path / "train.txt"), _items([10, 8, 12]))
    write_classes(str(tmp_path / "classes.txt"), ["a", "b", "c"])
    assert cli("split", tmp_path / "train.txt", "--per-class", 2, "--seed", 1, "--out", tmp_path / "s") == 0
    out = capsys.readouterr().out
    assert "labeled 6 videos in 3 classes" in out and "unlabeled 24" in out
    assert len(read_list(str(tmp_path / "s" / "labeled.txt"))) == 6
    assert read_classes(str(tmp_path / "s" / "classes.txt")) == ["a", "b", "c"]
    assert cli("split", tmp_path / "train.txt", "--fraction", 0.5, "--category-wise", "--out", tmp_path / "t") == 0


def test_cli_errors_one_line_exit_2(cli, tmp_path, capsys):
    assert cli("split", tmp_path / "nope.txt", "--per-class", 1, "--out", tmp_path / "s") == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "nope.txt" in err and err.startswith("cmpl-ray split: error:")
    _write(tmp_path / "bad.txt", "a.mp4 zero\n")
    assert cli("split", tmp_path / "bad.txt", "--per-class", 1, "--out", tmp_path / "s") == 2
    assert "bad.txt:1: label 'zero' is not an integer" in capsys.readouterr().err
    assert cli("prepare", "ucf101", "--root", tmp_path / "none") == 2
    assert "ucfTrainTestlist" in capsys.readouterr().err
    assert cli("prepare", "kinetics400", "--root", tmp_path / "none") == 2
    assert cli("synth", tmp_path / "s", "--classes", 99) == 2
    assert "num_classes must be in 1..16" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # argparse itself rejects a missing --per-class/--fraction
        cli("split", tmp_path / "bad.txt", "--out", tmp_path / "s")


def test_cli_prepare_reports_missing(cli, tmp_path, capsys):
    root = str(tmp_path / "ucf")
    _fake_ucf(root)
    assert cli("prepare", "ucf101", "--root", root, "--split", 1, "--out", tmp_path / "o") == 0
    out = capsys.readouterr().out
    assert "3 train, 2 val" in out and "missing: UCF-101/YoYo/v_YoYo_g09_c01.avi" in out
    assert "missing total: 2" in out
    _fake_k400(str(tmp_path / "k"))
    assert cli("prepare", "kinetics400", "--root", tmp_path / "k") == 0
    assert "2 of 6 listed videos missing" in capsys.readouterr().out


def test_split_help_documents_protocol(cli, capsys):
    with pytest.raises(SystemExit):
        cli("split", "--help")
    text = capsys.readouterr().out
    assert "seeds 0, 1 and 2" in text and "--per-class 6" in text and "--per-class 60" in text


def test_cli_synth(cli, tmp_path, capsys):
    out = tmp_path / "syn"
    assert (
        cli(
            "synth",
            out,
            "--classes",
            2,
            "--per-class",
            2,
            "--seed",
            3,
            "--frames",
            8,
            "--size",
            32,
            "--val-per-class",
            1,
        )
        == 0
    )
    line = capsys.readouterr().out
    assert "2 classes (1 motion, 1 appearance), 4 train + 2 val videos" in line and " s -> " in line
    assert len(read_list(str(out / "train.txt"))) == 4 and len(read_list(str(out / "val.txt"))) == 2


def test_classes_file_found_in_data_root_as_synth_and_split_lay_it_out(tmp_path):
    """`cmpl-ray demo` then `cmpl-ray tune search_spaces/demo_laptop.yaml` (the README's sweep) sets no
    data.classes_file: the splits are in <root>/splits, classes.txt in <root>."""
    from cmpl_ray.config import load_config
    from cmpl_ray.data.pipeline import class_names, classes_path

    root = tmp_path / "demo_data"
    (root / "splits").mkdir(parents=True)
    sets = [f"data.root={root}", f"data.labeled_list={root}/splits/labeled.txt"]
    cfg = load_config("demo", None, sets)
    with pytest.raises(FileNotFoundError, match="beside the labeled list or in data.root"):
        class_names(cfg)
    (root / "classes.txt").write_text("a\nb\n")
    assert classes_path(cfg) == f"{root}/classes.txt" and class_names(cfg) == ["a", "b"]
    (root / "splits" / "classes.txt").write_text("x\ny\nz\n")  # beside the list wins
    assert class_names(cfg) == ["x", "y", "z"]
