"""KITTI pipeline on the 6 real frames in /work/shared: calibration, labels, info creation, gt database, samples,
prediction files, and clear errors for bad inputs. Expected values are computed here independently (plain matrix
algebra from the calib text, a naive point-in-box loop, the PNG header bytes)."""

import logging
import math
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
from easydict import EasyDict

from pcdet.config import cfg_from_yaml_file
from pcdet.datasets import build_dataloader
from pcdet.datasets.kitti.kitti_dataset import KittiDataset, create_kitti_infos
from pcdet.utils.calibration_kitti import Calibration, CalibrationError
from pcdet.utils.object3d_kitti import LabelError, difficulty_level, get_objects_from_label

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(__file__).resolve().parents[2] / "shared"
KITTI_REAL = SHARED / "data" / "kitti_real"
CLASSES = ["Car", "Pedestrian", "Cyclist"]
FRAMES = [f"{i:06d}" for i in range(6)]

needs_kitti = pytest.mark.skipif(not KITTI_REAL.is_dir(), reason="shared KITTI sample frames not available")


# --------------------------------------------------------------------------------------- independent reference code
def _naive_calib(path: Path) -> dict:
    mats = {}
    for line in path.read_text().splitlines():
        if ":" in line:
            key, vals = line.split(":", 1)
            mats[key.strip()] = [float(v) for v in vals.split()]
    p2 = np.array(mats["P2"]).reshape(3, 4)
    r0 = np.array(mats["R0_rect"]).reshape(3, 3)
    v2c = np.array(mats["Tr_velo_to_cam"]).reshape(3, 4)
    return {"P2": p2, "R0": r0, "V2C": v2c}


def _naive_rect_to_lidar(xyz_rect: np.ndarray, c: dict) -> np.ndarray:
    ref = np.linalg.solve(c["R0"], xyz_rect.T).T  # undo rectification
    rot, t = c["V2C"][:, :3], c["V2C"][:, 3]
    return (ref - t) @ rot  # rot is orthonormal: inverse = transpose


def _naive_fov(points: np.ndarray, c: dict, height: int, width: int) -> np.ndarray:
    rect = (c["R0"] @ (points[:, :3] @ c["V2C"][:, :3].T + c["V2C"][:, 3]).T).T
    hom = np.hstack([rect, np.ones((len(rect), 1))]) @ c["P2"].T
    u, v = hom[:, 0] / hom[:, 2], hom[:, 1] / hom[:, 2]
    return (u >= 0) & (u < width) & (v >= 0) & (v < height) & (hom[:, 2] - c["P2"][2, 3] >= 0)


def _naive_count_in_box(points: np.ndarray, box) -> int:
    x, y, z, dx, dy, dz, heading = (float(v) for v in box)
    count = 0
    cos_h, sin_h = math.cos(heading), math.sin(heading)
    # only points within the box's circumscribed sphere can be inside (keeps the loop short)
    near = np.linalg.norm(points[:, :3] - [x, y, z], axis=1) <= math.sqrt(dx * dx + dy * dy + dz * dz) / 2 + 1e-3
    for px, py, pz in points[near, :3].astype(np.float64):
        lx = (px - x) * cos_h + (py - y) * sin_h
        ly = -(px - x) * sin_h + (py - y) * cos_h
        if abs(lx) <= dx / 2 and abs(ly) <= dy / 2 and abs(pz - z) <= dz / 2:
            count += 1
    return count


def _png_size(path: Path) -> tuple[int, int]:
    header = path.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n" and header[12:16] == b"IHDR"
    width, height = struct.unpack(">II", header[16:24])
    return height, width


def _label_rows(path: Path) -> list[list[str]]:
    return [line.split() for line in path.read_text().splitlines() if line.strip()]


def _link_kitti(root: Path) -> Path:
    """data/kitti made of symlinks to the shared frames (which are read-only)."""
    kitti = root / "data" / "kitti"
    (kitti / "ImageSets").mkdir(parents=True)
    for split in ("train", "val", "test"):
        (kitti / "ImageSets" / f"{split}.txt").write_text("\n".join(FRAMES) + "\n")
    for part in ("training", "testing"):
        (kitti / part).mkdir()
        for sub in (KITTI_REAL / part).iterdir():
            (kitti / part / sub.name).symlink_to(sub, target_is_directory=True)
    return kitti


def _dataset_cfg() -> EasyDict:
    return cfg_from_yaml_file(REPO / "tools/cfgs/dataset_configs/kitti_dataset.yaml", EasyDict())


@pytest.fixture(scope="module")
def kitti_root(tmp_path_factory) -> Path:
    if not KITTI_REAL.is_dir():
        pytest.skip("shared KITTI sample frames not available")
    kitti = _link_kitti(tmp_path_factory.mktemp("kitti"))
    create_kitti_infos(_dataset_cfg(), CLASSES, data_path=kitti, save_path=kitti, workers=2)
    return kitti


def _load(path: Path):
    with open(path, "rb") as f:
        return pickle.load(f)


# --------------------------------------------------------------------------------------------------- calibration
@needs_kitti
def test_calibration_matches_naive_matrices_and_round_trips():
    calib_file = KITTI_REAL / "training/calib/000000.txt"
    calib, ref = Calibration(calib_file), _naive_calib(calib_file)
    rng = np.random.default_rng(0)
    pts = rng.uniform([5, -10, -2], [40, 10, 1], size=(50, 3))
    rect = calib.lidar_to_rect(pts)
    np.testing.assert_allclose(_naive_rect_to_lidar(rect, ref), pts, atol=1e-4)
    np.testing.assert_allclose(calib.rect_to_lidar(rect), pts, atol=1e-9)
    img, depth = calib.rect_to_img(rect)
    np.testing.assert_allclose(calib.img_to_rect(img[:, 0], img[:, 1], depth), rect, atol=1e-9)
    img2, _ = calib.lidar_to_img(pts)
    np.testing.assert_allclose(img2, img)
    # the same object from a dict of 4x4 matrices (the info layout) and from OpenPCDet's short key names
    as_dict = Calibration({"P2": np.vstack([ref["P2"], [0, 0, 0, 1]]), "R0_rect": ref["R0"], "Tr_velo2cam": ref["V2C"]})
    np.testing.assert_allclose(as_dict.lidar_to_rect(pts), rect, atol=1e-5)


@needs_kitti
def test_projected_3d_label_boxes_land_on_their_2d_boxes():
    """3D label box corners through P2 enclose the annotated 2D box (rigid vehicles to 3 px; people 10 px)."""
    checked = 0
    for frame in FRAMES:
        calib = Calibration(KITTI_REAL / f"training/calib/{frame}.txt")
        for obj in get_objects_from_label(KITTI_REAL / f"training/label_2/{frame}.txt"):
            if obj.cls_type == "DontCare" or obj.truncation > 0:
                continue
            x, y, z = obj.loc
            # corners built by hand: bottom-centre box, rotated by ry about the camera y axis
            local = np.array(
                [[sx * obj.l / 2, -sy * obj.h, sz * obj.w / 2] for sx in (-1, 1) for sy in (0, 1) for sz in (-1, 1)]
            )
            c, s = math.cos(obj.ry), math.sin(obj.ry)
            rot = np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])
            corners = local @ rot.T + [x, y, z]
            box, corners_img = calib.corners3d_to_img_boxes(corners[None])
            tol = 3.0 if obj.cls_type in ("Car", "Truck", "Van", "Cyclist") else 10.0
            np.testing.assert_allclose(box[0], obj.box2d, atol=tol, err_msg=f"{frame} {obj.cls_type}")
            assert corners_img.shape == (1, 8, 2)
            checked += 1
    assert checked >= 9


def test_calib_missing_key_names_file_and_key(tmp_path):
    bad = tmp_path / "calib.txt"
    bad.write_text("P2: " + " ".join(["1"] * 12) + "\nR0_rect: " + " ".join(["0"] * 9) + "\n")
    with pytest.raises(CalibrationError, match=r"calib\.txt.*Tr_velo_to_cam"):
        Calibration(bad)
    with pytest.raises(CalibrationError, match="P2"):
        Calibration({"R0_rect": np.eye(3), "Tr_velo_to_cam": np.zeros((3, 4))})


# --------------------------------------------------------------------------------------------------- labels
def test_label_parsing_levels_and_round_trip(tmp_path):
    label = tmp_path / "000042.txt"
    label.write_text(
        "Car 0.00 0 -1.58 587.01 173.33 614.12 200.12 1.65 1.67 3.64 -0.65 1.71 46.70 -1.59\n"
        "Pedestrian 0.20 1 0.5 100 100 130 130 1.7 0.6 0.8 2.0 1.5 20.0 0.3 0.87\n"
        "DontCare -1 -1 -10 503.89 169.71 590.61 190.13 -1 -1 -1 -1000 -1000 -1000 -10\n"
    )
    car, ped, dc = get_objects_from_label(label)
    assert (car.cls_type, car.h, car.w, car.l, car.ry) == ("Car", 1.65, 1.67, 3.64, -1.59)
    np.testing.assert_allclose(car.loc, [-0.65, 1.71, 46.70], rtol=1e-6)
    assert car.level == 1  # 26.8 px high: moderate
    assert ped.level == 1 and ped.score == pytest.approx(0.87)  # 30 px, occlusion 1, truncation 0.2
    assert dc.level == -1 and car.score == -1.0
    assert car.to_kitti_format().split() == label.read_text().splitlines()[0].split()
    assert ped.to_kitti_format().split()[-1] == "0.8700"
    # KITTI's difficulty table, checked at its boundaries
    assert difficulty_level(40, 0, 0.15) == 0
    assert difficulty_level(39.9, 0, 0.0) == 1
    assert difficulty_level(25, 2, 0.5) == 2
    assert difficulty_level(24.9, 0, 0.0) == -1
    assert difficulty_level(100, 3, 0.0) == -1


def test_label_with_unknown_class_or_bad_columns_names_file_and_line(tmp_path, caplog):
    label = tmp_path / "000007.txt"
    label.write_text(
        "Car 0.00 0 -1.58 587.01 173.33 614.12 200.12 1.65 1.67 3.64 -0.65 1.71 46.70 -1.59\n"
        "Bus 0.00 0 -1.58 587.01 173.33 614.12 200.12 1.65 1.67 3.64 -0.65 1.71 46.70 -1.59\n"
    )
    with pytest.raises(LabelError, match=r"000007\.txt:2: unknown class 'Bus'"):
        get_objects_from_label(label)
    with caplog.at_level(logging.WARNING, logger="pcdet"):
        objs = get_objects_from_label(label, skip_unknown=True)
    assert [o.cls_type for o in objs] == ["Car"]
    assert "skipped 1 object" in caplog.text and "Bus" in caplog.text
    short = tmp_path / "000008.txt"
    short.write_text("Car 0.00 0 -1.58 587.01 173.33\n")
    with pytest.raises(LabelError, match=r"000008\.txt:1: expected 15 or 16 columns, got 6"):
        get_objects_from_label(short)


# --------------------------------------------------------------------------------------------------- infos
@needs_kitti
def test_infos_agree_with_labels_calib_points_and_png(kitti_root):
    infos = _load(kitti_root / "kitti_infos_train.pkl")
    assert [i["point_cloud"]["lidar_idx"] for i in infos] == FRAMES
    for info in infos:
        frame = info["point_cloud"]["lidar_idx"]
        assert info["point_cloud"]["num_features"] == 4
        height, width = _png_size(KITTI_REAL / f"training/image_2/{frame}.png")
        np.testing.assert_array_equal(info["image"]["image_shape"], [height, width])
        ref = _naive_calib(KITTI_REAL / f"training/calib/{frame}.txt")
        np.testing.assert_allclose(info["calib"]["P2"][:3], ref["P2"], rtol=1e-6)
        np.testing.assert_allclose(info["calib"]["P2"][3], [0, 0, 0, 1])
        np.testing.assert_allclose(info["calib"]["Tr_velo_to_cam"][:3], ref["V2C"], rtol=1e-6)
        np.testing.assert_allclose(info["calib"]["R0_rect"][:3, :3], ref["R0"], rtol=1e-6)

        rows = _label_rows(KITTI_REAL / f"training/label_2/{frame}.txt")
        objects = [r for r in rows if r[0] != "DontCare"]
        annos = info["annos"]
        assert list(annos["name"]) == [r[0] for r in rows]  # DontCare already last in KITTI files
        assert list(annos["index"]) == list(range(len(objects))) + [-1] * (len(rows) - len(objects))
        np.testing.assert_allclose(annos["bbox"], [[float(v) for v in r[4:8]] for r in rows], rtol=1e-6)
        np.testing.assert_allclose(annos["dimensions"], [[float(r[10]), float(r[8]), float(r[9])] for r in rows])

        points = np.fromfile(KITTI_REAL / f"training/velodyne/{frame}.bin", dtype=np.float32).reshape(-1, 4)
        fov_points = points[_naive_fov(points, ref, height, width)]
        assert annos["gt_boxes_lidar"].shape == (len(objects), 7)
        for k, r in enumerate(objects):
            h, w, l = (float(v) for v in r[8:11])
            loc = np.array([[float(v) for v in r[11:14]]])
            centre = _naive_rect_to_lidar(loc, ref)[0] + [0, 0, h / 2]
            expected = [*centre, l, w, h, -(float(r[14]) + np.pi / 2)]
            np.testing.assert_allclose(annos["gt_boxes_lidar"][k], expected, atol=2e-4)
            assert annos["num_points_in_gt"][k] == _naive_count_in_box(fov_points, expected)
        assert (annos["num_points_in_gt"][len(objects) :] == -1).all()
    # the frames have objects with real points in them (a count of all zeros would pass the loop too)
    assert max(int(i["annos"]["num_points_in_gt"].max()) for i in infos) > 100


@needs_kitti
def test_split_files_and_gt_database(kitti_root):
    train, val = _load(kitti_root / "kitti_infos_train.pkl"), _load(kitti_root / "kitti_infos_val.pkl")
    trainval, test = _load(kitti_root / "kitti_infos_trainval.pkl"), _load(kitti_root / "kitti_infos_test.pkl")
    assert len(trainval) == len(train) + len(val) == 12
    assert len(test) == 6 and all("annos" not in i for i in test)

    db = _load(kitti_root / "kitti_dbinfos_train.pkl")
    total = sum(len(i["annos"]["gt_boxes_lidar"]) for i in train)
    assert sum(len(v) for v in db.values()) == total
    fields = {"name", "path", "image_idx", "gt_idx", "box3d_lidar", "num_points_in_gt", "difficulty", "bbox", "score"}
    for name, entries in db.items():
        for entry in entries:
            assert set(entry) == fields and entry["name"] == name
            info = train[FRAMES.index(entry["image_idx"])]
            np.testing.assert_array_equal(entry["box3d_lidar"], info["annos"]["gt_boxes_lidar"][entry["gt_idx"]])
            obj_points = np.fromfile(kitti_root / entry["path"], dtype=np.float32).reshape(-1, 4)
            assert len(obj_points) == entry["num_points_in_gt"]
            scene = np.fromfile(KITTI_REAL / f"training/velodyne/{entry['image_idx']}.bin", np.float32).reshape(-1, 4)
            # stored relative to the box centre; all scene points (not only the camera's view) are counted
            box = entry["box3d_lidar"]
            assert len(obj_points) == _naive_count_in_box(scene, box)
            recentred = obj_points[:, 0:3] + box[0:3]
            assert _naive_count_in_box(recentred, box) == len(obj_points)


@needs_kitti
def test_eval_samples_have_fov_points_and_labelled_boxes(kitti_root):
    ds = KittiDataset(_dataset_cfg(), CLASSES, training=False, root_path=kitti_root)
    assert len(ds) == 6
    sample = ds[1]
    assert sample["frame_id"] == "000001"
    calib = Calibration(KITTI_REAL / "training/calib/000001.txt")
    img, depth = calib.lidar_to_img(sample["points"][:, 0:3])
    h, w = sample["image_shape"]
    assert (img[:, 0] >= 0).all() and (img[:, 0] < w).all() and (img[:, 1] >= 0).all() and (depth >= 0).all()
    # label file 000001: Truck, Car, Cyclist (+DontCare): the classes kept are Car (1) and Cyclist (3)
    np.testing.assert_array_equal(sample["gt_boxes"][:, 7], [1, 3])
    assert sample["gt_boxes"].shape == (2, 8)
    assert sample["voxels"].shape[1:] == (5, 4)
    assert sample["voxel_coords"].shape[1] == 3


@needs_kitti
def test_training_loader_batches(kitti_root):
    _, loader, sampler = build_dataloader(
        _dataset_cfg(), CLASSES, batch_size=3, dist=False, root_path=kitti_root, workers=0, seed=0, training=True
    )
    assert sampler is None
    batch = next(iter(loader))
    assert batch["batch_size"] == 3
    assert batch["gt_boxes"].shape[0] == 3 and batch["gt_boxes"].shape[2] == 8
    assert set(np.unique(batch["voxel_coords"][:, 0])) == {0, 1, 2}
    assert set(np.unique(batch["gt_boxes"][:, :, 7])) <= {0, 1, 2, 3}
    assert len(batch["voxels"]) == len(batch["voxel_coords"]) == len(batch["voxel_num_points"])


@needs_kitti
def test_prediction_files_round_trip_the_labels(kitti_root, tmp_path):
    """Ground-truth boxes fed back as predictions produce result lines equal to the label lines."""
    ds = KittiDataset(_dataset_cfg(), CLASSES, training=False, root_path=kitti_root)
    info = ds.kitti_infos[4]  # two un-truncated cars
    calib = Calibration(KITTI_REAL / "training/calib/000004.txt")
    preds = [
        {
            "pred_boxes": info["annos"]["gt_boxes_lidar"],
            "pred_scores": np.array([0.9, 0.8], np.float32),
            "pred_labels": np.array([1, 1]),
        }
    ]
    batch = {"frame_id": np.array(["000004"]), "calib": [calib], "image_shape": info["image"]["image_shape"][None]}
    annos = ds.generate_prediction_dicts(batch, preds, CLASSES, output_path=tmp_path)
    assert list(annos[0]["name"]) == ["Car", "Car"] and annos[0]["frame_id"] == "000004"
    written = get_objects_from_label(tmp_path / "000004.txt")
    labels = get_objects_from_label(KITTI_REAL / "training/label_2/000004.txt")[:2]
    for det, gt, score in zip(written, labels, (0.9, 0.8)):
        assert det.cls_type == "Car" and det.score == pytest.approx(score)
        np.testing.assert_allclose(det.loc, gt.loc, atol=1e-3)
        np.testing.assert_allclose([det.h, det.w, det.l], [gt.h, gt.w, gt.l], atol=1e-3)
        assert det.ry == pytest.approx(gt.ry, abs=1e-3)
        assert det.alpha == pytest.approx(gt.alpha, abs=0.02)
        np.testing.assert_allclose(det.box2d, gt.box2d, atol=3.0)
    empty = ds.generate_prediction_dicts(
        batch, [{k: v[:0] for k, v in preds[0].items()}], CLASSES, output_path=tmp_path / "e"
    )
    assert len(empty[0]["name"]) == 0 and (tmp_path / "e/000004.txt").read_text() == ""


# --------------------------------------------------------------------------------------------------- bad inputs
@needs_kitti
def test_corrupt_bin_names_the_file(tmp_path):
    kitti = _link_kitti(tmp_path)
    velodyne = kitti / "training/velodyne"
    velodyne.unlink()
    velodyne.mkdir()
    (velodyne / "000000.bin").write_bytes(b"\0" * 1000)  # 1000 is not a multiple of 16
    ds = KittiDataset(_dataset_cfg(), CLASSES, training=False, root_path=kitti)
    with pytest.raises(ValueError, match=r"velodyne/000000\.bin.*multiple of 16"):
        ds.get_lidar("000000")


@needs_kitti
def test_missing_imagesets_file_names_it(tmp_path):
    kitti = _link_kitti(tmp_path)
    (kitti / "ImageSets/val.txt").unlink()
    with pytest.raises(FileNotFoundError, match=r"ImageSets/val\.txt"):
        create_kitti_infos(_dataset_cfg(), CLASSES, data_path=kitti, save_path=kitti, workers=1)
    assert (kitti / "kitti_infos_train.pkl").is_file()  # the train split before it was written


@needs_kitti
def test_missing_road_plane_warns_and_returns_none(kitti_root, caplog):
    ds = KittiDataset(_dataset_cfg(), CLASSES, training=False, root_path=kitti_root)
    with caplog.at_level(logging.WARNING, logger="pcdet"):
        assert ds.get_road_plane("000000") is None
    assert "planes/000000.txt" in caplog.text


def test_road_plane_is_normalised_with_upward_normal(tmp_path):
    planes = tmp_path / "training/planes"
    planes.mkdir(parents=True)
    (planes / "000000.txt").write_text("# Plane\nWidth 4\nHeight 1\n0.0 2.0 0.0 -3.4\n")
    ds = KittiDataset.__new__(KittiDataset)  # only the file reader is exercised
    ds.root_split_path, ds._missing_planes = tmp_path / "training", 0
    np.testing.assert_allclose(ds.get_road_plane("000000"), [0.0, -1.0, 0.0, 1.7])


@needs_kitti
def test_evaluation_scores_gt_boxes_above_shifted_ones(kitti_root):
    ds = KittiDataset(_dataset_cfg(), CLASSES, training=False, root_path=kitti_root)

    def detections(shift: float) -> list[dict]:
        out = []
        for info in ds.kitti_infos:
            annos = info["annos"]
            names = annos["name"][: len(annos["gt_boxes_lidar"])]
            keep = np.isin(names, CLASSES)
            boxes = annos["gt_boxes_lidar"][keep].copy()
            boxes[:, 0] += shift
            pred = {
                "pred_boxes": boxes,
                "pred_scores": np.linspace(0.9, 0.5, keep.sum()).astype(np.float32),
                "pred_labels": np.array([CLASSES.index(n) + 1 for n in names[keep]]),
            }
            batch = {
                "frame_id": [info["point_cloud"]["lidar_idx"]],
                "calib": [Calibration(info["calib"])],
                "image_shape": info["image"]["image_shape"][None],
            }
            out += ds.generate_prediction_dicts(batch, [pred], CLASSES)
        return out

    result_str, exact = ds.evaluation(detections(0.0), CLASSES)
    _, shifted = ds.evaluation(detections(5.0), CLASSES)
    assert "Car" in result_str
    assert exact["Car_3d/moderate_R40"] > 0 and exact["Car_bev/easy"] > 0
    assert shifted["Car_3d/moderate_R40"] == 0 and shifted["Car_bev/easy"] == 0


@needs_kitti
def test_missing_road_planes_are_one_counted_data_issue(kitti_root, caplog):
    """The shared frames have no planes/: each lookup is counted, and only the 1st (10th, 100th, ...) is logged —
    the gt sampler no longer adds a second warning of its own."""
    ds = KittiDataset(_dataset_cfg(), CLASSES, training=True, root_path=kitti_root)
    with caplog.at_level("WARNING"):
        assert ds.get_road_plane("000000") is None and ds.get_road_plane("000001") is None
    assert ds.data_issues.totals()["missing_road_plane"] == 2
    assert caplog.text.count("road plane file missing") == 1 and "planes/000000.txt" in caplog.text
