"""The lock (constraints.txt): every dependency is pinned, the pins satisfy pyproject's lower bounds, and this
environment runs the locked versions (so a green CI run is a statement about the versions in the lock)."""

from __future__ import annotations

import os
import re
from importlib import metadata

import pytest
import tomllib
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _lock() -> dict[str, Version]:
    pins = {}
    for line in open(os.path.join(ROOT, "constraints.txt")):
        line = line.split("#")[0].strip()
        if line:
            m = re.fullmatch(r"([A-Za-z0-9_.\-]+)==([^\s;]+)", line)
            assert m, f"constraints.txt: not a plain pin: {line!r}"
            pins[canonicalize_name(m.group(1))] = Version(m.group(2))
    return pins


def _requirements() -> list[Requirement]:
    proj = tomllib.load(open(os.path.join(ROOT, "pyproject.toml"), "rb"))["project"]
    reqs = proj["dependencies"] + proj["optional-dependencies"]["test"]
    return [Requirement(r) for r in reqs]


def test_every_dependency_is_locked_within_its_bounds():
    pins = _lock()
    for req in _requirements():
        name = canonicalize_name(req.name)
        if name == "torch":  # pinned by the installer per machine (CPU / CUDA build), never by the lock
            assert name not in pins
            continue
        assert name in pins, f"{req.name} is a dependency but not in constraints.txt: run scripts/lock.sh"
        assert pins[name] in req.specifier, f"the lock's {req.name}=={pins[name]} violates pyproject's {req}"


@pytest.mark.skipif(os.environ.get("CMPL_NO_LOCK") == "1", reason="installed from the lower bounds on purpose")
def test_this_environment_runs_the_locked_versions():
    pins = _lock()
    wrong = {}
    for dist in metadata.distributions():
        name = canonicalize_name(dist.metadata["Name"])
        if name in pins and Version(dist.version) != pins[name]:
            wrong[name] = f"{dist.version} installed, {pins[name]} locked"
    assert not wrong, (
        f"{wrong}: reinstall with `bash scripts/setup_env.sh` (or set CMPL_NO_LOCK=1 when testing "
        "other versions on purpose)"
    )
