"""The console contract's pieces, without starting Ray (cmpl_ray/train/console.py; issue 17).

Plain step lines at most every N seconds plus each epoch's last step, worker lines always, a tqdm bar per epoch on
a terminal, Ray's forwarded lines split into "ours to the terminal, the rest to ray.log", the end summary, and
the two Ray internals the quiet mode leans on (the log-forwarding dispatcher and Train V2's default callbacks),
checked against the installed Ray so an upgrade that moves them fails here, not silently on a user's terminal.
"""

import io
import logging

from cmpl_ray.train import console
from cmpl_ray.train.console import Console, ForwardFilter, Poller, ProgressBoard, format_step, step_event

STATS = {"loss": 1.23456, "lr": 0.05, "mask_rate_f": 0.25, "mask_rate_a": 0.5, "clips_per_s": 12.34, "pl_acc_f": 1.0}


def _ev(step, total=6, steps=3, epochs=2, eta=90.0):
    return step_event(step, total, steps, epochs, STATS, eta)


def test_step_event_and_plain_line():
    ev = _ev(4)
    assert ev["epoch"] == 2 and ev["mask"] == {"f": 0.25, "a": 0.5}
    line = format_step(ev)
    assert line == "[cmpl-ray] epoch 2/2 step 4/6 loss 1.2346 lr 0.05 mask f 0.25 a 0.50 clips/s 12.3 eta 1.5 min"
    no_mask = format_step(step_event(1, 6, 3, 2, {"loss": 1.0, "lr": 0.1}, 0))
    assert "mask" not in no_mask and "  " not in no_mask


def test_plain_mode_is_periodic_with_every_epoch_end_and_every_worker_line():
    now = [0.0]
    out = io.StringIO()
    c = Console(out, bar=False, every_s=30, clock=lambda: now[0])
    for step, t in [(1, 0), (2, 10), (3, 20), (4, 25), (5, 60), (6, 70)]:
        now[0] = t
        c.handle(_ev(step))
    c.handle({"kind": "line", "text": "[cmpl-ray] epoch 2: val top1 50.00"})
    steps = [ln.split(" step ")[1].split()[0] for ln in out.getvalue().splitlines() if " step " in ln]
    # first event, epoch 1's last step, then >= 30 s later, and epoch 2's last step
    assert steps == ["1/6", "3/6", "5/6", "6/6"]
    assert out.getvalue().endswith("[cmpl-ray] epoch 2: val top1 50.00\n")


def test_bar_mode_draws_one_bar_per_epoch_and_keeps_lines():
    out = io.StringIO()
    c = Console(out, bar=True)
    for step in range(1, 7):
        c.handle(_ev(step))
        if step == 3:
            c.handle({"kind": "line", "text": "[cmpl-ray] epoch 1: val top1 10.00"})
    c.close()
    text = out.getvalue()
    assert "epoch 1/2" in text and "epoch 2/2" in text and "3/3" in text
    assert "loss 1.235" in text and "mask f 0.25 a 0.50" in text and "run eta 1.5 min" in text
    assert "[cmpl-ray] epoch 1: val top1 10.00\n" in text


def test_verbose_prints_every_step_as_a_line(monkeypatch):
    monkeypatch.setitem(console._mode, "verbose", True)
    out = io.StringIO()
    c = Console(out)
    assert not c.bar and c.every_s == 0
    for step in range(1, 4):
        c.handle(_ev(step))
    assert out.getvalue().count("[cmpl-ray] epoch 1/2 step") == 3


def test_poller_drains_until_stopped_and_survives_a_failing_board():
    board, out = ProgressBoard(), io.StringIO()
    calls = {"n": 0}

    def drain():
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("board restarting")
        return board.drain()

    p = Poller(drain, Console(out, bar=False, every_s=0), period_s=0.01).start()
    for step in range(1, 4):
        board.push(_ev(step))
    board.push({"kind": "line", "text": "[cmpl-ray] last words"})
    p.stop()  # drains what is left
    assert out.getvalue().count(" step ") == 3 and out.getvalue().endswith("[cmpl-ray] last words\n")
    assert p.failures >= 1 and board.drain() == []


def test_forward_filter_keeps_project_lines_and_files_the_rest(tmp_path):
    got = []
    log = tmp_path / "ray.log"
    f = ForwardFilter(got.append, str(log))
    f(
        {
            "pid": 7,
            "actor_name": "RayTrainWorker",
            "is_err": False,
            "lines": ["Moving model to device: cpu", "[cmpl-ray] epoch 1/2 step 1/6 loss 1.0"],
        }
    )
    f({"pid": 8, "actor_name": "PlacementGroupCleaner", "lines": ["Failed to query Ray Train Controller"]})
    f({"pid": "autoscaler", "lines": ["======== Autoscaler status ========"]})
    f({"pid": 9, "task_name": "trial_fn", "lines": ["[cmpl-ray tune] best val_top1 1.00"]})
    assert [d["lines"] for d in got] == [
        ["[cmpl-ray] epoch 1/2 step 1/6 loss 1.0"],
        ["[cmpl-ray tune] best val_top1 1.00"],
    ]
    assert got[0]["actor_name"] == "RayTrainWorker"  # Ray's own prefix is still printed for our lines
    assert log.read_text().splitlines() == [
        "(RayTrainWorker pid=7) Moving model to device: cpu",
        "(PlacementGroupCleaner pid=8) Failed to query Ray Train Controller",
    ]


def test_filter_wraps_rays_real_forwarding_handler(tmp_path):
    """Ray's (private) dispatcher of forwarded worker output: the quiet mode wraps its handler by name."""
    from ray._private.ray_logging import WorkerStandardStreamDispatcher

    seen = []
    d = WorkerStandardStreamDispatcher()
    d.add_handler("ray_print_logs", seen.append)
    assert console.filter_forwarded(d, str(tmp_path / "ray.log"))
    assert not console.filter_forwarded(d, None)  # wrapped once only
    d.emit({"pid": 1, "lines": ["noise", "[cmpl-ray] ours"]})
    assert seen == [{"pid": 1, "lines": ["[cmpl-ray] ours"]}] and "noise" in (tmp_path / "ray.log").read_text()
    assert not console.filter_forwarded(WorkerStandardStreamDispatcher(), None)  # log_to_driver off: nothing to wrap


def test_trainer_without_state_api_drops_only_the_placement_group_cleaner(monkeypatch):
    """The cause of the "Failed to query Ray Train Controller" loop: without the dashboard the cleaner can only
    fail; the trainer this driver builds then leaves it out, and nothing else."""
    from ray.train import ScalingConfig
    from ray.train.torch import TorchTrainer

    from cmpl_ray.train import launch

    def names(cls):
        return [
            type(c).__name__
            for c in cls(lambda: None, scaling_config=ScalingConfig(num_workers=1))._create_default_callbacks()
        ]

    monkeypatch.setitem(launch._STATE_API, "served", None)  # connected to a cluster: Ray's defaults
    assert launch._trainer_class() is TorchTrainer
    default = names(TorchTrainer)
    assert "PlacementGroupCleanerCallback" in default
    monkeypatch.setitem(launch._STATE_API, "served", False)
    assert names(launch._trainer_class()) == [n for n in default if n != "PlacementGroupCleanerCallback"]


def test_summary_has_headline_metrics_table_files_and_mlflow_command():
    m = {
        "val_top1": 37.5,
        "val_top5": 80.0,
        "val_mean_class_acc": 36.0,
        "aux_val_top1": 45.8,
        "aux_val_top5": 90.0,
        "aux_val_mean_class_acc": 44.0,
        "val_top1_best": 40.0,
        "skipped_samples": 2,
        "restarts": 1,
        "best_checkpoint": "/r/ckpt_3",
        "history": [{"epoch": 8.0}],
    }
    lines = console.summary_lines(m, 293.0, "/o", "abc", "cmpl-ray ui --store sqlite:///m.db", "/o/ray.log")
    assert lines[0] == (
        "[cmpl-ray] done in 4.9 min: val top1 37.50% top5 80.00% mean-class 36.00%, aux top1 45.80%; skipped samples 2"
    )
    text = "\n".join(lines)
    for part in (
        "val top-1          37.50%     45.80%",
        "best val top-1     40.00%",
        "restarts 1",
        "/o  (metrics.json",
        "checkpoint  /r/ckpt_3",
        "/o/ray.log",
        "MLflow run  abc; browse with: cmpl-ray ui --store sqlite:///m.db",
    ):
        assert part in text, part
    sup = console.summary_lines({"val_top1": 1.0}, 60, "/o", None, None)
    assert "aux" not in "\n".join(sup) and "MLflow" not in "\n".join(sup) and "Ray's log" not in "\n".join(sup)


def test_quiet_mode_sends_rays_driver_records_to_the_file(tmp_path, monkeypatch):
    ray_log = logging.getLogger("ray")
    stream = logging.StreamHandler(io.StringIO())
    monkeypatch.setattr(ray_log, "handlers", [stream])
    monkeypatch.setattr(ray_log, "level", logging.INFO)
    child_seen = []

    class Watch(logging.Handler):  # like the Tune driver's stop-signal watcher on ray.tune.tune
        def emit(self, record):
            child_seen.append(record.getMessage())

    watch = Watch()
    logging.getLogger("ray.tune.tune").addHandler(watch)
    try:
        console.quiet_ray_logger(str(tmp_path / "run" / "ray.log"))
        console.quiet_ray_logger(str(tmp_path / "run" / "ray.log"))  # idempotent: one file handler
        logging.getLogger("ray.somewhere").warning("Token authentication is enabled for this Ray cluster")
        logging.getLogger("ray.tune.tune").warning("Stop signal received")
        logging.getLogger("ray.somewhere").error("a real error")
    finally:
        logging.getLogger("ray.tune.tune").removeHandler(watch)
        for h in ray_log.handlers:
            h.close()
    assert stream.stream.getvalue() == "a real error\n"
    text = (tmp_path / "run" / "ray.log").read_text()
    assert text.count("Token authentication") == 1 and "Stop signal" in text and "a real error" in text
    assert child_seen == ["Stop signal received"]


def test_cli_verbose_flag_and_env(monkeypatch):
    from cmpl_ray.cli import build_parser

    p = build_parser()
    for cmd in (["train", "--preset", "demo"], ["demo"], ["tune", "space.yaml"]):
        assert p.parse_args(cmd + ["-v"]).verbose and not p.parse_args(cmd).verbose
    monkeypatch.setitem(console._mode, "verbose", None)
    monkeypatch.setenv("MLFLOW_LOGGING_LEVEL", "INFO")  # configure() sets it when unset: undone after the test
    monkeypatch.setenv(console.VERBOSE_ENV, "1")
    assert console.configure(False) and console.verbose() and not console.quiet()
    monkeypatch.setenv(console.VERBOSE_ENV, "0")
    assert not console.configure(False) and console.quiet()
