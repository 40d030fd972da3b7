"""How many times a run's worker group restarted: exact, whether or not a checkpoint existed yet.

Ray Train restarts a failed worker group from the last checkpoint (``run.max_failures``), and a re-run of the
same command resumes a run whose driver died. Both turn a crash into a slow success unless they are counted.
A counter in the checkpoint alone misses a crash before the first checkpoint, so the driver owns an
:class:`AttemptCounter` actor that rank 0 asks once per worker-group start; :func:`restarts` combines it with
what the restored checkpoint recorded.
"""

from __future__ import annotations

import uuid
from typing import Any

from ..placement import start_on_driver_node


class AttemptCounter:
    """One per driver (a 0-CPU actor it owns): ``start()`` returns (driver session id, 1-based attempt)."""

    def __init__(self) -> None:
        self.session = uuid.uuid4().hex
        self.attempts = 0

    def start(self) -> tuple[str, int]:
        self.attempts += 1
        return self.session, self.attempts


def restarts(session: str, attempt: int, extra: dict[str, Any] | None, from_run_checkpoint: bool) -> int:
    """Restarts so far, for worker-group start ``attempt`` of driver ``session``.

    ``extra``: the restored checkpoint's ``extra`` (None: no checkpoint); it records ``restarts``, ``session``
    and ``attempt`` as of its save. ``from_run_checkpoint``: it is this run's own checkpoint (Ray's restore),
    not a user's ``run.resume`` warm start, which is no fault.
    - no checkpoint: every earlier start of this driver crashed: ``attempt - 1``;
    - saved by this driver at start m: the checkpoint's count plus the starts since: ``+ attempt - m``;
    - saved by an earlier driver (it died; the same command resumed): ``+ 1`` for that, ``+ attempt - 1``.
    """
    if extra is None:
        return attempt - 1
    done = int(extra.get("restarts", 0))
    if extra.get("session") == session:
        return done + attempt - int(extra.get("attempt", 1))
    return done + (1 if from_run_checkpoint else 0) + attempt - 1


def start_counter():
    """A 0-CPU :class:`AttemptCounter` on the caller's node, owned by it (the driver; it ends with it)."""
    return start_on_driver_node(AttemptCounter)
