"""Bird's-eye-view pictures of a LiDAR frame with predicted and ground-truth boxes (matplotlib Agg, no GUI).

x (forward) points up the image and y (left) points left, so the picture looks like the scene seen from above
with the car driving up. Each box is its BEV footprint plus a line from the centre to the front edge (heading).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.collections import LineCollection  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from pcdet.utils import box_utils  # noqa: E402

PRED_COLOURS = ("#e41a1c", "#4daf4a", "#377eb8", "#984ea3", "#ff7f00", "#a65628")
GT_COLOUR = "#222222"


def bev_footprints(boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """BEV corners ``(N, 4, 2)`` (x, y; front-left, front-right, rear-right, rear-left) and heading segments
    ``(N, 2, 2)`` (centre → middle of the front edge) of LiDAR boxes ``(N, 7+)``."""
    boxes = np.asarray(boxes, dtype=np.float32)
    if boxes.size == 0:
        return np.zeros((0, 4, 2), np.float32), np.zeros((0, 2, 2), np.float32)
    corners = box_utils.boxes_to_corners_3d(boxes[:, :7])[:, :4, :2]
    front = corners[:, :2].mean(axis=1)
    heading = np.stack([boxes[:, :2], front], axis=1)  # boxes (N, 7+): the centre is columns 0-1
    return corners, heading


def _to_image_axes(xy: np.ndarray) -> np.ndarray:
    """LiDAR (x, y) → plot (u, v) = (-y, x): forward is up, left is left."""
    return np.stack([-xy[..., 1], xy[..., 0]], axis=-1)


def draw_boxes(ax, boxes: np.ndarray, colours: Sequence[str] | str, linewidth: float = 1.2, linestyle: str = "-"):
    """Add box footprints and heading lines to ``ax``; returns the LineCollection (one polyline per box, then one
    heading segment per box)."""
    corners, heading = bev_footprints(boxes)
    outlines = np.concatenate([corners, corners[:, :1]], axis=1)  # closed polygons
    segments = [*_to_image_axes(outlines), *_to_image_axes(heading)]
    colours = [colours] * len(corners) if isinstance(colours, str) else list(colours)
    lines = LineCollection(segments, colors=colours * 2, linewidths=linewidth, linestyles=linestyle)
    ax.add_collection(lines)
    return lines


def render_bev(
    points: np.ndarray,
    pred_boxes: np.ndarray | None = None,
    pred_scores: np.ndarray | None = None,
    pred_labels: np.ndarray | None = None,
    gt_boxes: np.ndarray | None = None,
    class_names: Sequence[str] | None = None,
    point_cloud_range: Sequence[float] | None = None,
    title: str | None = None,
    score_text: bool = True,
) -> Figure:
    """A figure with the points (coloured by height), ground truth (dashed, dark) and predictions (by class).

    ``pred_labels`` are 1-based class indices into ``class_names`` (the detector's convention).
    """
    points = np.asarray(points, dtype=np.float32)
    if point_cloud_range is None:
        lo = points[:, :2].min(axis=0) if len(points) else np.array([-40.0, -40.0])
        hi = points[:, :2].max(axis=0) if len(points) else np.array([40.0, 40.0])
    else:
        lo, hi = np.asarray(point_cloud_range[0:2]), np.asarray(point_cloud_range[3:5])
    inside = (points[:, 0] >= lo[0]) & (points[:, 0] <= hi[0]) & (points[:, 1] >= lo[1]) & (points[:, 1] <= hi[1])
    shown = points[inside]

    width_m, height_m = float(hi[1] - lo[1]), float(hi[0] - lo[0])
    scale = 10.0 / max(width_m, height_m)
    fig = plt.figure(figsize=(max(width_m * scale, 3.0) + 0.6, max(height_m * scale, 3.0) + 0.6), dpi=100)
    ax = fig.add_subplot(1, 1, 1)
    ax.set_facecolor("white")
    uv = _to_image_axes(shown[:, :2])
    ax.scatter(uv[:, 0], uv[:, 1], s=0.3, c=shown[:, 2], cmap="viridis", linewidths=0, rasterized=True)

    if gt_boxes is not None and len(gt_boxes):
        draw_boxes(ax, np.asarray(gt_boxes)[:, :7], GT_COLOUR, linewidth=1.0, linestyle="--")
    if pred_boxes is not None and len(pred_boxes):
        pred_boxes = np.asarray(pred_boxes)
        labels = np.ones(len(pred_boxes), np.int64) if pred_labels is None else np.asarray(pred_labels, np.int64)
        colours = [PRED_COLOURS[(label - 1) % len(PRED_COLOURS)] for label in labels]
        draw_boxes(ax, pred_boxes[:, :7], colours)
        if score_text and pred_scores is not None:
            for box, score, colour in zip(pred_boxes, np.asarray(pred_scores), colours):
                ax.text(-box[1], box[0], f"{score:.2f}", color=colour, fontsize=6, ha="left", va="bottom")
        if class_names is not None:
            for label in sorted(set(labels.tolist())):
                name = class_names[label - 1] if 0 < label <= len(class_names) else str(label)
                ax.plot([], [], color=PRED_COLOURS[(label - 1) % len(PRED_COLOURS)], label=name)
    if gt_boxes is not None and len(gt_boxes):
        ax.plot([], [], color=GT_COLOUR, linestyle="--", label="ground truth")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="upper right", fontsize=7)

    ax.set_xlim(-hi[1], -lo[1])
    ax.set_ylim(lo[0], hi[0])
    ax.set_aspect("equal")
    ax.set_xlabel("-y (m, left is left)")
    ax.set_ylabel("x (m, forward)")
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return fig


def save_bev(fig: Figure, out_file: str | os.PathLike) -> Path:
    out_file = Path(out_file)
    out_file.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_file)
    plt.close(fig)
    return out_file
