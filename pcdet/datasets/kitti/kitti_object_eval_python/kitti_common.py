"""Reading KITTI label / result files into the annotation dicts the evaluator (and OpenPCDet) use.

Line format (object development kit): ``type truncated occluded alpha x1 y1 x2 y2 h w l x y z ry [score]`` - 15 columns
for labels, 16 for results. In the returned dict ``dimensions`` are in OpenPCDet's (l, h, w) order.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

ANNO_KEYS = ("name", "truncated", "occluded", "alpha", "bbox", "dimensions", "location", "rotation_y", "score")


def empty_anno() -> dict[str, np.ndarray]:
    """An annotation dict with no objects (shapes as for a non-empty one)."""
    return {
        "name": np.zeros(0, dtype="<U10"),
        "truncated": np.zeros(0),
        "occluded": np.zeros(0),
        "alpha": np.zeros(0),
        "bbox": np.zeros((0, 4)),
        "dimensions": np.zeros((0, 3)),
        "location": np.zeros((0, 3)),
        "rotation_y": np.zeros(0),
        "score": np.zeros(0),
        "index": np.zeros(0, dtype=np.int64),
    }


def get_label_anno(label_path: str | os.PathLike, num_columns: int | Sequence[int] = (15, 16)) -> dict[str, np.ndarray]:
    """Parse one label or result file.

    ``num_columns``: accepted column counts (labels have 15, results 16 with the score). Blank lines are skipped.
    Raises ``ValueError`` naming the file and line for a wrong column count, an unparsable number, or a NaN/inf value.
    ``score`` is the 16th column, or 0 when absent.
    """
    allowed = (num_columns,) if isinstance(num_columns, int) else tuple(num_columns)
    path = Path(label_path)
    names: list[str] = []
    rows: list[list[str]] = []
    linenos: list[int] = []
    with open(path) as fh:
        text = fh.read()
    for lineno, line in enumerate(text.splitlines(), start=1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) not in allowed:
            expected = " or ".join(map(str, allowed))
            raise ValueError(f"{path}:{lineno}: expected {expected} columns, got {len(parts)}: {line.strip()!r}")
        names.append(parts[0])
        rows.append(parts[1:] if len(parts) == 16 else [*parts[1:], "0"])
        linenos.append(lineno)
    if not names:
        return empty_anno()
    try:
        v = np.array(rows, dtype=np.float64)  # numpy parses the strings itself
    except ValueError:
        for row, lineno in zip(rows, linenos):
            try:
                [float(x) for x in row]
            except ValueError as err:
                raise ValueError(f"{path}:{lineno}: not a number ({err})") from None
        raise
    finite = np.isfinite(v).all(axis=1)
    if not finite.all():
        bad = int(np.argmin(finite))
        raise ValueError(f"{path}:{linenos[bad]}: NaN or inf value in {' '.join([names[bad], *rows[bad][:14]])!r}")
    name = np.array(names)
    not_dc = name != "DontCare"
    index = np.full(len(name), -1, dtype=np.int64)
    index[not_dc] = np.arange(int(not_dc.sum()))
    return {
        "name": name,
        "truncated": v[:, 0],
        "occluded": v[:, 1].astype(np.int64),
        "alpha": v[:, 2],
        "bbox": v[:, 3:7],
        # file order is h, w, l; OpenPCDet keeps (l, h, w)
        "dimensions": v[:, [9, 7, 8]],
        "location": v[:, 10:13],
        "rotation_y": v[:, 13],
        "score": v[:, 14],
        "index": index,
    }


def _frame_file(folder: Path, image_id: int | str) -> Path:
    if isinstance(image_id, (int, np.integer)):
        return folder / f"{int(image_id):06d}.txt"
    image_id = str(image_id)
    return folder / (image_id if image_id.endswith(".txt") else f"{image_id}.txt")


def get_label_annos(
    label_folder: str | os.PathLike,
    image_ids: Sequence[int | str] | None = None,
    num_columns: int | Sequence[int] = (15, 16),
) -> list[dict[str, np.ndarray]]:
    """Annotations of ``label_folder``: every ``*.txt`` (sorted) when ``image_ids`` is None, else the given frames
    (ints -> ``%06d.txt``, strings -> ``<id>.txt``)."""
    folder = Path(label_folder)
    if image_ids is None:
        files = [folder / n for n in sorted(os.listdir(folder)) if n.endswith(".txt")]
    else:
        files = [_frame_file(folder, i) for i in image_ids]
    return [get_label_anno(f, num_columns) for f in files]


def frame_ids_from_folder(folder: str | os.PathLike) -> list[str]:
    """Frame ids (file stems) of the ``*.txt`` files in ``folder``, sorted."""
    return sorted(n[:-4] for n in os.listdir(folder) if n.endswith(".txt"))
