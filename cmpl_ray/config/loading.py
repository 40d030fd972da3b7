"""Loading configs: presets, YAML files and ``--set section.key=value`` overrides into a validated Config.

Values are coerced to each field's type here, so that ``--set train.epochs=3`` and YAML's ``1e-4`` (a string in
YAML 1.1) reach ``__post_init__`` as the types it checks; a wrong type is refused naming the key.
"""

from __future__ import annotations

import difflib
import math
from importlib import resources
from pathlib import Path
from typing import Any, get_type_hints

import yaml

from cmpl_ray.config.schema import SECTIONS, Config, ConfigError


def _suggest(name: str, options) -> str:
    close = difflib.get_close_matches(name, list(options), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _coerce(key: str, value: Any, typ: Any) -> Any:
    """Convert YAML/CLI values to the field's type; refuse what does not fit, naming the key."""
    tname = typ if isinstance(typ, str) else getattr(typ, "__name__", str(typ))
    if tname == "bool":
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0", "on", "off"):
            return value.lower() in ("true", "yes", "1", "on")
        raise ConfigError(f"{key}: expected a bool (true/false), got {value!r}")
    if tname == "int":
        if isinstance(value, bool):
            raise ConfigError(f"{key}: expected an int, got {value!r}")
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, int):
            return value
        raise ConfigError(f"{key}: expected an int, got {value!r}")
    if tname == "float":
        if isinstance(value, str):  # YAML 1.1 reads 1e-4 as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        if not math.isfinite(value):
            raise ConfigError(f"{key}: expected a finite number, got {value!r}")
        return float(value)
    if tname == "str":
        if isinstance(value, (dict, list)) or value is None:
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return str(value)
    if str(tname).startswith("list"):
        if not isinstance(value, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            raise ConfigError(f"{key}: expected a list of ints like [256, 320], got {value!r}")
        return list(value)
    raise ConfigError(f"{key}: unsupported type {tname}")  # pragma: no cover


def from_dict(d: dict[str, Any]) -> Config:
    """Build and validate a Config from nested dicts; unknown sections/keys are refused with a suggestion."""
    if not isinstance(d, dict):
        raise ConfigError(f"config: expected a mapping of sections, got {type(d).__name__}")
    sections = {}
    for sname, sval in d.items():
        if sname not in SECTIONS:
            raise ConfigError(
                f"{sname}: unknown config section{_suggest(str(sname), SECTIONS)}; sections: {sorted(SECTIONS)}"
            )
        if sval is None:
            sval = {}
        if not isinstance(sval, dict):
            raise ConfigError(f"{sname}: expected a mapping of keys, got {sval!r}")
        cls = SECTIONS[sname]
        hints = get_type_hints(cls)
        kwargs = {}
        for k, v in sval.items():
            key = f"{sname}.{k}"
            if k not in hints:
                raise ConfigError(f"{key}: unknown key{_suggest(str(k), hints)}; valid keys: {sorted(hints)}")
            kwargs[k] = _coerce(key, v, getattr(hints[k], "__name__", str(hints[k])))
        sections[sname] = cls(**kwargs)
    return Config(**sections)


def parse_value(text: str) -> Any:
    """Parse a ``--set`` value with YAML rules: 3 -> int, 0.5 -> float, true -> bool, [1, 2] -> list."""
    try:
        value = yaml.safe_load(text) if text != "" else ""
    except yaml.YAMLError:
        return text
    if isinstance(value, str):
        try:
            return float(value)  # 1e-4, which YAML 1.1 leaves as a string
        except ValueError:
            pass
    return value


def apply_overrides(d: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``a.b=value`` strings to a nested dict (validation happens in :func:`from_dict`)."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"{item}: override must look like section.key=value")
        key, text = item.split("=", 1)
        parts = key.strip().split(".")
        if len(parts) != 2 or not all(parts):
            raise ConfigError(f"{key}: override key must be section.key (e.g. algo.threshold)")
        d.setdefault(parts[0], {})
        if not isinstance(d[parts[0]], dict):
            d[parts[0]] = {}
        d[parts[0]][parts[1]] = parse_value(text.strip())
    return d


def preset_names() -> list[str]:
    return sorted(p.name[:-5] for p in resources.files("cmpl_ray.presets").iterdir() if p.name.endswith(".yaml"))


def read_yaml(path: str | Path) -> dict[str, Any]:
    try:
        with open(path) as f:
            d = yaml.safe_load(f) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({e})") from None
    if not isinstance(d, dict):
        raise ConfigError(f"{path}: expected a mapping of sections")
    return d


def preset_dict(name: str) -> dict[str, Any]:
    if name not in preset_names():
        raise ConfigError(f"preset {name!r} not found{_suggest(name, preset_names())}; presets: {preset_names()}")
    d = yaml.safe_load(resources.files("cmpl_ray.presets").joinpath(f"{name}.yaml").read_text()) or {}
    d.pop("description", None)
    return d


def load_config(preset: str | None = None, path: str | None = None, overrides: list[str] | None = None) -> Config:
    """Preset (or YAML file) + ``--set`` overrides -> validated Config."""
    d: dict[str, Any] = {}
    if preset:
        d = preset_dict(preset)
    if path:
        extra = read_yaml(path)
        extra.pop("description", None)
        for s, v in extra.items():
            if isinstance(v, dict) and isinstance(d.get(s), dict):
                d[s].update(v)
            else:
                d[s] = v
    return from_dict(apply_overrides(d, list(overrides or [])))


def save_config(cfg: Config, path: str | Path) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        yaml.safe_dump(cfg.to_dict(), f, sort_keys=False)
