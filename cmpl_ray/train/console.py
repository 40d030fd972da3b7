"""What ``cmpl-ray train | demo | tune`` print: the project's own lines by default, Ray's only with --verbose.

Why: a 2-minute demo printed ~200 lines, mostly Ray's (placement-group cleaner retries, ``core_worker.cc`` E-level
lines, deprecation warnings, one result dict per epoch); users read "E" and "Failed" as failure and the
progress scrolled past. Quiet mode keeps Ray running as usual but sends what it says to ``<output dir>/ray.log``
(driver-side log records and the worker/actor lines Ray forwards to the driver), and shows:

* one progress bar per epoch on a terminal (tqdm: step, loss, mask rates, clips/s, ETA of the run), or on a
  pipe (CI, ``ray job logs``, a redirected file) a plain step line at most every ``CMPL_PROGRESS_SECONDS``
  (default 30) plus each epoch's last step;
* every line the workers ``say()`` (evaluations, skipped files, resumes) as it is;
* an end summary: final metrics, where the files are, the ``cmpl-ray ui`` command (the MLflow UI opened on the
  runs with their top-1 columns).

``--verbose`` (or ``CMPL_VERBOSE=1``, for ``ray job submit``) leaves Ray's output alone and prints every step
event as a plain line (a bar would be torn by Ray's interleaved lines). Nothing here imports Ray: the worker
pushes events to a :class:`ProgressBoard` actor (made remote by the driver) and a :class:`Poller` thread drains
it while ``trainer.fit()`` blocks; :func:`filter_forwarded` wraps Ray's log-forwarding handler.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterable
from typing import Any

VERBOSE_ENV = "CMPL_VERBOSE"
PERIOD_ENV = "CMPL_PROGRESS_SECONDS"
MARK = "[cmpl-ray"  # the project's lines ("[cmpl-ray] ...", "[cmpl-ray tune] ...") pass the quiet filter
LOG_NAME = "ray.log"
BAR = "{desc} {percentage:3.0f}%|{bar:16}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}]{postfix}"
_mode: dict[str, bool | None] = {"verbose": None}


def configure(verbose: bool = False) -> bool:
    """Set the console mode for this process (the CLI calls it); ``CMPL_VERBOSE=1`` forces verbose.

    Quiet mode also silences, from here on, Ray's deprecation warnings and MLflow's INFO lines in the driver."""
    v = bool(verbose) or os.environ.get(VERBOSE_ENV, "").strip().lower() in ("1", "true", "yes", "on")
    _mode["verbose"] = v
    if not v:
        quiet_warnings()
        os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")  # read when mlflow is imported (later, lazily)
        for h in logging.getLogger("mlflow").handlers:  # and in case it already was
            h.setLevel(logging.WARNING)
    return v


def quiet_warnings() -> None:
    """Ignore warnings raised inside Ray (e.g. Ray Data's own ``exclude_resources`` deprecation). Called again
    once Ray is imported: ``import ray`` puts its own RayDeprecationWarning filter in front of this one."""
    warnings.filterwarnings("ignore", module=r"ray(\.|$)")


def quiet() -> bool:
    """True when the CLI configured quiet mode (library calls that never configured keep Ray's defaults)."""
    return _mode["verbose"] is False


def verbose() -> bool:
    return bool(_mode["verbose"])


def interactive(stream: Any = None) -> bool:
    stream = stream if stream is not None else sys.stdout
    try:
        return bool(stream.isatty()) and os.environ.get("TERM", "") != "dumb"
    except (AttributeError, ValueError):
        return False


def _fmt_line(data: dict[str, Any], line: str) -> str:
    who = " ".join(str(x) for x in (data.get("actor_name") or data.get("task_name"), f"pid={data.get('pid')}") if x)
    return f"({who}) {line}"


def quiet_ray_logger(log_path: str | None) -> None:
    """Driver-side Ray log records (token-auth warning, "Started a local Ray instance", Tune's file notes) go to
    ``log_path`` instead of the terminal; ERROR and above still show. The handlers' level is raised, not the
    logger's, so handlers others attach below ``ray`` (the Tune driver's stop-signal watcher) still see WARNINGs."""
    ray_log = logging.getLogger("ray")
    for h in ray_log.handlers:
        if not isinstance(h, logging.FileHandler):
            h.setLevel(logging.ERROR)
    if log_path and not any(getattr(h, "baseFilename", None) == os.path.abspath(log_path) for h in ray_log.handlers):
        os.makedirs(os.path.dirname(os.path.abspath(log_path)), exist_ok=True)
        fh = logging.FileHandler(log_path)
        fh.setLevel(logging.INFO)
        fh.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s -- %(message)s"))
        ray_log.addHandler(fh)


class ForwardFilter:
    """Wraps Ray's "print worker logs" handler: batches keep only the project's lines; the rest is appended to
    ``log_path`` (or dropped when None). A batch is a dict with ``lines``, ``pid``, ``actor_name``/``task_name``."""

    def __init__(self, forward: Callable[[dict], None], log_path: str | None, mark: str = MARK):
        self.forward, self.log_path, self.mark = forward, log_path, mark
        self._file = None
        self._lock = threading.Lock()

    def __call__(self, data: dict[str, Any]) -> None:
        lines = list(data.get("lines") or [])
        keep = [ln for ln in lines if self.mark in ln]
        # the autoscaler's periodic status dump: Ray itself prints only its events, none matter on one machine
        rest = [] if data.get("pid") == "autoscaler" else [ln for ln in lines if self.mark not in ln]
        if rest and self.log_path:
            with self._lock:
                try:
                    if self._file is None:
                        self._file = open(self.log_path, "a", buffering=1)
                    self._file.write("".join(_fmt_line(data, ln) + "\n" for ln in rest))
                except OSError:
                    self.log_path = None  # a full or read-only disk never stops training
        if keep:
            self.forward({**data, "lines": keep})


def filter_forwarded(dispatcher: Any, log_path: str | None, name: str = "ray_print_logs") -> bool:
    """Put a :class:`ForwardFilter` around ``dispatcher``'s handler ``name`` (Ray's
    ``global_worker_stdstream_dispatcher``); False when that handler is not there (log_to_driver off)."""
    for n, fn in list(getattr(dispatcher, "handlers", [])):
        if n == name and not isinstance(fn, ForwardFilter):
            dispatcher.remove_handler(name)
            dispatcher.add_handler(name, ForwardFilter(fn, log_path))
            return True
    return False


# ---- progress events: built by rank 0, rendered by the driver -------------------------------------------------


def step_event(step: int, total: int, steps: int, epochs: int, stats: dict[str, float], eta_s: float) -> dict:
    """A step event (global ``step`` of ``total``; ``steps`` per epoch) with the loss, lr, mask rates, clips/s."""
    return {
        "kind": "step",
        "step": int(step),
        "total": int(total),
        "steps": int(steps),
        "epochs": int(epochs),
        "epoch": (int(step) - 1) // max(1, int(steps)) + 1,
        "loss": float(stats.get("loss", float("nan"))),
        "lr": float(stats.get("lr", float("nan"))),
        "clips_per_s": float(stats.get("clips_per_s", 0.0)),
        "mask": {k[len("mask_rate_") :]: float(v) for k, v in stats.items() if k.startswith("mask_rate_")},
        "eta_s": float(eta_s),
    }


def _mask(ev: dict) -> str:
    return ("mask " + " ".join(f"{k} {v:.2f}" for k, v in ev["mask"].items())) if ev.get("mask") else ""


def format_step(ev: dict) -> str:
    """The plain step line (pipes, --verbose, and workers without a board)."""
    parts = [
        f"[cmpl-ray] epoch {ev['epoch']}/{ev['epochs']} step {ev['step']}/{ev['total']}",
        f"loss {ev['loss']:.4f}",
        f"lr {ev['lr']:.4g}",
        _mask(ev),
        f"clips/s {ev['clips_per_s']:.1f}",
        f"eta {ev['eta_s'] / 60:.1f} min",
    ]
    return " ".join(p for p in parts if p)


class ProgressBoard:
    """Actor body (the driver wraps it in ``ray.remote``): rank 0 pushes events, the driver drains them."""

    def __init__(self):
        self._events: list[dict] = []

    def push(self, event: dict) -> bool:
        self._events.append(event)
        return True

    def drain(self) -> list[dict]:
        out, self._events = self._events, []
        return out


class Console:
    """Renders progress events on ``stream``: a tqdm bar per epoch when ``bar``, else plain lines."""

    def __init__(
        self,
        stream: Any = None,
        *,
        bar: bool | None = None,
        every_s: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.stream = stream if stream is not None else sys.stdout
        self.bar = (interactive(self.stream) and not verbose()) if bar is None else bar
        if every_s is None:
            every_s = 0.0 if verbose() else float(os.environ.get(PERIOD_ENV, "30") or 30)
        self.every_s, self.clock = every_s, clock
        self._bar, self._bar_epoch, self._last = None, None, -math.inf

    def write(self, text: str) -> None:
        if self._bar is not None:
            self._bar.write(text, file=self.stream)
        else:
            self.stream.write(text + "\n")
            self.stream.flush()

    def handle(self, ev: dict) -> None:
        if ev.get("kind") == "step":
            self._step(ev)
        else:
            self.write(str(ev.get("text", "")))

    def _step(self, ev: dict) -> None:
        in_epoch = ev["step"] - (ev["epoch"] - 1) * ev["steps"]
        last = in_epoch >= ev["steps"]
        if not self.bar:
            now = self.clock()
            if last or now - self._last >= self.every_s:
                self.write(format_step(ev))
                self._last = now
            return
        from tqdm import tqdm

        if self._bar is None or self._bar_epoch != ev["epoch"]:
            self.close()
            # a pty without a size (0 x 0) would hide the bar: tqdm draws none beyond the screen's height
            size = shutil.get_terminal_size((0, 0))
            sized = size.columns > 0 and size.lines > 0
            self._bar = tqdm(
                total=ev["steps"],
                desc=f"epoch {ev['epoch']}/{ev['epochs']}",
                unit="step",
                file=self.stream,
                dynamic_ncols=sized,
                nrows=None if sized else 24,
                leave=True,
                initial=in_epoch,
                bar_format=BAR,
            )  # initial: steps/s counted from here
            self._bar_epoch = ev["epoch"]
        post = [
            f"loss {ev['loss']:.3f}",
            _mask(ev),
            f"{ev['clips_per_s']:.1f} clips/s",
            f"run eta {ev['eta_s'] / 60:.1f} min",
        ]
        self._bar.set_postfix_str(" | ".join(p for p in post if p), refresh=False)
        if in_epoch > self._bar.n:
            self._bar.update(in_epoch - self._bar.n)
        else:
            self._bar.refresh()
        if last:
            self.close()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar, self._bar_epoch = None, None


class Poller:
    """Drains a board every ``period_s`` on a thread while the driver blocks in ``trainer.fit()``;
    :meth:`stop` drains once more so no line pushed before the run ended is lost."""

    def __init__(self, drain: Callable[[], Iterable[dict]], console: Console, period_s: float = 0.5):
        self.drain, self.console, self.period_s = drain, console, period_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cmpl-progress", daemon=True)
        self.failures = 0

    def start(self) -> Poller:
        self._thread.start()
        return self

    def _pump(self) -> bool:
        try:
            events = list(self.drain())
        except Exception:  # noqa: BLE001 - a board that went away must not stop the run
            self.failures += 1
            return False
        for ev in events:
            self.console.handle(ev)
        return True

    def _run(self) -> None:
        while not self._stop.wait(self.period_s):
            self._pump()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)
        for _ in range(3):  # the last drain carries the run's last lines: retried
            if self._pump():
                break
        self.console.close()


# ---- end summary ----------------------------------------------------------------------------------------------


def _pct(m: dict, key: str) -> str:
    v = m.get(key)
    return f"{float(v):.2f}%" if isinstance(v, (int, float)) and not math.isnan(float(v)) else "-"


def summary_lines(
    m: dict[str, Any], wall: float, out_dir: str, run_id: str | None, ui: str | None, ray_log: str | None = None
) -> list[str]:
    """The end summary. The first line is the one-line result ("done in ...: val top1 ...%", kept verbatim for
    logs and scripts that grep it); then a table of final metrics, the files, and how to browse the MLflow run."""
    nan = float("nan")
    lines = [
        f"[cmpl-ray] done in {wall / 60:.1f} min: val top1 {m.get('val_top1', nan):.2f}% "
        f"top5 {m.get('val_top5', nan):.2f}% mean-class {m.get('val_mean_class_acc', nan):.2f}%"
        + (f", aux top1 {m['aux_val_top1']:.2f}%" if "aux_val_top1" in m else "")
        + f"; skipped samples {m.get('skipped_samples', 0)}"
    ]
    aux = "aux_val_top1" in m
    rows = [
        ("", "primary", "aux" if aux else ""),
        ("val top-1", _pct(m, "val_top1"), _pct(m, "aux_val_top1") if aux else ""),
        ("val top-5", _pct(m, "val_top5"), _pct(m, "aux_val_top5") if aux else ""),
        ("val mean-class", _pct(m, "val_mean_class_acc"), _pct(m, "aux_val_mean_class_acc") if aux else ""),
        ("best val top-1", _pct(m, "val_top1_best"), ""),
    ]
    lines += [f"  {a:<16}{b:>9}  {c:>9}".rstrip() for a, b, c in rows]
    hist = m.get("history") or []
    ep = int(hist[-1].get("epoch", 0)) if hist else m.get("epochs", "?")
    lines.append(
        f"  {'epochs':<16}{ep!s:>9}   skipped samples {m.get('skipped_samples', 0)}, restarts {m.get('restarts', 0)}"
    )
    if m.get("files_read_by_pyav"):  # files decord cannot open (e.g. AV1), read by PyAV: slower, not lost
        lines.append(
            f"  decoders    decord read {m.get('files_read_by_decord', 0)} training videos, PyAV "
            f"{m['files_read_by_pyav']}"
        )
    if m.get("train_nodes") or m.get("decode_nodes"):
        lines.append(
            f"  nodes       trained on {' '.join(m.get('train_nodes') or ['?'])}; decoded on "
            f"{' '.join(m.get('decode_nodes') or ['?'])}"
        )
    lines.append(f"  results     {out_dir}  (metrics.json, config.yaml, per_class.csv, plots)")
    lines.append(f"  checkpoint  {m.get('best_checkpoint')}")
    if ray_log:
        lines.append(f"  Ray's log   {ray_log}  (--verbose prints it)")
    if run_id:
        lines.append(f"  MLflow run  {run_id}; browse with: {ui}")
    return lines
