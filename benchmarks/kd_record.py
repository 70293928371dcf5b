"""The benchmark's results record: each finished (run, seed) of a table, kept in a JSON file beside its page, so that
the table outlives the machine that trained it.

Checkpoints and stage books live under output/, which belongs to one machine; when the machine is gone, so are they.
The record (``docs/<PAGE>.results.json``, committed with the page) keeps what the table needs of every finished
evaluation: metrics, latency, parameter count, checkpoint hashes, and the code that produced it. It files them under
a key of the run's path-free inputs: resolved configs, data identity, schedule, seed, and the teacher's key.
A later invocation, on this machine or another, takes a matching entry as done instead of training again, so one
command completes a table over several machines. A KD run that still has to train needs its teacher's checkpoint;
the teacher then trains again, and each entry keeps the teacher hash its student saw.
"""

from __future__ import annotations

import datetime
import json
import platform
import threading
from pathlib import Path

from pcdet.utils.checkpoint_io import atomic_write_bytes


def record_path(report: Path) -> Path:
    """The record that feeds ``report``: the page's name with ``.results.json`` (one record per page, so the dev and
    test tables never share entries)."""
    return report.with_suffix(".results.json")


def entry_of(result: dict, key: str, code: str, teacher_sha256: str | None) -> dict:
    """What the record keeps of a finished job's result (no machine paths)."""
    summary = result["summary"]
    return {
        "key": key,
        "summary": {"latency_ms": summary.get("latency_ms"), "metrics": summary["metrics"]},
        "params": result["params"],
        "ckpt_sha256": result["ckpt_sha256"],
        "teacher_sha256": teacher_sha256,
        "code": code,
        "host": platform.node(),
        "finished": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }


class ResultsRecord:
    """The entries of one page, by job name (``<run>/seed<s>``). Thread-safe; every write is atomic."""

    def __init__(self, path: Path, fresh: bool = False) -> None:
        self.path = path
        self.fresh = fresh  # ignore the entries when reading, keep them when writing (a fresh run redoes, not erases)
        self.entries: dict[str, dict] = {}
        if path.exists():
            try:
                self.entries = json.loads(path.read_text())
            except json.JSONDecodeError as err:
                raise SystemExit(f"error: results record {path} is not valid JSON ({err}); fix or remove it") from err
        self._lock = threading.Lock()

    def get(self, job: str, key: str) -> dict | None:
        """The entry of ``job`` if it was recorded with these inputs, else None."""
        entry = None if self.fresh else self.entries.get(job)
        return entry if entry is not None and entry.get("key") == key else None

    def put(self, job: str, entry: dict) -> None:
        with self._lock:
            self.entries[job] = entry
            text = json.dumps(dict(sorted(self.entries.items())), indent=1) + "\n"
            atomic_write_bytes(text.encode(), self.path)
