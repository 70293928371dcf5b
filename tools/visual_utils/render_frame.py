"""Render a LiDAR frame as a bird's-eye view with its boxes next to the camera image with the projected 3D boxes.

    python visual_utils/render_frame.py --root ../data/synthetic_kitti --frame 000003 --out frame.png
    python visual_utils/render_frame.py --compare --real_root /path/to/kitti --real_frame 000000 \
        --out ../docs/images/synthetic_vs_real.png            # synthetic frame next to a real KITTI frame

Matplotlib (Agg) only; the calibration may be a dict of KITTI matrices (``P2``, ``R0_rect``, ``Tr_velo_to_cam``) or an
object with OpenPCDet-style attributes (``P2``, ``R0``, ``V2C``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

CLASS_COLOURS = {"Car": "#e41a1c", "Van": "#ff7f00", "Pedestrian": "#4daf4a", "Cyclist": "#377eb8"}


def _matrices(calib) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if isinstance(calib, dict):
        return np.asarray(calib["P2"]), np.asarray(calib["R0_rect"]), np.asarray(calib["Tr_velo_to_cam"])
    return np.asarray(calib.P2), np.asarray(calib.R0), np.asarray(calib.V2C)


def _velo_to_rect(calib) -> np.ndarray:
    _, r0, v2c = _matrices(calib)
    m_r0, m_v2c = np.eye(4), np.eye(4)
    m_r0[:3, :3] = r0[:3, :3]
    m_v2c[:3, :4] = v2c[:3, :4]
    return m_r0 @ m_v2c


def read_kitti_calib(path: str | Path) -> dict[str, np.ndarray]:
    out = {}
    for line in Path(path).read_text().strip().splitlines():
        if ":" in line:
            key, values = line.split(":", 1)
            arr = np.array([float(v) for v in values.split()])
            out[key.strip()] = arr.reshape(3, 3) if arr.size == 9 else arr.reshape(3, 4)
    return out


def read_kitti_boxes(label_path: str | Path, calib) -> tuple[np.ndarray, list[str]]:
    """Label file -> LiDAR boxes (N, 7) (x, y, z centre, l, w, h, heading) and class names (DontCare dropped)."""
    inv = np.linalg.inv(_velo_to_rect(calib))
    boxes, names = [], []
    for line in Path(label_path).read_text().strip().splitlines():
        f = line.split()
        if not f or f[0] == "DontCare":
            continue
        h, w, l = (float(v) for v in f[8:11])
        loc = np.array([float(v) for v in f[11:14]] + [1.0])
        ry = float(f[14])
        x, y, z = (inv @ loc)[:3]
        boxes.append([x, y, z + h / 2, l, w, h, -(ry + np.pi / 2)])
        names.append(f[0])
    return np.array(boxes, dtype=np.float64).reshape(-1, 7), names


def box_corners_lidar(boxes: np.ndarray) -> np.ndarray:
    """(N, 7) -> (N, 8, 3); bottom face first, corners counter-clockwise from (+l/2, +w/2)."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 7)
    sx = np.array([1, -1, -1, 1, 1, -1, -1, 1]) * 0.5
    sy = np.array([1, 1, -1, -1, 1, 1, -1, -1]) * 0.5
    sz = np.array([-1, -1, -1, -1, 1, 1, 1, 1]) * 0.5
    lx = boxes[:, None, 3] * sx
    ly = boxes[:, None, 4] * sy
    lz = boxes[:, None, 5] * sz
    c, s = np.cos(boxes[:, 6])[:, None], np.sin(boxes[:, 6])[:, None]
    return np.stack(
        [c * lx - s * ly + boxes[:, None, 0], s * lx + c * ly + boxes[:, None, 1], lz + boxes[:, None, 2]], -1
    )


_EDGES = ((0, 1), (1, 2), (2, 3), (3, 0), (4, 5), (5, 6), (6, 7), (7, 4), (0, 4), (1, 5), (2, 6), (3, 7))


def draw_bev(ax, points: np.ndarray, boxes: np.ndarray, names=None, x_range=(-5, 65), y_range=(-30, 30)) -> None:
    keep = (
        (points[:, 0] > x_range[0])
        & (points[:, 0] < x_range[1])
        & (points[:, 1] > y_range[0])
        & (points[:, 1] < y_range[1])
    )
    p = points[keep]
    # plot y to the left as image-left: horizontal axis = -y, vertical = x (forward up)
    ax.scatter(-p[:, 1], p[:, 0], s=0.4, c=np.clip(p[:, 2], -2.5, 1.5), cmap="viridis", linewidths=0, rasterized=True)
    for i, corners in enumerate(box_corners_lidar(boxes)):
        colour = CLASS_COLOURS.get(names[i] if names else "Car", "#984ea3")
        ring = corners[[0, 1, 2, 3, 0], :2]
        ax.plot(-ring[:, 1], ring[:, 0], color=colour, lw=0.9)
        front = corners[[0, 3], :2].mean(axis=0)
        centre = corners[:4, :2].mean(axis=0)
        ax.plot([-centre[1], -front[1]], [centre[0], front[0]], color=colour, lw=0.9)
    ax.set_xlim(-y_range[1], -y_range[0])
    ax.set_ylim(*x_range)
    ax.set_aspect("equal")
    ax.set_facecolor("#101010")
    ax.set_xticks([])
    ax.set_yticks([])


def draw_camera(ax, image: np.ndarray, boxes: np.ndarray, calib, names=None) -> None:
    p2, _, _ = _matrices(calib)
    m = _velo_to_rect(calib)
    ax.imshow(image)
    h_img, w_img = image.shape[:2]
    for i, corners in enumerate(box_corners_lidar(boxes)):
        rect = corners @ m[:3, :3].T + m[:3, 3]
        if (rect[:, 2] < 0.5).any():
            continue  # boxes reaching behind the camera are left out of the drawing
        uvw = rect @ p2[:3, :3].T + p2[:3, 3]
        uv = uvw[:, :2] / uvw[:, 2:3]
        colour = CLASS_COLOURS.get(names[i] if names else "Car", "#984ea3")
        for a, b in _EDGES:
            ax.plot(uv[[a, b], 0], uv[[a, b], 1], color=colour, lw=0.8)
    ax.set_xlim(0, w_img)
    ax.set_ylim(h_img, 0)
    ax.set_xticks([])
    ax.set_yticks([])


def render_bev_and_camera(points, boxes_lidar, calib, image, out_png=None, names=None, title=None, axes=None):
    """BEV scatter with boxes (left) and the camera image with projected 3D boxes (right); saves to ``out_png``."""
    own_fig = axes is None
    if own_fig:
        fig, axes = plt.subplots(1, 2, figsize=(16, 5), gridspec_kw={"width_ratios": [1, 2.4]})
    draw_bev(axes[0], np.asarray(points), np.asarray(boxes_lidar).reshape(-1, 7), names)
    draw_camera(axes[1], np.asarray(image), np.asarray(boxes_lidar).reshape(-1, 7), calib, names)
    if title:
        axes[0].set_title(title, fontsize=10, loc="left")
    if names:
        present = [n for n in CLASS_COLOURS if n in set(names)]
        handles = [plt.Line2D([], [], color=CLASS_COLOURS[n], lw=1.5) for n in present]
        axes[0].legend(handles, present, loc="lower left", fontsize=7, framealpha=0.6)
    if own_fig:
        fig.tight_layout()
        if out_png:
            fig.savefig(out_png, dpi=110)
        plt.close(fig)
    return axes


def load_kitti_frame(root: str | Path, frame: str):
    from PIL import Image

    root = Path(root) / "training"
    calib = read_kitti_calib(root / "calib" / f"{frame}.txt")
    points = np.fromfile(root / "velodyne" / f"{frame}.bin", dtype=np.float32).reshape(-1, 4)
    image = np.asarray(Image.open(root / "image_2" / f"{frame}.png").convert("RGB"))
    boxes, names = read_kitti_boxes(root / "label_2" / f"{frame}.txt", calib)
    return points, boxes, names, calib, image


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", help="KITTI-layout data set root (with training/)")
    parser.add_argument("--frame", default="000000")
    parser.add_argument("--out", required=True)
    parser.add_argument("--compare", action="store_true", help="synthetic frame (generated) next to a real one")
    parser.add_argument("--real_root", help="real KITTI root for --compare")
    parser.add_argument("--real_frame", default="000000")
    parser.add_argument("--seed", type=int, default=0, help="synthetic seed for --compare")
    parser.add_argument("--synthetic_frame", type=int, default=0, help="synthetic frame index for --compare")
    args = parser.parse_args(argv)

    if not args.compare:
        points, boxes, names, calib, image = load_kitti_frame(args.root, args.frame)
        render_bev_and_camera(points, boxes, calib, image, args.out, names=names, title=f"{args.root} {args.frame}")
        return

    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # repo root, when run from tools/
    from pcdet.datasets.synthetic.generate import generate_frame

    syn = generate_frame(args.seed, args.synthetic_frame)
    syn_boxes = np.array([lb["box_lidar"] for lb in syn["labels"]]).reshape(-1, 7)
    syn_names = [lb["name"] for lb in syn["labels"]]
    real = load_kitti_frame(args.real_root, args.real_frame)
    fig, axes = plt.subplots(2, 2, figsize=(16, 9.5), gridspec_kw={"width_ratios": [1, 2.4]})
    render_bev_and_camera(
        syn["points"], syn_boxes, syn["calib"], syn["image"], names=syn_names, axes=axes[0],
        title=f"synthetic (seed {args.seed}, frame {args.synthetic_frame}): {len(syn['points'])} points",
    )  # fmt: skip
    render_bev_and_camera(
        real[0], real[1], real[3], real[4], names=real[2], axes=axes[1],
        title=f"real KITTI {args.real_frame}: {len(real[0])} points",
    )  # fmt: skip
    fig.tight_layout()
    fig.savefig(args.out, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    main()
