"""KITTI object labels (label_2/*.txt): parsing, difficulty levels, and writing back.

Columns: type, truncated, occluded, alpha, bbox x1 y1 x2 y2, h w l, x y z (rectified camera, bottom centre), ry,
and an optional score (result files).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from .box_utils import boxes3d_to_corners3d_kitti_camera
from .cli import InputError

KITTI_CLASSES = ("Car", "Van", "Truck", "Pedestrian", "Person_sitting", "Cyclist", "Tram", "Misc", "DontCare")
# OpenPCDet's numeric ids (unlisted classes are -1).
CLASS_IDS = {"Car": 1, "Pedestrian": 2, "Cyclist": 3, "Van": 4}

# KITTI benchmark difficulty: (min 2D box height px, max occlusion level, max truncation), easy → hard.
DIFFICULTY_RULES = ((40.0, 0, 0.15), (25.0, 1, 0.30), (25.0, 2, 0.50))
LEVEL_NAMES = {0: "Easy", 1: "Moderate", 2: "Hard", -1: "UnKnown"}
_FLOAT32_MAX = float(np.finfo(np.float32).max)


class LabelError(InputError, ValueError):
    """A label line that cannot be a KITTI object: unknown class, wrong number of columns, a non-finite number, or a
    file that is not text."""


def difficulty_level(box2d_height: float, occlusion: int, truncation: float) -> int:
    """0 easy / 1 moderate / 2 hard / -1 when the object fails even the hard limits (KITTI's rules)."""
    for level, (min_height, max_occlusion, max_truncation) in enumerate(DIFFICULTY_RULES):
        if box2d_height >= min_height and occlusion <= max_occlusion and truncation <= max_truncation:
            return level
    return -1


class Object3d:
    """One labelled (or detected) object of a KITTI label/result line."""

    def __init__(self, line: str, source: str = "<string>", line_no: int = 0):
        fields = line.split()
        if len(fields) not in (15, 16):
            raise LabelError(f"{source}:{line_no}: expected 15 or 16 columns, got {len(fields)}: {line.strip()!r}")
        if fields[0] not in KITTI_CLASSES:
            raise LabelError(
                f"{source}:{line_no}: unknown class '{fields[0]}' (KITTI classes: {', '.join(KITTI_CLASSES)})"
            )
        try:
            values = [float(x) for x in fields[1:]]
        except ValueError as exc:
            raise LabelError(f"{source}:{line_no}: non-numeric column in {line.strip()!r}") from exc
        # NaN/inf (or beyond float32, which becomes inf in the arrays below) would poison targets and metrics.
        if not all(abs(v) <= _FLOAT32_MAX for v in values):
            raise LabelError(f"{source}:{line_no}: NaN, inf or out-of-range number in {line.strip()!r}")
        self.src = line
        self.cls_type = fields[0]
        self.cls_id = CLASS_IDS.get(self.cls_type, -1)
        self.truncation = values[0]
        self.occlusion = int(values[1])  # 0 visible, 1 partly, 2 largely occluded, 3 unknown
        self.alpha = values[2]
        self.box2d = np.array(values[3:7], dtype=np.float32)
        self.h, self.w, self.l = values[7], values[8], values[9]
        self.loc = np.array(values[10:13], dtype=np.float32)
        self.dis_to_cam = float(np.linalg.norm(self.loc))
        self.ry = values[13]
        self.score = values[14] if len(values) == 15 else -1.0
        # Difficulty follows the devkit: 2D height y2 - y1; DontCare regions have no difficulty.
        if self.cls_type == "DontCare":
            self.level = -1
        else:
            self.level = difficulty_level(float(self.box2d[3] - self.box2d[1]), self.occlusion, self.truncation)
        self.level_str = LEVEL_NAMES[self.level]

    def generate_corners3d(self) -> np.ndarray:
        """Corners ``(8, 3)`` in the rectified camera frame (bottom face first)."""
        box = np.array([[*self.loc, self.l, self.h, self.w, self.ry]], dtype=np.float32)
        return boxes3d_to_corners3d_kitti_camera(box)[0]

    def to_str(self) -> str:
        return (
            f"{self.cls_type} {self.truncation:.3f} {self.occlusion:d} {self.alpha:.3f} box2d: {self.box2d} "
            f"hwl: [{self.h:.3f} {self.w:.3f} {self.l:.3f}] pos: {self.loc} ry: {self.ry:.3f}"
        )

    def to_kitti_format(self) -> str:
        """The object as a KITTI label line (with the score column when it has a score)."""
        x1, y1, x2, y2 = (float(v) for v in self.box2d)
        x, y, z = (float(v) for v in self.loc)
        line = (
            f"{self.cls_type} {self.truncation:.2f} {self.occlusion:d} {self.alpha:.2f} "
            f"{x1:.2f} {y1:.2f} {x2:.2f} {y2:.2f} {self.h:.2f} {self.w:.2f} {self.l:.2f} "
            f"{x:.2f} {y:.2f} {z:.2f} {self.ry:.2f}"
        )
        return f"{line} {self.score:.4f}" if self.score != -1.0 else line


def get_objects_from_label(
    label_file: str | os.PathLike, skip_unknown: bool = False, logger: logging.Logger | None = None
) -> list[Object3d]:
    """Parse a label file. An unknown class raises :class:`LabelError` unless ``skip_unknown``: then those lines are
    dropped and one warning per file says how many (and which classes)."""
    label_file = Path(label_file)
    if not label_file.is_file():
        raise FileNotFoundError(f"label file not found: {label_file}")
    try:
        text = label_file.read_text()
    except UnicodeDecodeError as exc:
        raise LabelError(f"{label_file}: not a text file ({exc})") from exc
    objects, skipped = [], []
    for line_no, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        if skip_unknown and line.split()[0] not in KITTI_CLASSES:
            skipped.append(line.split()[0])
            continue
        objects.append(Object3d(line, source=str(label_file), line_no=line_no))
    if skipped:
        (logger or logging.getLogger("pcdet")).warning(
            f"{label_file}: skipped {len(skipped)} object(s) of unknown class {sorted(set(skipped))}"
        )
    return objects
