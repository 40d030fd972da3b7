"""Search-space files (``search_spaces/*.yaml``): parse, validate against the config, convert to Ray Tune.

A space file names config keys and how to vary them; everything is checked at load, before any trial
starts, so a typo in a key or an out-of-range value fails in a second with the key's name::

    description: Table 5 -- time offset t_s
    preset: demo                 # default preset (``--preset`` overrides)
    searcher: grid               # grid | random | optuna
    num_samples: 1               # grid: repeats of the whole grid; random/optuna: trials
    scheduler: {name: asha, grace_period: 1, reduction_factor: 2}   # or {name: fifo}
    max_concurrent_trials: 2
    fixed: {train.eval_every: 1}         # applied to every trial (after the preset and --set)
    space:
      data.time_offset: {grid: [0, 0.5, 1, 2]}
      algo.threshold: {uniform: [0.5, 0.95]}
      aux:                                  # a bundle: several keys that move together
        grid:
          - {model.aux_arch: r18, model.aux_width: 1.0}
          - {model.aux_arch: r50, model.aux_width: 0.25}

Distributions: ``grid`` and ``choice`` (lists of values), ``uniform``/``loguniform``/``quniform`` (``[lo, hi]``
or ``[lo, hi, q]``), ``randint`` (``[lo, hi)``). Ray-free except :func:`to_tune_space`.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
from typing import Any

import yaml

from ..config import ConfigError, from_dict, load_config, preset_dict

KINDS = ("grid", "choice", "uniform", "loguniform", "quniform", "randint")
SEARCHERS = ("grid", "random", "optuna")
SCHEDULERS = ("asha", "fifo")


@dataclasses.dataclass
class SweepSpec:
    """A validated search-space file."""

    name: str
    """File stem: the default sweep name."""
    description: str
    preset: str | None
    searcher: str
    num_samples: int
    scheduler: dict[str, Any]
    max_concurrent_trials: int
    fixed: dict[str, Any]
    space: dict[str, tuple[str, list]]
    """axis name -> (kind, values or bounds); an axis is a config key or a bundle of keys."""
    metric: str = "val_top1"
    mode: str = "max"

    def axes(self) -> list[str]:
        return list(self.space)

    def grid_size(self) -> int:
        n = 1
        for kind, vals in self.space.values():
            if kind == "grid":
                n *= len(vals)
        return n

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["space"] = {k: {kind: vals} for k, (kind, vals) in self.space.items()}
        return d


def _err(path: str, key: str, msg: str) -> ConfigError:
    return ConfigError(f"{os.path.basename(path)}: {key}: {msg}")


def assignments(axis: str, value: Any) -> dict[str, Any]:
    """The config keys one axis value sets: ``{axis: value}``, or the bundle's own mapping."""
    if isinstance(value, dict):
        return dict(value)
    return {axis: value}


def overrides_of(values: dict[str, Any]) -> list[str]:
    """Sampled axis values -> ``section.key=value`` override strings (YAML-encoded values)."""
    out = []
    for axis, v in values.items():
        for k, x in assignments(axis, v).items():
            out.append(f"{k}={yaml.safe_dump(x, default_flow_style=True).strip().removesuffix('...').strip()}")
    return out


def _check_values(path: str, base: dict[str, Any], axis: str, kind: str, vals: list) -> None:
    """Build a config for each listed value (or each bound) so bad values fail at load with the key."""
    probe = vals if kind in ("grid", "choice") else vals[:2]
    for v in probe:
        d = {s: dict(sec) if isinstance(sec, dict) else sec for s, sec in base.items()}
        for k, x in assignments(axis, v).items():
            if not isinstance(k, str) or k.count(".") != 1:
                raise _err(path, f"space.{axis}", f"{k!r} is not a section.key config key")
            s, f = k.split(".")
            d.setdefault(s, {})
            d[s][f] = x
        try:
            from_dict(d)
        except ConfigError as e:
            raise _err(path, f"space.{axis}", f"value {v!r} is refused: {e}") from None


SPACE_FILE_KEYS = {"description", "preset", "searcher", "num_samples", "scheduler", "max_concurrent_trials",
                   "fixed", "space", "metric", "mode"}  # fmt: skip


def _scheduler_spec(path: str, raw: Any) -> dict[str, Any]:
    """``scheduler:`` checked: a known name (default asha) and numbers >= 1 (reduction_factor >= 2)."""
    sched = dict(raw or {"name": "asha"})
    if sched.get("name", "asha") not in SCHEDULERS:
        raise _err(path, "scheduler.name", f"must be one of {SCHEDULERS}, got {sched.get('name')!r}")
    sched.setdefault("name", "asha")
    for k in ("grace_period", "reduction_factor", "max_t"):
        v = sched.get(k)
        if v is not None and (
            not isinstance(v, (int, float)) or isinstance(v, bool) or v < 1 or (k == "reduction_factor" and v < 2)
        ):
            raise _err(path, f"scheduler.{k}", f"must be a number >= {2 if k == 'reduction_factor' else 1}, got {v!r}")
    unknown = set(sched) - {"name", "grace_period", "reduction_factor", "max_t"}
    if unknown:
        raise _err(path, "scheduler", f"unknown keys {sorted(unknown)}")
    return sched


def _axis(path: str, base: dict, axis: str, spec: Any, searcher: str) -> tuple[str, list]:
    """One ``space:`` axis checked: one kind with a non-empty list, numeric ranges well formed, every value
    valid for its config key (:func:`_check_values`)."""
    if not isinstance(spec, dict) or len(spec) != 1 or next(iter(spec)) not in KINDS:
        raise _err(path, f"space.{axis}", f"must be one of {{{' | '.join(KINDS)}: values}}, got {spec!r}")
    kind, vals = next(iter(spec.items()))
    if not isinstance(vals, list) or not vals:
        raise _err(path, f"space.{axis}.{kind}", f"must be a non-empty list, got {vals!r}")
    if kind in ("uniform", "loguniform", "quniform", "randint"):
        want = 3 if kind == "quniform" else 2
        if len(vals) != want or not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in vals):
            raise _err(path, f"space.{axis}.{kind}", f"needs {want} numbers, got {vals!r}")
        if not vals[0] < vals[1] or (kind == "loguniform" and vals[0] <= 0):
            raise _err(path, f"space.{axis}.{kind}", f"needs lo < hi (and lo > 0 for loguniform), got {vals!r}")
    if searcher == "optuna" and (kind == "grid" or any(isinstance(v, (dict, list)) for v in vals)):
        raise _err(
            path,
            f"space.{axis}",
            "optuna searches choice/uniform/... of plain values, not grids or bundles: use searcher grid or random",
        )
    _check_values(path, base, axis, kind, vals)
    return kind, vals


def load_space(path: str, preset: str | None = None, searcher: str | None = None) -> SweepSpec:
    """Read and validate a space file; ``preset`` / ``searcher`` (CLI flags) win over the file's own."""
    try:
        with open(path) as f:
            raw = yaml.safe_load(f) or {}
    except FileNotFoundError:
        raise ConfigError(f"{path}: search-space file not found") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({e})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping")
    for k in raw:
        if k not in SPACE_FILE_KEYS:
            raise _err(path, k, f"unknown key; expected one of {sorted(SPACE_FILE_KEYS)}")
    preset = preset or raw.get("preset")
    base = preset_dict(preset) if preset else {}
    searcher = searcher or raw.get("searcher", "grid")
    if searcher not in SEARCHERS:
        raise _err(path, "searcher", f"must be one of {SEARCHERS}, got {searcher!r}")
    num_samples = raw.get("num_samples", 1)
    if not isinstance(num_samples, int) or isinstance(num_samples, bool) or num_samples < 1:
        raise _err(path, "num_samples", f"must be an integer >= 1, got {num_samples!r}")
    mct = raw.get("max_concurrent_trials", 1)
    if not isinstance(mct, int) or isinstance(mct, bool) or mct < 1:
        raise _err(path, "max_concurrent_trials", f"must be an integer >= 1, got {mct!r}")
    sched = _scheduler_spec(path, raw.get("scheduler"))
    fixed = raw.get("fixed") or {}
    if not isinstance(fixed, dict):
        raise _err(path, "fixed", "must be a mapping of section.key: value")
    fixed_over = overrides_of(fixed)
    try:
        load_config(preset, None, fixed_over)
    except ConfigError as e:
        raise _err(path, "fixed", str(e)) from None
    base = {s: dict(v) for s, v in base.items()}
    for k, v in fixed.items():
        s, f = k.split(".")
        base.setdefault(s, {})[f] = v
    rawspace = raw.get("space")
    if not isinstance(rawspace, dict) or not rawspace:
        raise _err(path, "space", "must be a non-empty mapping of axis: {grid|choice|uniform|...: values}")
    space = {axis: _axis(path, base, axis, spec, searcher) for axis, spec in rawspace.items()}
    metric = raw.get("metric", "val_top1")
    mode = raw.get("mode", "max")
    if mode not in ("max", "min"):
        raise _err(path, "mode", f"must be max or min, got {mode!r}")
    name = os.path.splitext(os.path.basename(path))[0]
    return SweepSpec(
        name=name,
        description=str(raw.get("description", "")).strip(),
        preset=preset,
        searcher=searcher,
        num_samples=num_samples,
        scheduler=sched,
        max_concurrent_trials=mct,
        fixed=fixed,
        space=space,
        metric=metric,
        mode=mode,
    )


def grid_points(spec: SweepSpec) -> list[dict[str, Any]]:
    """All combinations of the grid axes (for benchmarks and dry runs)."""
    axes = [(a, vals) for a, (kind, vals) in spec.space.items() if kind == "grid"]
    return [dict(zip([a for a, _ in axes], combo)) for combo in itertools.product(*[v for _, v in axes])]


def to_tune_space(spec: SweepSpec) -> dict[str, Any]:
    """Ray Tune ``param_space`` entries for the axes (under ``"axes"``)."""
    from ray import tune

    out: dict[str, Any] = {}
    for axis, (kind, vals) in spec.space.items():
        if kind == "grid":
            out[axis] = tune.grid_search(vals)
        elif kind == "choice":
            out[axis] = tune.choice(vals)
        elif kind == "uniform":
            out[axis] = tune.uniform(*vals)
        elif kind == "loguniform":
            out[axis] = tune.loguniform(*vals)
        elif kind == "quniform":
            out[axis] = tune.quniform(*vals)
        else:
            out[axis] = tune.randint(int(vals[0]), int(vals[1]))
    return out
