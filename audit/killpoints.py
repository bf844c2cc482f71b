"""Named kill points for the crash-safety tests: ``AUDIT_KILL_AT=NAME`` (or ``NAME:K``, the K-th time it is
reached) makes the process kill itself with SIGKILL at ``checkpoint(NAME)``, as a power cut or the OOM killer
would; ``AUDIT_PAUSE_AT=NAME:SECONDS`` sleeps there instead (to hold a stage mid-way while another runs), and
``AUDIT_PAUSE_AT=NAME:@PATH`` writes ``PATH.here`` and holds until ``PATH`` exists (at most 5 minutes), so a test
can order two processes by events rather than by guessed durations. Unset (always, outside tests), a checkpoint
costs two dictionary lookups."""
from __future__ import annotations

import os
import signal

_hits: dict[str, int] = {}


def checkpoint(name: str) -> None:
    pause = os.environ.get("AUDIT_PAUSE_AT")
    if pause and pause.partition(":")[0] == name:
        _pause(pause.partition(":")[2])
    want = os.environ.get("AUDIT_KILL_AT")
    if not want:
        return
    target, _, count = want.partition(":")
    if target != name:
        return
    _hits[name] = _hits.get(name, 0) + 1
    if _hits[name] >= int(count or 1):
        os.kill(os.getpid(), signal.SIGKILL)


def _pause(arg: str) -> None:
    import time
    from pathlib import Path

    if not arg.startswith("@"):
        time.sleep(float(arg or 1))
        return
    release = Path(arg[1:])
    Path(f"{release}.here").touch()
    deadline = time.monotonic() + 300
    while not release.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
