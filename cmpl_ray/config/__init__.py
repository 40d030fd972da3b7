"""Typed configuration: dataclass sections, YAML presets, ``--set a.b=value`` overrides.

``schema`` holds the sections (one docstring and one check per field); ``loading`` turns presets, YAML files
and overrides into a validated :class:`Config`. Import from here: ``from cmpl_ray.config import load_config``.
"""

from cmpl_ray.config.loading import (
    apply_overrides,
    from_dict,
    load_config,
    parse_value,
    preset_dict,
    preset_names,
    read_yaml,
    save_config,
)
from cmpl_ray.config.schema import (
    ALGOS,
    ARCHS,
    BN_MODES,
    SCHEMES,
    SECTIONS,
    AlgoConfig,
    Config,
    ConfigError,
    DataConfig,
    ModelConfig,
    OptimConfig,
    RunConfig,
    TrackingConfig,
    TrainConfig,
)

__all__ = [
    "ALGOS",
    "ARCHS",
    "BN_MODES",
    "SCHEMES",
    "SECTIONS",
    "AlgoConfig",
    "Config",
    "ConfigError",
    "DataConfig",
    "ModelConfig",
    "OptimConfig",
    "RunConfig",
    "TrackingConfig",
    "TrainConfig",
    "apply_overrides",
    "from_dict",
    "load_config",
    "parse_value",
    "preset_dict",
    "preset_names",
    "read_yaml",
    "save_config",
]
