"""Config: presets, round trip, validation errors naming the key, --set parsing."""

import pytest
import yaml

from cmpl_ray.config import (
    Config,
    ConfigError,
    apply_overrides,
    from_dict,
    load_config,
    parse_value,
    preset_names,
    save_config,
)

PUBLIC_KEYS = [
    "data.root",
    "data.labeled_list",
    "data.unlabeled_list",
    "data.val_list",
    "algo.name",
    "algo.scheme",
    "algo.threshold",
    "algo.lambda_u",
    "algo.unlabeled_ratio",
    "train.epochs",
    "run.output_dir",
]


def test_presets_load_and_carry_the_paper_recipe():
    assert {"demo", "ucf101-1pct-r50", "ucf101-10pct-r50", "k400-1pct-r50", "k400-10pct-r50", "ucf101-1pct-r18"} <= set(
        preset_names()
    )
    for name in preset_names():
        cfg = load_config(name)
        assert set(PUBLIC_KEYS) <= set(cfg.flat())
    k = load_config("k400-1pct-r50")
    assert (k.optim.momentum, k.optim.weight_decay, k.optim.lr) == (0.9, 1e-4, 0.1)
    assert (k.train.batch_labeled, k.train.batch_labeled * k.algo.unlabeled_ratio) == (2, 10)
    assert (k.algo.lambda_u, k.algo.threshold, k.train.epochs) == (5.0, 0.9, 200)
    assert (k.data.raw_clip_len // k.data.primary_stride, k.data.primary_stride) == (8, 8)
    assert (k.data.raw_clip_len // k.data.aux_stride, k.data.aux_stride) == (16, 4)
    assert (k.model.aux_arch, k.model.aux_width, k.data.crop_size) == ("r50", 0.25, 224)
    assert load_config("k400-10pct-r50").algo.lambda_u == 2.0
    assert load_config("ucf101-1pct-r50").optim.weight_decay == 1e-3
    assert load_config("ucf101-1pct-r18").model.primary_arch == "r18"


FEWLABEL_STUDY_SETS = [  # the overrides of docs/fewlabel-floor.md's measured runs (tag naive-t-1350)
    "model.primary_arch=naive_t",
    "model.aux_arch=naive_t",
    "model.aux_width=0.25",
    "train.min_steps=1350",
]


def test_suite_fewlabel_preset_is_the_measured_configuration():
    """The shipped few-label preset is exactly what the study measured: suite-cpu plus the study's overrides
    (only the run's name and folder differ), so its published numbers belong to it."""
    shipped = load_config("suite-fewlabel-cpu").flat()
    measured = load_config("suite-cpu", overrides=FEWLABEL_STUDY_SETS).flat()
    differ = {k for k in shipped if shipped[k] != measured[k]}
    assert differ == {"run.name", "run.output_dir"}


def test_round_trip(tmp_path):
    cfg = load_config("demo", overrides=["algo.threshold=0.8", "data.train_short_side=[60, 70]"])
    save_config(cfg, tmp_path / "c.yaml")
    again = from_dict(yaml.safe_load((tmp_path / "c.yaml").read_text()))
    assert again == cfg
    assert from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize(
    "text,value",
    [
        ("3", 3),
        ("0.5", 0.5),
        ("1e-4", 1e-4),
        ("true", True),
        ("False", False),
        ("[256, 320]", [256, 320]),
        ("cross", "cross"),
        ("s3://b/x", "s3://b/x"),
    ],
)
def test_parse_value(text, value):
    assert parse_value(text) == value


def test_set_overrides_types():
    cfg = load_config(
        "demo",
        overrides=[
            "train.epochs=3",
            "optim.lr=0.2",
            "algo.lambda_u=1",
            "data.weak_flip=true",
            "data.train_short_side=[64, 80]",
            "train.use_gpu=no",
        ],
    )
    assert cfg.train.epochs == 3 and cfg.optim.lr == 0.2 and isinstance(cfg.algo.lambda_u, float)
    assert cfg.data.weak_flip is True and cfg.data.train_short_side == [64, 80] and cfg.train.use_gpu is False


@pytest.mark.parametrize(
    "override,key",
    [
        ("algo.threshold=0", "algo.threshold"),
        ("algo.threshold=1.5", "algo.threshold"),
        ("algo.lambda_u=-1", "algo.lambda_u"),
        ("algo.unlabeled_ratio=0", "algo.unlabeled_ratio"),
        ("algo.unlabeled_ratio=2.5", "algo.unlabeled_ratio"),
        ("data.primary_stride=3", "data.primary_stride"),
        ("data.aux_stride=0", "data.aux_stride"),
        ("model.aux_width=0.001", "model.aux_width"),
        ("model.primary_width=-1", "model.primary_width"),
        ("model.primary_width=1.1e307", "model.primary_width"),  # base x width overflowed round() (fuzz)
        ("model.aux_width=inf", "model.aux_width"),
        ("algo.name=meanteacher", "algo.name"),
        ("algo.scheme=best", "algo.scheme"),
        ("train.epochs=0", "train.epochs"),
        ("train.amp=fp8", "train.amp"),
        ("model.primary_arch=r101", "model.primary_arch"),
        ("train.epochs=ten", "train.epochs"),
        ("data.weak_flip=maybe", "data.weak_flip"),
        ("data.train_short_side=[10]", "data.train_short_side"),
        ("optim.lr=0", "optim.lr"),
        ("run.name=a/b", "run.name"),
        ("data.eval_crops=2", "data.eval_crops"),
        ("data.val_decode=threads", "data.val_decode"),
        ("train.worker_resource=GPU", "train.worker_resource"),
        ("train.worker_resource=node:10.0.0.1", "train.worker_resource"),
        ("data.decode_resource=CPU", "data.decode_resource"),
        ("data.decode_resource=de code", "data.decode_resource"),
    ],
)
def test_validation_names_the_key(override, key):
    with pytest.raises(ConfigError) as e:
        load_config("demo", overrides=[override])
    assert str(e.value).startswith(key)


def test_placement_keys_take_custom_resource_names_and_leave_the_run_identity_alone():
    from cmpl_ray.data.pipeline import decode_placement
    from cmpl_ray.train.identity import fingerprint, identity

    base = load_config("demo")
    placed = load_config("demo", overrides=["train.worker_resource=trainer", "data.decode_resource=cpu-decode"])
    assert decode_placement(placed) == {"resources": {"cpu-decode": 0.01}} and decode_placement(base) == {}
    # where a run trains or decodes is not what it trains: a run may move to other nodes and still resume
    assert fingerprint(identity(placed.flat())) == fingerprint(identity(base.flat()))


def test_unknown_keys_get_a_suggestion():
    with pytest.raises(ConfigError, match=r"algo.treshold: unknown key \(did you mean 'threshold'\?\)"):
        load_config("demo", overrides=["algo.treshold=0.9"])
    with pytest.raises(ConfigError, match=r"algoo: unknown config section \(did you mean 'algo'\?\)"):
        from_dict({"algoo": {}})
    with pytest.raises(ConfigError, match="section.key"):
        apply_overrides({}, ["threshold=0.9"])
    with pytest.raises(ConfigError, match="preset 'dem' not found"):
        load_config("dem")


def test_stride_must_divide_raw_clip_len():
    with pytest.raises(ConfigError, match="data.primary_stride: must be a positive divisor of data.raw_clip_len=64"):
        from_dict({"data": {"primary_stride": 7}})
    assert from_dict({"data": {"raw_clip_len": 32, "primary_stride": 4, "aux_stride": 2}}).data.aux_stride == 2


def test_aux_same_resolves_to_primary():
    cfg = load_config("demo", overrides=["model.aux_arch=same", "model.primary_width=0.5"])
    assert cfg.aux_spec() == ("tiny", 0.5)
    assert Config().aux_spec() == ("r50", 0.25)


@pytest.mark.parametrize(
    "spec", ["right:left,left:up", "right:left,up:left", "a:b,b:c", "up:up", "right:left,right:up"]
)
def test_flip_label_map_must_be_its_own_inverse(spec):
    """A flip applied twice gives back the clip, so the label map must too: two classes onto one is refused."""
    with pytest.raises(ConfigError) as e:
        load_config("demo", overrides=[f"data.flip_label_map={spec}"])
    assert str(e.value).startswith("data.flip_label_map")


@pytest.mark.parametrize("spec", ["right:left,orbit_cw:orbit_ccw", "right:left,left:right", "right:left, 2:3"])
def test_flip_label_map_pairs_are_accepted(spec):
    assert load_config("demo", overrides=[f"data.flip_label_map={spec}"]).data.flip_label_map == spec


def test_flip_map_mixing_names_and_ids_is_checked_against_the_classes():
    from cmpl_ray.data.pipeline import resolve_flip_map

    names = ["right", "left", "up"]
    assert resolve_flip_map("right:left,1:0", names) == [1, 0, 2]  # the same pair, once by name, once by id
    with pytest.raises(ValueError, match="data.flip_label_map"):
        resolve_flip_map("right:left,1:2", names)  # 'left' and 1 are the same class, in two pairs
    with pytest.raises(ValueError, match="data.flip_label_map"):
        resolve_flip_map("up:2", names)
