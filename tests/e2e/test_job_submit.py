"""The cluster workflow on one machine: `ray start --head` (loopback, own --temp-dir) + a Ray job that runs the
demo, submitted through the Jobs API with this checkout as the uploaded working dir (what
``ray job submit --working-dir .`` does on a cluster), then MLflow / metrics.json checked.

Other Ray clusters may run on the same machine: `ray stop` would kill them too, so the finalizer stops only the
processes this test started (the `ray start` process group, anything naming our temp dir, and their children).
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

import psutil
import pytest

pytestmark = pytest.mark.slow

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RAY = os.path.join(os.path.dirname(sys.executable), "ray")
EXCLUDES = [
    ".git",
    ".venv",
    ".whl",
    ".hypothesis",
    ".gpudata",
    ".pytest_cache",
    "outputs",
    "mlruns",
    "mlflow.db",
    "demo_data",
    "runs",
    "*.egg-info",
    "__pycache__",
]
LOOPBACK = {"127.0.0.1", "::1", "::ffff:127.0.0.1"}


def _free_ports(n: int) -> list[int]:
    socks, ports = [], []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return ports


def _our_processes(pgid: int, temp_dir: str) -> list[psutil.Process]:
    """Processes of the head we started: its process group, anything naming our temp dir, and their children."""
    found: dict[int, psutil.Process] = {}
    for p in psutil.process_iter(["pid", "cmdline"]):
        try:
            if os.getpgid(p.pid) == pgid or temp_dir in " ".join(p.info["cmdline"] or []):
                found[p.pid] = p
        except (psutil.Error, ProcessLookupError, PermissionError):
            continue
    for p in list(found.values()):
        try:
            for c in p.children(recursive=True):
                found.setdefault(c.pid, c)
        except psutil.Error:
            continue
    found.pop(os.getpid(), None)
    return list(found.values())


def _name(pid: int) -> str:
    try:
        return psutil.Process(pid).name()
    except psutil.Error:
        return "?"


def _stop(pgid: int, temp_dir: str) -> None:
    procs = _our_processes(pgid, temp_dir)
    for p in procs:
        try:
            p.send_signal(signal.SIGTERM)
        except psutil.Error:
            pass
    _, alive = psutil.wait_procs(procs, timeout=15)
    for p in alive:
        try:
            p.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(alive, timeout=10)


@contextlib.contextmanager
def _head(num_cpus: int, auth_env: dict[str, str]):
    """`ray start --head` on loopback with its own temp dir and free ports; stops only what it started."""
    temp_dir = tempfile.mkdtemp(prefix="rayt", dir="/tmp")  # short: Ray's unix socket paths must stay < 108 chars
    gcs, dash, client, agent = _free_ports(4)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(auth_env)
    cmd = [
        RAY,
        "start",
        "--head",
        f"--port={gcs}",
        "--node-ip-address=127.0.0.1",
        "--dashboard-host=127.0.0.1",
        f"--dashboard-port={dash}",
        "--include-dashboard=true",
        f"--num-cpus={num_cpus}",
        f"--temp-dir={temp_dir}",
        f"--ray-client-server-port={client}",
        f"--dashboard-agent-listen-port={agent}",
        "--disable-usage-stats",
    ]
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )  # own process group: the daemons it forks stay in it
    pgid = proc.pid
    try:
        out, _ = proc.communicate(timeout=180)
        assert proc.returncode == 0, f"ray start failed:\n{out}"
        print(f"[test] ray start --head: {time.perf_counter() - t0:.1f} s", flush=True)
        yield {"gcs": gcs, "dashboard": dash, "temp_dir": temp_dir, "pgid": pgid, "env": env}
    finally:
        _stop(pgid, temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def ray_head():
    with _head(2, {"RAY_AUTH_MODE": "disabled"}) as head:
        yield head


def _wait_for(client, job_id: str, timeout: float) -> str:
    from ray.job_submission import JobStatus

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = client.get_job_status(job_id)
        if status in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED):
            return status
        time.sleep(2)
    client.stop_job(job_id)
    return "TIMEOUT"


def test_demo_as_ray_job_logs_to_mlflow(ray_head, tmp_path):
    from mlflow import MlflowClient
    from ray.job_submission import JobSubmissionClient

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RAY_AUTH_MODE", "disabled")
        mp.delenv("RAY_ADDRESS", raising=False)
        client = JobSubmissionClient(f"http://127.0.0.1:{ray_head['dashboard']}")
        uri = f"sqlite:///{tmp_path}/mlflow.db"
        sets = {
            "train.epochs": 1,
            "train.steps_per_epoch": 2,
            "train.log_every": 1,
            "data.eval_clips": 1,
            "data.eval_crops": 1,
            "data.crop_size": 32,
            "data.train_short_side": "[32,40]",
            "data.test_short_side": 32,
            "train.batch_labeled": 4,
            "tracking.uri": uri,
            "run.output_dir": f"{tmp_path}/out",
            "run.storage_path": f"{tmp_path}/ray_results",
        }
        entrypoint = shlex.join(
            [
                sys.executable,
                "-m",
                "cmpl_ray",
                "demo",
                "--root",
                f"{tmp_path}/demo_data",
                "--classes",
                "4",
                "--per-class",
                "6",
                "--labels-per-class",
                "2",
            ]
            + [a for k, v in sets.items() for a in ("--set", f"{k}={v}")]
        )
        t0 = time.perf_counter()
        job_id = client.submit_job(
            entrypoint=entrypoint,
            runtime_env={"working_dir": ROOT, "excludes": EXCLUDES, "env_vars": {"RAY_AUTH_MODE": "disabled"}},
        )
        status = _wait_for(client, job_id, timeout=480)
        logs = client.get_job_logs(job_id)
        print(f"[test] job {job_id}: {status} in {time.perf_counter() - t0:.1f} s", flush=True)
    assert status == "SUCCEEDED", f"job {job_id} ended {status}; logs:\n{logs[-6000:]}"
    info = client.get_job_info(job_id)
    assert info.runtime_env.get("working_dir", "").startswith("gcs://")  # the checkout was uploaded, as on a cluster

    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert 0.0 <= metrics["val_top1"] <= 100.0 and metrics["epochs"] == 1 and metrics["restarts"] == 0
    mc = MlflowClient(uri)
    exp = mc.get_experiment_by_name("cmpl-ray-demo")
    assert exp is not None
    runs = mc.search_runs([exp.experiment_id], max_results=10)
    assert runs and any("val_top1" in r.data.metrics for r in runs)
    assert metrics["mlflow_run_id"] in {r.info.run_id for r in runs}


def test_dashboard_listens_on_loopback_only(ray_head):
    pids = {p.pid for p in _our_processes(ray_head["pgid"], ray_head["temp_dir"])}
    listening = [c for c in psutil.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN and c.pid in pids]
    dash = [c for c in listening if c.laddr.port == ray_head["dashboard"]]
    assert dash, f"nothing of ours listens on the dashboard port {ray_head['dashboard']}"
    assert {c.laddr.ip for c in dash} <= LOOPBACK, f"dashboard bound to {[c.laddr for c in dash]}"
    # the whole loopback head: report anything of ours that listens beyond loopback (GCS, raylet, ... by design
    # bind all interfaces on a real cluster; the dashboard / Jobs API must not)
    wide = sorted({(c.laddr.ip, c.laddr.port, _name(c.pid)) for c in listening if c.laddr.ip not in LOOPBACK})
    print(f"[test] our listeners beyond loopback: {wide}", flush=True)
    assert all(port != ray_head["dashboard"] for _, port, _ in wide)


def test_token_auth_as_configured_in_cluster_yaml(tmp_path):
    """cluster.yaml starts Ray with RAY_AUTH_MODE=token and copies the token file to every node; the submit
    scripts set RAY_AUTH_MODE=token on the client. With the token a job runs (its driver connects too); without
    it the Jobs API refuses. Clients run as subprocesses: Ray caches the auth mode per process."""
    import secrets

    token = tmp_path / "auth_token"
    token.write_text(secrets.token_hex(32))
    auth = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token)}
    with _head(1, auth) as head:
        url = f"http://127.0.0.1:{head['dashboard']}"
        base = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
        refused = subprocess.run(
            [RAY, "job", "list", "--address", url],
            capture_output=True,
            text=True,
            timeout=120,
            env={**base, "RAY_AUTH_MODE": "disabled"},
        )
        ok = subprocess.run(
            [
                RAY,
                "job",
                "submit",
                "--address",
                url,
                "--",
                sys.executable,
                "-c",
                "import ray; ray.init(); print('nodes', len(ray.nodes()))",
            ],
            capture_output=True,
            text=True,
            timeout=300,
            env={**base, **auth},
        )
    assert refused.returncode != 0 and "Unauthorized" in refused.stdout + refused.stderr, refused.stderr[-2000:]
    out = ok.stdout + ok.stderr
    assert ok.returncode == 0 and "nodes 1" in out and "succeeded" in out, out[-3000:]
