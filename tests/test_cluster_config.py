"""cluster.yaml (``ray up``) and scripts/cluster/*.sh, checked offline: no cloud call, no Ray cluster.

Ray's own launcher path is ``prepare_config`` (defaults merged, per-type min/max filled) then ``validate_config``
(the JSON schema in ray/autoscaler/ray-schema.json plus the head/min_workers rules); the AWS-specific
bootstrap (key pair, IAM, subnets) needs AWS and is not run. The services that must not be exposed are
checked by parsing their command lines with Ray's and MLflow's own CLI definitions, so a misspelt flag fails too.
"""

from __future__ import annotations

import copy
import os
import re
import shlex
import subprocess

import pytest
import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLUSTER = os.path.join(ROOT, "cluster.yaml")
SCRIPTS = os.path.join(ROOT, "scripts", "cluster")


@pytest.fixture(scope="module")
def raw() -> dict:
    with open(CLUSTER) as f:
        return yaml.safe_load(f)


@pytest.fixture(scope="module")
def prepared(raw) -> dict:
    from ray.autoscaler._private.util import prepare_config, validate_config

    cfg = prepare_config(copy.deepcopy(raw))
    validate_config(cfg)
    return cfg


def _segments(command: str) -> list[list[str]]:
    """Shell command -> simple commands (split on ; && || & |), each without leading VAR=value, setsid, nohup
    and without redirections."""
    out = []
    for part in re.split(r"\s*(?:;|&&|\|\||(?<![>&0-9])&(?!&)|\|)\s*", command):
        toks = shlex.split(part) if part.strip() else []
        while toks and (re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", toks[0]) or toks[0] in ("setsid", "nohup", "exec")):
            toks.pop(0)
        cut = next((i for i, t in enumerate(toks) if re.match(r"^[0-9]*[<>]", t)), len(toks))
        if toks[:cut]:
            out.append(toks[:cut])
    return out


def _find(commands: list[str], *prefix: str) -> list[list[str]]:
    return [seg for c in commands for seg in _segments(c) if seg[: len(prefix)] == list(prefix)]


def test_ray_validator_accepts_it(prepared):
    assert prepared["provider"]["type"] == "aws" and prepared["provider"]["region"] == "us-west-2"
    assert prepared["head_node_type"] in prepared["available_node_types"]
    assert prepared["max_workers"] >= 1 and prepared["idle_timeout_minutes"] >= 1


def test_node_types_exist_and_are_sane(raw, prepared):
    types = raw["available_node_types"]
    assert raw["head_node_type"] in types
    workers = {k: v for k, v in types.items() if k != raw["head_node_type"]}
    gpu_types = {k: v for k, v in workers.items() if v["resources"].get("GPU", 0) >= 1}
    assert any(v["resources"]["GPU"] == 1 for v in gpu_types.values()), "no single-GPU worker type"
    assert any(v["resources"]["GPU"] > 1 for v in gpu_types.values()), "no multi-GPU worker type"
    for name, t in workers.items():
        assert t.get("min_workers", 0) == 0, f"{name}: GPU workers should autoscale from 0"
        assert 0 <= t.get("max_workers", 0) <= raw["max_workers"], name
        assert t["node_config"]["InstanceType"], name
    assert any(t.get("max_workers", 0) > 0 for t in gpu_types.values()), "every GPU type is disabled"
    # decode needs CPUs next to each GPU (docs/cluster.md "Scaling": ~12-16 vCPU per GPU); the head does not train
    for name, t in gpu_types.items():
        assert t["resources"]["CPU"] / t["resources"]["GPU"] >= 12, name
    assert types[raw["head_node_type"]]["resources"].get("GPU", 0) == 0
    # every node-type name mentioned anywhere in the file (comments included) exists
    text = open(CLUSTER).read()
    for mentioned in set(re.findall(r"\b(gpu-[0-9]+x-[0-9a-z]+)\b", text)):
        assert mentioned in types, f"cluster.yaml mentions node type {mentioned!r} that is not defined"


def test_placement_resources_match_the_config_keys(raw):
    """train.worker_resource=trainer / data.decode_resource=decode need node types that declare them: one
    `trainer` per GPU, and a CPU-only type with `decode` that the autoscaler can add."""
    types = raw["available_node_types"]
    for name, t in types.items():
        if t["resources"].get("GPU", 0) >= 1:
            assert t["resources"].get("trainer") == t["resources"]["GPU"], name
    decode = [t for t in types.values() if t["resources"].get("decode")]
    assert decode and all(t["resources"].get("GPU", 0) == 0 and t["resources"]["CPU"] >= 8 for t in decode)
    assert all(t.get("max_workers", 0) > 0 for t in decode)


def test_no_credentials_in_file():
    text = open(CLUSTER).read()
    for pat in (
        r"(?i)aws_access_key",
        r"(?i)aws_secret",
        r"(?i)secret_access",
        r"(?i)session_token",
        r"\b(AKIA|ASIA)[0-9A-Z]{16}\b",
        r"-----BEGIN [A-Z ]*PRIVATE KEY",
        r"(?i)ssh_private_key\s*:",
        r"(?i)password\s*[:=]\s*\S",
        r"postgres(ql)?://[^@\s]+:[^@\s]+@",
    ):
        assert not re.search(pat, text), f"credential-like text in cluster.yaml: {pat}"


def test_setup_installs_cuda_torch_then_project(prepared):
    cmds = prepared["setup_commands"]
    torch_i = next(i for i, c in enumerate(cmds) if "torch==2.13.0" in c)
    assert "download.pytorch.org/whl/cu128" in cmds[torch_i]
    proj_i = next(i for i, c in enumerate(cmds) if '-e "$HOME/cmpl-ray"' in c)
    words = shlex.split(cmds[proj_i])
    assert torch_i < proj_i and "-e" in words
    # the nodes install the tested versions: the lock travels with the checkout
    assert words[words.index("-c") + 1] == "$HOME/cmpl-ray/constraints.txt"
    import ray

    assert f"ray[default]=={ray.__version__}" in cmds[proj_i], "pin the cluster's Ray to this Ray version"
    lock = open(os.path.join(os.path.dirname(CLUSTER), "constraints.txt")).read()
    assert f"\nray=={ray.__version__}\n" in lock, "the lock and the cluster's Ray pin disagree"
    assert prepared["file_mounts"]["~/cmpl-ray"] == "."


def test_dashboard_and_mlflow_bound_to_loopback(prepared):
    from mlflow.cli import server
    from ray.scripts.scripts import start

    head = prepared["head_start_ray_commands"]
    starts = _find(head, "ray", "start")
    assert len(starts) == 1
    params = start.make_context("start", starts[0][2:]).params  # Ray's CLI parses (and rejects bad flags)
    assert params["head"] and params["dashboard_host"] == "127.0.0.1"
    assert params["include_dashboard"] is not False and params["dashboard_port"] == 8265

    mlflow = _find(head, "mlflow", "server")
    assert len(mlflow) == 1
    p = server.make_context("server", mlflow[0][2:]).params
    assert p["host"] == "127.0.0.1" and int(p["port"]) == 5000
    assert p["backend_store_uri"].startswith("sqlite:////") and p["artifacts_destination"].startswith("s3://")

    for seg in _find(prepared["worker_start_ray_commands"], "ray", "start"):
        params = start.make_context("start", seg[2:]).params
        assert params["address"] and not params["head"] and params["dashboard_host"] in (None, "localhost", "127.0.0.1")
    every = " ".join(
        prepared["head_start_ray_commands"] + prepared["worker_start_ray_commands"] + prepared["setup_commands"]
    )
    assert "0.0.0.0" not in every and "--ray-debugger-external" not in every


def test_token_auth_distributed_to_every_node(prepared):
    assert prepared["file_mounts"].get("~/.ray/auth_token") == "~/.ray/auth_token"
    for cmd in prepared["head_start_ray_commands"] + prepared["worker_start_ray_commands"]:
        if "ray start" in cmd:
            assert "RAY_AUTH_MODE=token" in cmd, cmd


def _dry_run(script: str, *args: str, **env) -> list[str]:
    out = subprocess.run(
        ["bash", os.path.join(SCRIPTS, script), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "DRY_RUN": "1", "BUCKET": "s3://bkt", **env},
        check=True,
    ).stdout
    return shlex.split(out)


@pytest.mark.parametrize("script", ["submit_train.sh", "submit_tune.sh", "forward_ports.sh"])
def test_scripts_parse(script):
    subprocess.run(["bash", "-n", os.path.join(SCRIPTS, script)], check=True)


def test_submit_train_builds_a_valid_command():
    from cmpl_ray.cli import build_parser
    from cmpl_ray.config import load_config

    argv = _dry_run("submit_train.sh", "--set", "train.epochs=3", GPUS="4")
    sep = argv.index("--")
    assert argv[:3] == ["ray", "job", "submit"] and "--working-dir" in argv[:sep]
    assert argv[sep + 1 : sep + 3] == ["cmpl-ray", "train"]
    args = build_parser().parse_args(argv[sep + 2 :])
    cfg = load_config(args.preset, args.config, args.overrides)  # every --set key exists and validates
    assert args.preset == "k400-1pct-r50"
    assert cfg.train.num_workers == 4 and cfg.optim.lr == pytest.approx(0.025) and cfg.train.epochs == 3
    assert cfg.data.root == "s3://bkt/k400" and cfg.run.storage_path == "s3://bkt/ray_results"
    assert cfg.data.labeled_list.startswith("s3://bkt/k400/splits/") and cfg.tracking.uri == "http://127.0.0.1:5000"
    assert cfg.data.decode_actors == 4 * 12


def test_submit_tune_builds_a_valid_command():
    from cmpl_ray.cli import build_parser
    from cmpl_ray.config import load_config

    argv = _dry_run("submit_tune.sh", GPUS_PER_TRIAL="2")
    sep = argv.index("--")
    assert argv[sep + 1 : sep + 3] == ["cmpl-ray", "tune"]
    args = build_parser().parse_args(argv[sep + 2 :])
    assert os.path.isfile(os.path.join(ROOT, args.space)) and args.storage == "s3://bkt/tune"
    cfg = load_config(args.preset, args.config, args.overrides)
    assert cfg.train.num_workers == 2 and cfg.optim.lr == pytest.approx(0.0125)
