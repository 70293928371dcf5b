"""Command line: evaluate a folder of KITTI result files against a folder of labels.

    python -m pcdet.datasets.kitti.kitti_object_eval_python.evaluate --label_path DIR --result_path DIR \\
        [--label_split_file F] [--current_class 0,1,2] [--metric R40|R11|both] [--coco] [--score_thresh S]

Result files must have the 16 columns of the KITTI result format (a wrong column count or a NaN/inf value is an error
naming the file and line); a frame without a result file counts as a frame without detections (one warning).
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from . import kitti_common as kc
from .eval import evaluate as _evaluate
from .eval import format_results, get_coco_eval_result, resolve_classes


def _read_split(path: str | os.PathLike) -> list[str]:
    with open(path) as fh:
        return [line.strip() for line in fh if line.strip()]


def _filter_score(anno: dict, score_thresh: float) -> dict:
    keep = anno["score"] >= score_thresh
    return {k: (v[keep] if isinstance(v, np.ndarray) and len(v) == len(keep) else v) for k, v in anno.items()}


def load_results(
    result_path: str | os.PathLike, image_ids: Sequence[str], score_thresh: float | None = None
) -> tuple[list[dict], list[str]]:
    """Detections for ``image_ids`` (16-column files); a missing file gives an empty frame. Returns (annos, missing)."""
    folder = Path(result_path)
    annos, missing = [], []
    for image_id in image_ids:
        path = folder / f"{image_id}.txt"
        if not path.is_file():
            missing.append(image_id)
            annos.append(kc.empty_anno())
            continue
        anno = kc.get_label_anno(path, num_columns=16)
        annos.append(anno if score_thresh is None else _filter_score(anno, score_thresh))
    return annos, missing


def evaluate(
    label_path: str | os.PathLike,
    result_path: str | os.PathLike,
    label_split_file: str | os.PathLike | None = None,
    current_class: int | str | Sequence[int | str] = (0, 1, 2),
    metric: str = "both",
    coco: bool = False,
    score_thresh: float = -1,
) -> str:
    """The table for ``result_path`` against ``label_path`` (frames of the split file, else every label file)."""
    if metric not in ("R40", "R11", "both"):
        raise ValueError(f"metric must be R40, R11 or both, got {metric!r}")
    image_ids = _read_split(label_split_file) if label_split_file else kc.frame_ids_from_folder(label_path)
    gt_annos = kc.get_label_annos(label_path, image_ids)
    dt_annos, missing = load_results(result_path, image_ids, score_thresh if score_thresh > -1 else None)
    if missing:
        shown = ", ".join(missing[:5]) + (", ..." if len(missing) > 5 else "")
        warnings.warn(
            f"{len(missing)} of {len(image_ids)} result files missing in {result_path} ({shown}): "
            "counted as frames without detections",
            stacklevel=2,
        )
    classes = resolve_classes(current_class)
    if coco:
        return get_coco_eval_result(gt_annos, dt_annos, classes)
    res = _evaluate(gt_annos, dt_annos, classes)
    recalls = ("R11", "R40") if metric == "both" else (metric,)
    return format_results(res, recalls=recalls)


def _parse_classes(text: str) -> list[int | str]:
    return [int(c) if c.strip().lstrip("-").isdigit() else c.strip() for c in text.split(",") if c.strip()]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="KITTI object evaluation (official devkit semantics, CPU)")
    parser.add_argument("--label_path", required=True, help="folder of ground-truth label_2 files")
    parser.add_argument("--result_path", required=True, help="folder of result files (16 columns, with score)")
    parser.add_argument("--label_split_file", default=None, help="file of frame ids (e.g. ImageSets/val.txt)")
    parser.add_argument("--current_class", default="0,1,2", help="class ids or names, comma separated")
    parser.add_argument("--metric", default="both", choices=["R40", "R11", "both"])
    parser.add_argument("--coco", action="store_true", help="COCO-style AP over a range of overlaps instead")
    parser.add_argument("--score_thresh", type=float, default=-1, help="drop detections scoring below this")
    args = parser.parse_args(argv)
    print(
        evaluate(
            args.label_path,
            args.result_path,
            args.label_split_file,
            _parse_classes(args.current_class),
            args.metric,
            args.coco,
            args.score_thresh,
        ),
        end="",
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
