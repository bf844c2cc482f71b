"""Named kill points for the crash-safety tests: ``AUDIT_KILL_AT=NAME`` (or ``NAME:K``, the K-th time it is
reached) makes the process kill itself with SIGKILL at ``checkpoint(NAME)``, as a power cut or the OOM killer
would; ``AUDIT_PAUSE_AT=NAME:SECONDS`` sleeps there instead (to hold a stage mid-way while another runs).
Unset (always, outside tests), a checkpoint costs two dictionary lookups."""
from __future__ import annotations

import os
import signal

_hits: dict[str, int] = {}


def checkpoint(name: str) -> None:
    pause = os.environ.get("AUDIT_PAUSE_AT")
    if pause and pause.partition(":")[0] == name:
        import time

        time.sleep(float(pause.partition(":")[2] or 1))
    want = os.environ.get("AUDIT_KILL_AT")
    if not want:
        return
    target, _, count = want.partition(":")
    if target != name:
        return
    _hits[name] = _hits.get(name, 0) + 1
    if _hits[name] >= int(count or 1):
        os.kill(os.getpid(), signal.SIGKILL)
