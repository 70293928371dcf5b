"""Training point clouds in shared memory: ``DATA_CONFIG.USE_SHARED_MEMORY`` (OpenPCDet's option), with SharedArray.

One process per machine (the lowest rank on the host, or the only process) copies the training frames' ``.bin``
points into ``/dev/shm`` once; every rank and data-loader worker on that machine then maps them instead of reading
the files. ``SHARED_MEMORY_FILE_LIMIT`` caps how many frames are copied (the rest are read from disk).

Segment names are ``pcdet_<hash of the data path>_<owner pid>-<owner start time>_<frame id>``. The copies go away
when the owner exits (``atexit``), and also when it is killed: a watchdog process (:mod:`.shm_watchdog`, in its own
session) polls the owner every 0.5 s and removes the run's segments once it is gone; and every new owner first
removes the segments of runs whose owner is no longer alive (in case the watchdog was killed as well).
"""

from __future__ import annotations

import atexit
import hashlib
import logging
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch.distributed as dist

from . import shm_watchdog

SHM_DIR = Path("/dev/shm")
INSTALL_HINT = "pip install SharedArray==3.2.4 (or: pip install -e .[shm])"


def import_shared_array():
    try:
        import SharedArray
    except ImportError as exc:
        raise ImportError(
            f"DATA_CONFIG.USE_SHARED_MEMORY needs the optional SharedArray package, which is not installed: "
            f"{INSTALL_HINT}; or set USE_SHARED_MEMORY: False"
        ) from exc
    return SharedArray


def segment_prefix(data_path: os.PathLike | str, pid: int, start_time: int) -> str:
    digest = hashlib.sha1(str(Path(data_path).resolve()).encode()).hexdigest()[:10]
    return f"pcdet_{digest}_{pid}-{start_time}_"


def _owner_of_this_machine() -> tuple[int, int, bool]:
    """``(pid, start time, is this process)`` of the process that holds this machine's copy: the lowest rank on this
    host when torch.distributed is initialised, else this process."""
    me = (os.getpid(), shm_watchdog.process_start_time(os.getpid()))
    if not (dist.is_available() and dist.is_initialized()):
        return me[0], me[1], True
    everyone: list = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, (socket.gethostname(), *me))
    owner = next(entry for entry in everyone if entry[0] == socket.gethostname())
    return owner[1], owner[2], (owner[1], owner[2]) == me


class SharedPointClouds:
    """Frame id → points ``(N, C)`` float32 in shared memory; picklable (loader workers map the segments anew)."""

    def __init__(
        self,
        data_path: os.PathLike | str,
        frame_ids: Sequence[str],
        read_points: Callable[[str], np.ndarray],
        frame_file: Callable[[str], Path],
        limit: int | None = None,
        logger: logging.Logger | None = None,
    ):
        import_shared_array()  # fail before any work when the package is missing
        logger = logger or logging.getLogger("pcdet")
        if not SHM_DIR.is_dir():
            raise RuntimeError(f"DATA_CONFIG.USE_SHARED_MEMORY: {SHM_DIR} does not exist (Linux only)")
        pid, start_time, is_owner = _owner_of_this_machine()
        # Only this very process may remove the copies: forked loader workers inherit the object (and atexit).
        self._owner_pid = os.getpid() if is_owner else None
        self.prefix = segment_prefix(data_path, pid, start_time)
        self._watchdog: subprocess.Popen | None = None
        self._attached: dict[str, np.ndarray] = {}
        if is_owner:
            stale = shm_watchdog.remove_stale_segments(str(SHM_DIR))
            if stale:
                logger.info(f"Removed {stale} shared-memory point clouds left by runs that no longer exist")
            self._watchdog = subprocess.Popen(
                [sys.executable, shm_watchdog.__file__, str(pid), str(start_time), str(SHM_DIR), self.prefix],
                start_new_session=True,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            atexit.register(self.close)
            self._copy(list(frame_ids)[:limit], read_points, frame_file, logger)
        if dist.is_available() and dist.is_initialized():
            dist.barrier()  # the other ranks of this machine wait for the copy
        self.frames = frozenset(n[len(self.prefix) :] for n in os.listdir(SHM_DIR) if n.startswith(self.prefix))

    def _copy(self, frame_ids, read_points, frame_file, logger) -> None:
        needed = sum(frame_file(f).stat().st_size for f in frame_ids if frame_file(f).is_file())
        free = shutil.disk_usage(SHM_DIR).free
        if needed > 0.9 * free:
            self.close()
            raise RuntimeError(
                f"DATA_CONFIG.USE_SHARED_MEMORY: {len(frame_ids)} frames need {needed / 2**30:.2f} GiB but {SHM_DIR} "
                f"has {free / 2**30:.2f} GiB free; lower DATA_CONFIG.SHARED_MEMORY_FILE_LIMIT"
            )
        shared_array = import_shared_array()
        copied = 0
        for frame_id in frame_ids:
            try:
                points = read_points(frame_id)
            except (OSError, ValueError):  # missing / corrupt: left to the normal read path, which reports it
                continue
            try:
                segment = shared_array.create(f"shm://{self.prefix}{frame_id}", points.shape, dtype=points.dtype)
            except FileExistsError:  # a second training set of this run on the same data: already shared
                continue
            segment[...] = points
            copied += 1
        logger.info(f"Copied {copied} training point clouds ({needed / 2**20:.0f} MiB) to {SHM_DIR} ({self.prefix}*)")

    def points(self, frame_id: str) -> np.ndarray | None:
        """A private copy of the frame's points (augmentation works in place), or None if it is not shared (or no
        longer: the owner has closed), in which case the caller reads the file."""
        if frame_id not in self.frames:
            return None
        segment = self._attached.get(frame_id)
        if segment is None:
            try:
                segment = import_shared_array().attach(f"shm://{self.prefix}{frame_id}", ro=True)
            except FileNotFoundError:
                return None
            self._attached[frame_id] = segment
        return np.array(segment)

    def close(self) -> None:
        """Owner: remove this run's segments and stop the watchdog. Mappings already made stay valid."""
        if self._owner_pid != os.getpid():
            return
        shm_watchdog.remove_segments(str(SHM_DIR), self.prefix)
        if self._watchdog is not None:
            self._watchdog.terminate()
            self._watchdog.wait()
            self._watchdog = None
        atexit.unregister(self.close)

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state.update(_attached={}, _watchdog=None)  # mappings and the watchdog handle stay with their process
        return state
