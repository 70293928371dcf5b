"""Removes a run's shared-memory point clouds once the process that owns them has died, however it died.

Started by :mod:`pcdet.datasets.shared_memory` as ``python shm_watchdog.py PID START_TIME SHM_DIR PREFIX`` in its own
session (so a signal to the training's process group does not take it along). It imports only the standard library:
it must start in milliseconds and hold no torch. The helpers here are also the library's liveness test.
"""

from __future__ import annotations

import os
import re
import sys
import time

# <prefix>_<10 hex digits of the data path>_<owner pid>-<owner start time>_<frame id>
SEGMENT_NAME = re.compile(r"^pcdet_[0-9a-f]{10}_(\d+)-(\d+)_")
POLL_SECONDS = 0.5


def process_start_time(pid: int) -> int | None:
    """Start time of ``pid`` in clock ticks since boot (``/proc/<pid>/stat`` field 22), None if there is no such
    process or it has exited (a zombie awaiting its parent). Together with the pid it names a process uniquely: a
    recycled pid has a later start time."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    # The command name (field 2) is parenthesised and may contain spaces: count fields after its closing bracket.
    fields = stat[stat.rindex(b")") + 2 :].split()
    if fields[0] in (b"Z", b"X"):  # field 3, the state: exited
        return None
    return int(fields[19])


def owner_alive(pid: int, start_time: int) -> bool:
    return process_start_time(pid) == start_time


def remove_segments(shm_dir: str, prefix: str) -> int:
    """Unlink every segment whose name starts with ``prefix``; returns how many."""
    removed = 0
    for name in os.listdir(shm_dir):
        if name.startswith(prefix):
            try:
                os.unlink(os.path.join(shm_dir, name))
                removed += 1
            except FileNotFoundError:  # the owner (or another sweep) removed it first
                pass
    return removed


def remove_stale_segments(shm_dir: str) -> int:
    """Unlink the segments of every pcdet run whose owner is no longer alive (e.g. its watchdog was killed too)."""
    removed = 0
    for name in os.listdir(shm_dir):
        match = SEGMENT_NAME.match(name)
        if match and not owner_alive(int(match.group(1)), int(match.group(2))):
            try:
                os.unlink(os.path.join(shm_dir, name))
                removed += 1
            except FileNotFoundError:
                pass
    return removed


def watch(pid: int, start_time: int, shm_dir: str, prefix: str) -> None:
    while owner_alive(pid, start_time):
        time.sleep(POLL_SECONDS)
    remove_segments(shm_dir, prefix)


if __name__ == "__main__":
    watch(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4])
