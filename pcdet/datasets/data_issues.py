"""Counted warnings for bad frames met while loading samples (empty or non-finite point clouds, unknown classes, ...).

A dataset's counts live in one small shared-memory tensor with a row per process: the main process writes row 0,
data-loader worker ``k`` row ``k + 1``. Workers therefore never race, the counts survive the workers (which are
re-created every epoch) and the training loop reads the totals from the main process for its end-of-epoch summary.
Each process also logs a warning the 1st, 10th, 100th, ... time it meets a case, so a bad data set cannot flood
the log.
"""

from __future__ import annotations

import logging

import torch
import torch.distributed as dist
import torch.utils.data

# case → what happened to the frame (the warning text); the order fixes the tensor columns.
CASES: dict[str, str] = {
    "empty_point_cloud": "point cloud has no points",
    "non_finite_points": "NaN/inf points dropped",
    "no_points_in_range": "no point inside POINT_CLOUD_RANGE",
    "no_boxes": "no box of CLASS_NAMES left after augmentation and range filtering",
    "unknown_class": "objects of unknown classes dropped",
    "missing_image": "image file missing",
    "corrupt_point_cloud": "point-cloud file unreadable (SKIP_CORRUPT_FRAMES)",
    "missing_road_plane": "road plane file missing: gt_sampling keeps database heights",
}
# Worker k shares row 1 + k % (_ROWS - 1) with others only beyond this many workers (counts may then undercount).
_ROWS = 65


def _row() -> int:
    info = torch.utils.data.get_worker_info()
    return 0 if info is None else 1 + info.id % (_ROWS - 1)


class DataIssues:
    """Per-dataset counters of :data:`CASES`, shared between the main process and its loader workers."""

    def __init__(self) -> None:
        self.counts = torch.zeros(_ROWS, len(CASES), dtype=torch.int64).share_memory_()
        self._column = {case: i for i, case in enumerate(CASES)}

    def record(self, case: str, frame_id, detail: str = "", logger: logging.Logger | None = None) -> int:
        """Count one occurrence of ``case`` in ``frame_id``; returns this process's count so far."""
        row, col = _row(), self._column[case]
        self.counts[row, col] += 1
        count = int(self.counts[row, col])
        if _is_power_of_ten(count):
            where = "main process" if row == 0 else f"loader worker {row - 1}"
            text = f"Data issue '{case}' in frame {frame_id}: {CASES[case]}"
            text += f" ({detail})" if detail else ""
            text += f"; {count} time(s) in this {where} (logged at counts 1, 10, 100, ...)"
            (logger or logging.getLogger("pcdet")).warning(text)
        return count

    def totals(self) -> dict[str, int]:
        """Counts summed over all processes, by case (zeros included)."""
        summed = self.counts.sum(dim=0)
        return {case: int(summed[i]) for i, case in enumerate(CASES)}


def format_totals(totals: dict[str, int]) -> str:
    """``'no_boxes: 3, unknown_class: 1'`` for the non-zero cases, ``''`` when there are none."""
    return ", ".join(f"{case}: {n}" for case, n in totals.items() if n)


def log_data_issue_totals(
    dataset, logger: logging.Logger, header: str, since: dict[str, int] | None = None
) -> dict[str, int]:
    """Log ``header: <non-zero counts>`` for ``dataset`` (nothing when all are zero) and return the counts.

    ``since``: an earlier ``dataset.data_issues.totals()`` to subtract (one evaluation of a sweep). In a distributed
    run the counts are summed over the ranks with an all-reduce, so every rank must call this at the same point.
    """
    issues = getattr(dataset, "data_issues", None)
    if issues is None:
        return {}
    totals = issues.totals()
    if since:
        totals = {case: n - since.get(case, 0) for case, n in totals.items()}
    if dist.is_available() and dist.is_initialized():
        counts = torch.tensor(list(totals.values()), dtype=torch.int64)
        if dist.get_backend() == "nccl":
            counts = counts.cuda()
        dist.all_reduce(counts)
        totals = dict(zip(totals, counts.tolist(), strict=True))
    text = format_totals(totals)
    if text:
        logger.warning(f"{header}: {text}")
    return totals


def _is_power_of_ten(n: int) -> bool:
    while n >= 10 and n % 10 == 0:
        n //= 10
    return n == 1
