"""The synthetic KITTI-format generator: layout, determinism, label geometry against the points, class mix.

Geometry is re-derived here from the written files with the test's own small calib/box helpers, so the checks do
not reuse the generator's code.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pcdet.datasets.synthetic.generate import generate_dataset, generate_frame

SEED = 7
FRAMES = 4
WIDTH, HEIGHT = 1242, 375
KITTI_CLASSES = {"Car", "Van", "Pedestrian", "Cyclist", "DontCare"}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> tuple[Path, float]:
    out = tmp_path_factory.mktemp("synthetic") / "kitti"
    generate_frame(SEED, 0, with_image=False)  # numba compile / cache load outside the timing
    start = time.perf_counter()
    generate_dataset(out, FRAMES, SEED, val_fraction=0.5, workers=1, progress=False)
    return out, FRAMES / (time.perf_counter() - start)


# ---- the test's own KITTI helpers --------------------------------------------------------------------------------


def read_calib(path: Path) -> dict[str, np.ndarray]:
    calib = {}
    for line in path.read_text().splitlines():
        key, values = line.split(":", 1)
        calib[key] = np.array([float(v) for v in values.split()])
    return calib


def velo_to_rect(calib: dict) -> np.ndarray:
    r0 = np.eye(4)
    r0[:3, :3] = calib["R0_rect"].reshape(3, 3)
    v2c = np.eye(4)
    v2c[:3, :] = calib["Tr_velo_to_cam"].reshape(3, 4)
    return r0 @ v2c


def read_labels(path: Path) -> list[list[str]]:
    return [line.split() for line in path.read_text().splitlines() if line.strip()]


def label_to_lidar_box(fields: list[str], calib: dict) -> np.ndarray:
    h, w, l = (float(v) for v in fields[8:11])
    x, y, z = (float(v) for v in fields[11:14])
    ry = float(fields[14])
    bottom = np.linalg.inv(velo_to_rect(calib)) @ np.array([x, y, z, 1.0])
    return np.array([bottom[0], bottom[1], bottom[2] + h / 2, l, w, h, -(ry + math.pi / 2)])


def points_in_box(points: np.ndarray, box: np.ndarray) -> np.ndarray:
    """Boolean mask of points inside a LiDAR box (x, y, z centre, dx, dy, dz, heading)."""
    d = points[:, :3] - box[:3]
    c, s = math.cos(box[6]), math.sin(box[6])
    lx = c * d[:, 0] + s * d[:, 1]
    ly = -s * d[:, 0] + c * d[:, 1]
    return (np.abs(lx) <= box[3] / 2) & (np.abs(ly) <= box[4] / 2) & (np.abs(d[:, 2]) <= box[5] / 2)


def camera_corners(fields: list[str]) -> np.ndarray:
    h, w, l = (float(v) for v in fields[8:11])
    loc = np.array([float(v) for v in fields[11:14]])
    ry = float(fields[14])
    xs = np.array([1, 1, -1, -1, 1, 1, -1, -1]) * l / 2
    ys = np.array([0, 0, 0, 0, -1, -1, -1, -1]) * h
    zs = np.array([1, -1, -1, 1, 1, -1, -1, 1]) * w / 2
    c, s = math.cos(ry), math.sin(ry)
    return np.stack([c * xs + s * zs, ys, -s * xs + c * zs], axis=1) + loc


def load_frame(root: Path, name: str):
    training = root / "training"
    points = np.fromfile(training / "velodyne" / f"{name}.bin", dtype=np.float32).reshape(-1, 4)
    calib = read_calib(training / "calib" / f"{name}.txt")
    labels = read_labels(training / "label_2" / f"{name}.txt")
    return points, calib, labels


# ---- tests -------------------------------------------------------------------------------------------------------


def test_layout_and_imagesets(dataset):
    root, _ = dataset
    names = [f"{i:06d}" for i in range(FRAMES)]
    for sub, ext in (("velodyne", "bin"), ("label_2", "txt"), ("calib", "txt"), ("image_2", "png"), ("planes", "txt")):
        assert sorted(p.name for p in (root / "training" / sub).iterdir()) == [f"{n}.{ext}" for n in names]
    for name in names:
        size = (root / "training" / "velodyne" / f"{name}.bin").stat().st_size
        assert size > 0 and size % 16 == 0
        with Image.open(root / "training" / "image_2" / f"{name}.png") as img:
            assert img.size == (WIDTH, HEIGHT) and img.mode == "RGB"
    sets = {s: (root / "ImageSets" / f"{s}.txt").read_text().split() for s in ("train", "val", "test")}
    assert len(sets["val"]) == FRAMES // 2
    assert sorted(sets["train"] + sets["val"]) == names
    assert not set(sets["train"]) & set(sets["val"])
    assert sets["test"] == sets["val"]
    meta = json.loads((root / "synthetic_meta.json").read_text())
    assert meta["seed"] == SEED and meta["frames"] == FRAMES and "generator_version" in meta


def test_calib_format(dataset):
    root, _ = dataset
    lines = (root / "training" / "calib" / "000000.txt").read_text().splitlines()
    keys = [line.split(":")[0] for line in lines]
    assert keys == ["P0", "P1", "P2", "P3", "R0_rect", "Tr_velo_to_cam", "Tr_imu_to_velo"]
    for line in lines:
        key, values = line.split(":", 1)
        values = values.split()
        assert len(values) == (9 if key == "R0_rect" else 12)
        assert all("e" in v for v in values)  # scientific notation as in KITTI
    calib = read_calib(root / "training" / "calib" / "000000.txt")
    r0 = calib["R0_rect"].reshape(3, 3)
    assert np.allclose(r0 @ r0.T, np.eye(3), atol=1e-9)
    # the camera looks forward: a point 20 m ahead of the LiDAR projects near the image centre
    p2 = calib["P2"].reshape(3, 4)
    rect = velo_to_rect(calib) @ np.array([20.0, 0.0, 0.0, 1.0])
    uvw = p2 @ rect
    u, v = uvw[:2] / uvw[2]
    assert 500 < u < 700 and 150 < v < 220


def test_calib_matches_project_parser(dataset):
    calibration_kitti = pytest.importorskip("pcdet.utils.calibration_kitti")
    root, _ = dataset
    calib_file = root / "training" / "calib" / "000001.txt"
    calib = calibration_kitti.Calibration(calib_file)
    pts = np.array([[10.0, 2.0, -1.0], [30.0, -5.0, 0.5]])
    expected = (velo_to_rect(read_calib(calib_file)) @ np.c_[pts, np.ones(2)].T).T[:, :3]
    assert np.allclose(calib.lidar_to_rect(pts), expected, atol=1e-5)


def test_determinism_and_workers(dataset, tmp_path):
    root, _ = dataset
    again = generate_dataset(tmp_path / "again", FRAMES, SEED, workers=2, progress=False)
    other = generate_dataset(tmp_path / "other", 1, SEED + 1, workers=1, progress=False)
    for sub, ext in (("velodyne", "bin"), ("label_2", "txt"), ("calib", "txt"), ("image_2", "png")):
        for i in range(FRAMES):
            a = (root / "training" / sub / f"{i:06d}.{ext}").read_bytes()
            assert a == (again / "training" / sub / f"{i:06d}.{ext}").read_bytes(), (sub, i)
    for s in ("train", "val", "test"):
        assert (root / "ImageSets" / f"{s}.txt").read_bytes() == (again / "ImageSets" / f"{s}.txt").read_bytes()
    for sub, ext in (("velodyne", "bin"), ("label_2", "txt"), ("calib", "txt")):
        a = (root / "training" / sub / f"000000.{ext}").read_bytes()
        assert a != (other / "training" / sub / f"000000.{ext}").read_bytes(), sub


def test_labels_geometry_and_points(dataset):
    root, _ = dataset
    n_easy = 0
    for i in range(FRAMES):
        points, calib, labels = load_frame(root, f"{i:06d}")
        assert points.dtype == np.float32 and len(points) > 50_000
        assert np.isfinite(points).all() and (points[:, 3] >= 0).all() and (points[:, 3] <= 1).all()
        p2 = calib["P2"].reshape(3, 4)
        m = velo_to_rect(calib)
        for f in labels:
            assert f[0] in KITTI_CLASSES and len(f) == 15
            x1, y1, x2, y2 = (float(v) for v in f[4:8])
            assert 0 <= x1 < x2 <= WIDTH - 1 and 0 <= y1 < y2 <= HEIGHT - 1
            if f[0] == "DontCare":
                continue
            truncated, occluded, alpha, ry = float(f[1]), int(f[2]), float(f[3]), float(f[14])
            assert 0.0 <= truncated <= 1.0 and occluded in (0, 1, 2, 3)
            x, z = float(f[11]), float(f[13])
            assert abs(math.remainder(alpha - (ry - math.atan2(x, z)), 2 * math.pi)) < 0.02
            corners = camera_corners(f)
            if (corners[:, 2] > 0.1).all():  # fully in front of the camera: the 2D box is the clipped projection
                uvw = corners @ p2[:, :3].T + p2[:, 3]
                uv = uvw[:, :2] / uvw[:, 2:3]
                proj = np.array([uv[:, 0].min(), uv[:, 1].min(), uv[:, 0].max(), uv[:, 1].max()])
                proj = np.clip(proj, 0, [WIDTH - 1, HEIGHT - 1, WIDTH - 1, HEIGHT - 1])
                assert np.allclose(proj, [x1, y1, x2, y2], atol=0.02), (f, proj)
            box = label_to_lidar_box(f, calib)
            # the bottom centre round-trips through the calibration
            back = m @ np.array([box[0], box[1], box[2] - box[5] / 2, 1.0])
            assert np.allclose(back[:3], [float(v) for v in f[11:14]], atol=1e-6)
            easy = (y2 - y1) >= 40 and occluded == 0 and truncated <= 0.15
            if easy:
                n_easy += 1
                assert points_in_box(points, box).sum() >= 5, f
    assert n_easy > 0


def test_class_mix():
    counts: dict[str, int] = {}
    frames = 6
    for i in range(frames):
        frame = generate_frame(SEED + 100, i, with_image=False)
        for lb in frame["labels"]:
            counts[lb["name"]] = counts.get(lb["name"], 0) + 1
    cars = counts.get("Car", 0) + counts.get("Van", 0)
    assert 3 * frames <= cars <= 20 * frames, counts
    assert counts.get("Pedestrian", 0) >= frames // 2, counts
    assert counts.get("Cyclist", 0) >= 1, counts
    assert counts.get("Van", 0) < counts.get("Car", 0), counts


def test_frame_api():
    frame = generate_frame(SEED, 1)
    assert frame["points"].dtype == np.float32 and frame["points"].shape[1] == 4
    assert frame["image"].shape == (HEIGHT, WIDTH, 3) and frame["image"].dtype == np.uint8
    for key in ("P2", "R0_rect", "Tr_velo_to_cam"):
        assert key in frame["calib"]
    again = generate_frame(SEED, 1, with_image=False)
    assert np.array_equal(frame["points"], again["points"]) and frame["label_text"] == again["label_text"]
    for lb in frame["labels"]:
        heading = lb["box_lidar"][6]
        assert abs(math.remainder(lb["rotation_y"] + heading + math.pi / 2, 2 * math.pi)) < 0.01


def test_speed_recorded(dataset, record_property):
    _, fps = dataset
    record_property("synthetic_frames_per_s_single_worker", round(fps, 2))  # recorded, not asserted (shared CPUs)
    assert fps > 0


def test_label_range_turns_unreachable_objects_into_dontcare():
    full = generate_frame(7, 3, with_image=False)
    label_range = (0.0, -10.0, 25.0, 10.0)
    cropped = generate_frame(7, 3, with_image=False, label_range=label_range)
    np.testing.assert_array_equal(full["points"], cropped["points"])  # only the labels change
    inside = [
        lb
        for lb in full["labels"]
        if label_range[0] <= lb["box_lidar"][0] <= label_range[2]
        and label_range[1] <= lb["box_lidar"][1] <= label_range[3]
    ]
    assert 0 < len(inside) < len(full["labels"])
    assert [lb["object_index"] for lb in cropped["labels"]] == [lb["object_index"] for lb in inside]
    moved = len(full["labels"]) - len(inside)
    assert len(cropped["dontcare"]) == len(full["dontcare"]) + moved
