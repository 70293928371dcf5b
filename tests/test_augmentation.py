"""Augmentation: whole-scene transforms keep which points lie in which box; gt sampling pastes non-colliding objects
with exactly their database points, on the road plane when one is given."""

import logging
import pickle

import numpy as np
import pytest
from easydict import EasyDict

from pcdet.datasets.augmentor import augmentor_utils
from pcdet.datasets.augmentor.data_augmentor import DataAugmentor
from pcdet.datasets.augmentor.database_sampler import DataBaseSampler
from pcdet.ops.iou3d_nms.iou3d_nms_utils import boxes_bev_iou_cpu
from pcdet.ops.roiaware_pool3d.roiaware_pool3d_utils import points_in_boxes_cpu
from pcdet.utils.calibration_kitti import Calibration

CLASSES = ["Car", "Pedestrian", "Cyclist"]


def _scene(rng, num_boxes=4, pts_per_box=60, background=400):
    """Separated boxes with points well inside them, plus background points well outside every box."""
    centres = np.array([[8.0 + 9 * i, (-1) ** i * 4.0, -0.8] for i in range(num_boxes)])
    dims = np.tile([3.9, 1.6, 1.5], (num_boxes, 1))
    heading = rng.uniform(-np.pi, np.pi, (num_boxes, 1))
    boxes = np.hstack([centres, dims, heading]).astype(np.float32)
    inside = []
    for box in boxes:
        local = rng.uniform(-0.4, 0.4, (pts_per_box, 3)) * box[3:6]  # 10% margin from every face
        c, s = np.cos(box[6]), np.sin(box[6])
        xy = local[:, 0:2] @ np.array([[c, s], [-s, c]]) + box[0:2]
        inside.append(np.hstack([xy, local[:, 2:3] + box[2]]))
    bg = rng.uniform([0, -20, -2], [45, 20, 1], (background * 3, 3))
    enlarged = boxes.copy()
    enlarged[:, 3:6] *= 1.2
    bg = bg[points_in_boxes_cpu(bg, enlarged).sum(axis=0) == 0][:background]
    xyz = np.concatenate([*inside, bg]).astype(np.float32)
    points = np.hstack([xyz, rng.uniform(0, 1, (len(xyz), 1)).astype(np.float32)])
    return boxes, points


def _membership(points, boxes):
    return points_in_boxes_cpu(points[:, 0:3], boxes[:, 0:7])


@pytest.mark.parametrize(
    "transform",
    [
        lambda b, p: augmentor_utils.random_flip_along_x(b, p, enable=True)[:2],
        lambda b, p: augmentor_utils.random_flip_along_y(b, p, enable=True)[:2],
        lambda b, p: augmentor_utils.global_rotation(b, p, [-np.pi / 4, np.pi / 4])[:2],
        lambda b, p: augmentor_utils.global_rotation(b, p, None, angle=2.5)[:2],
        lambda b, p: augmentor_utils.global_scaling(b, p, [0.95, 1.05])[:2],
        lambda b, p: augmentor_utils.global_scaling(b, p, None, scale=0.5)[:2],
        lambda b, p: augmentor_utils.global_translation(b, p, [0.5, 0.5, 0.2])[:2],
    ],
    ids=["flip_x", "flip_y", "rotation", "rotation_large", "scaling", "scaling_half", "translation"],
)
def test_each_augmentation_keeps_points_in_their_boxes(transform):
    rng = np.random.default_rng(0)
    boxes, points = _scene(rng)
    before = _membership(points, boxes)
    assert before.sum() == 4 * 60
    new_boxes, new_points = transform(boxes.copy(), points.copy())
    np.testing.assert_array_equal(_membership(new_points, new_boxes), before)
    np.testing.assert_array_equal(new_points[:, 3], points[:, 3])  # features other than xyz untouched


def test_transforms_move_boxes_as_expected():
    box = np.array([[10.0, 2.0, -1.0, 4.0, 2.0, 1.5, 0.3]], dtype=np.float32)
    pts = np.array([[10.0, 2.0, -1.0, 0.5]], dtype=np.float32)
    b, p, _ = augmentor_utils.random_flip_along_x(box.copy(), pts.copy(), enable=True)
    np.testing.assert_allclose(b[0], [10, -2, -1, 4, 2, 1.5, -0.3], rtol=1e-6)
    b, p, _ = augmentor_utils.random_flip_along_y(box.copy(), pts.copy(), enable=True)
    np.testing.assert_allclose(b[0], [-10, 2, -1, 4, 2, 1.5, -0.3 - np.pi], rtol=1e-6)
    b, p, _ = augmentor_utils.global_rotation(box.copy(), pts.copy(), None, angle=np.pi / 2)
    np.testing.assert_allclose(b[0], [-2, 10, -1, 4, 2, 1.5, 0.3 + np.pi / 2], atol=1e-5)
    np.testing.assert_allclose(p[0, :3], [-2, 10, -1], atol=1e-5)
    b, p, s = augmentor_utils.global_scaling(box.copy(), pts.copy(), None, scale=2.0)
    np.testing.assert_allclose(b[0], [20, 4, -2, 8, 4, 3, 0.3], rtol=1e-6)
    b, p, _ = augmentor_utils.global_scaling(box.copy(), pts.copy(), [1.0, 1.0])  # degenerate range: no-op
    np.testing.assert_array_equal(b, box)
    b, p, off = augmentor_utils.global_translation(box.copy(), pts.copy(), 0.0)
    np.testing.assert_array_equal(b, box)  # zero std: no shift


def _aug_cfg(aug_list, disable=()):
    return EasyDict({"DISABLE_AUG_LIST": list(disable), "AUG_CONFIG_LIST": aug_list})


WORLD_AUGS = [
    {"NAME": "random_world_flip", "ALONG_AXIS_LIST": ["x", "y"]},
    {"NAME": "random_world_rotation", "WORLD_ROT_ANGLE": [-np.pi, np.pi]},
    {"NAME": "random_world_scaling", "WORLD_SCALE_RANGE": [0.9, 1.1]},
    {"NAME": "random_world_translation", "NOISE_TRANSLATE_STD": [0.3, 0.3, 0.1]},
]


def test_augmentor_pipeline_keeps_membership_wraps_heading_and_applies_mask(tmp_path):
    np.random.seed(3)
    rng = np.random.default_rng(3)
    boxes, points = _scene(rng)
    names = np.array(["Car", "Van", "Pedestrian", "Car"])
    aug = DataAugmentor(tmp_path, _aug_cfg(WORLD_AUGS), CLASSES)
    before = _membership(points, boxes)
    for _ in range(5):
        out = aug.forward(
            {
                "points": points.copy(),
                "gt_boxes": boxes.copy(),
                "gt_names": names.copy(),
                "gt_boxes_mask": np.array([n in CLASSES for n in names]),
                "calib": "dropped",
            }
        )
        assert list(out["gt_names"]) == ["Car", "Pedestrian", "Car"]
        np.testing.assert_array_equal(_membership(out["points"], out["gt_boxes"]), before[[0, 2, 3]])
        assert (out["gt_boxes"][:, 6] >= -np.pi).all() and (out["gt_boxes"][:, 6] < np.pi).all()
        assert "calib" not in out and "gt_boxes_mask" not in out
        assert {"flip_x", "flip_y", "noise_rot", "noise_scale", "noise_translate"} <= set(out)


def test_disable_list_and_unknown_names(tmp_path):
    aug = DataAugmentor(tmp_path, _aug_cfg(WORLD_AUGS, disable=["random_world_rotation"]), CLASSES)
    assert len(aug.data_augmentor_queue) == 3
    # a bare list is accepted too (no disable list)
    assert len(DataAugmentor(tmp_path, [EasyDict(a) for a in WORLD_AUGS], CLASSES).data_augmentor_queue) == 4
    with pytest.raises(ValueError, match="random_world_shear"):
        DataAugmentor(tmp_path, _aug_cfg([{"NAME": "random_world_shear"}]), CLASSES)
    with pytest.raises(ValueError, match="ALONG_AXIS_LIST"):
        DataAugmentor(tmp_path, _aug_cfg([{"NAME": "random_world_flip", "ALONG_AXIS_LIST": ["z"]}]), CLASSES)


# --------------------------------------------------------------------------------------------------- gt sampling
def _make_database(root, rng):
    """Cars and pedestrians spread over the scene, each with 30 points strictly inside its box."""
    (root / "gt_database").mkdir(parents=True)
    db = {"Car": [], "Pedestrian": []}
    specs = [("Car", [3.9, 1.6, 1.5])] * 12 + [("Pedestrian", [0.8, 0.6, 1.7])] * 8
    for k, (name, dims) in enumerate(specs):
        box = np.array([rng.uniform(5, 60), rng.uniform(-30, 30), -1.0, *dims, rng.uniform(-np.pi, np.pi)])
        local = rng.uniform(-0.45, 0.45, (30, 3)) * box[3:6]
        c, s = np.cos(box[6]), np.sin(box[6])
        rel = np.hstack([local[:, 0:2] @ np.array([[c, s], [-s, c]]), local[:, 2:3], rng.uniform(0, 1, (30, 1))])
        path = root / "gt_database" / f"{k:06d}_{name}_0.bin"
        rel.astype(np.float32).tofile(path)
        db[name].append(
            {
                "name": name,
                "path": f"gt_database/{path.name}",
                "image_idx": f"{k:06d}",
                "gt_idx": 0,
                "box3d_lidar": box.astype(np.float32),
                "num_points_in_gt": 30 if k % 4 else 3,  # every 4th object is too sparse
                "difficulty": -1 if k % 5 == 0 else 0,
                "bbox": np.array([0, 0, 10, 10], np.float32),
                "score": -1.0,
            }
        )
    with open(root / "dbinfos.pkl", "wb") as f:
        pickle.dump(db, f)
    return db


def _sampler_cfg(**overrides):
    cfg = {
        "NAME": "gt_sampling",
        "USE_ROAD_PLANE": False,
        "DB_INFO_PATH": ["dbinfos.pkl"],
        "PREPARE": {"filter_by_min_points": ["Car:5", "Pedestrian:5"], "filter_by_difficulty": [-1]},
        "SAMPLE_GROUPS": ["Car:6", "Pedestrian:4"],
        "NUM_POINT_FEATURES": 4,
        "DATABASE_WITH_FAKELIDAR": False,
        "REMOVE_EXTRA_WIDTH": [0.0, 0.0, 0.0],
        "LIMIT_WHOLE_SCENE": True,
    }
    cfg.update(overrides)
    return EasyDict(cfg)


def _scene_dict(rng):
    boxes, points = _scene(rng, num_boxes=2)
    return {
        "points": points,
        "gt_boxes": boxes,
        "gt_names": np.array(["Car", "Car"]),
        "gt_boxes_mask": np.array([True, True]),
    }


def test_gt_sampling_prepare_filters(tmp_path):
    db = _make_database(tmp_path, np.random.default_rng(0))
    sampler = DataBaseSampler(tmp_path, _sampler_cfg(), CLASSES)
    for name in ("Car", "Pedestrian"):
        expected = [i for i in db[name] if i["num_points_in_gt"] >= 5 and i["difficulty"] != -1]
        assert [i["path"] for i in sampler.db_infos[name]] == [i["path"] for i in expected]
    assert sampler.db_infos["Cyclist"] == []
    assert "Cyclist" not in sampler.sample_groups  # empty database: never sampled


def test_gt_sampling_pastes_non_colliding_objects_with_their_points(tmp_path):
    np.random.seed(0)
    rng = np.random.default_rng(1)
    _make_database(tmp_path, rng)
    sampler = DataBaseSampler(tmp_path, _sampler_cfg(), CLASSES)
    data = _scene_dict(rng)
    scene_boxes = data["gt_boxes"].copy()
    out = sampler(data)

    boxes, names = out["gt_boxes"], out["gt_names"]
    num_new = len(boxes) - 2
    assert num_new > 0
    np.testing.assert_array_equal(boxes[:2], scene_boxes)
    assert len(names) == len(boxes) == len(out["gt_boxes_mask"])
    # LIMIT_WHOLE_SCENE: the scene already has 2 cars, so at most 6 - 2 cars are added
    assert (names == "Car").sum() <= 6 and (names == "Pedestrian").sum() <= 4
    # no two boxes (old or new) overlap in BEV
    iou = boxes_bev_iou_cpu(boxes[:, 0:7], boxes[:, 0:7])
    np.fill_diagonal(iou, 0)
    assert iou.max() == 0
    # each pasted box holds exactly its 30 database points; the scene's own boxes keep theirs
    member = _membership(out["points"], boxes)
    np.testing.assert_array_equal(member[2:].sum(axis=1), 30)
    np.testing.assert_array_equal(member[:2].sum(axis=1), 60)


def test_gt_sampling_rejects_candidates_that_collide(tmp_path):
    np.random.seed(0)
    _make_database(tmp_path, np.random.default_rng(2))
    sampler = DataBaseSampler(tmp_path, _sampler_cfg(SAMPLE_GROUPS=["Car:3"], LIMIT_WHOLE_SCENE=False), CLASSES)
    cars = sampler.db_infos["Car"]
    blocker = np.asarray(cars[0]["box3d_lidar"])[None].copy()
    twin = np.asarray(cars[1]["box3d_lidar"]).copy()
    # candidate order: cars[0] (blocked by the scene box), cars[1], a copy of cars[1] shifted by 0.5 m (collides)
    shifted = dict(cars[1], box3d_lidar=twin + np.array([0.5, 0, 0, 0, 0, 0, 0], np.float32))
    sampler.db_infos["Car"] = [cars[0], cars[1], shifted]
    sampler.sample_groups["Car"].update(pointer=0, indices=np.arange(3))
    data = {
        "points": np.zeros((0, 4), np.float32),
        "gt_boxes": blocker.astype(np.float32),
        "gt_names": np.array(["Car"]),
        "gt_boxes_mask": np.array([True]),
    }
    out = sampler(data)
    assert len(out["gt_boxes"]) == 2  # only cars[1] was added
    np.testing.assert_allclose(out["gt_boxes"][1], twin)


def _simple_calib():
    """LiDAR x forward → camera z, LiDAR y left → camera -x, LiDAR z up → camera -y."""
    v2c = np.array([[0, -1, 0, 0], [0, 0, -1, 0], [1, 0, 0, 0]], dtype=np.float64)
    p2 = np.array([[700, 0, 600, 0], [0, 700, 180, 0], [0, 0, 1, 0]], dtype=np.float64)
    return Calibration({"P2": p2, "R0_rect": np.eye(3), "Tr_velo_to_cam": v2c})


def test_gt_sampling_puts_objects_on_the_road_plane(tmp_path):
    np.random.seed(0)
    rng = np.random.default_rng(4)
    _make_database(tmp_path, rng)
    sampler = DataBaseSampler(tmp_path, _sampler_cfg(USE_ROAD_PLANE=True), CLASSES)
    data = _scene_dict(rng)
    # ground 1.7 m below the sensor: camera y = 1.7, i.e. 0*x - 1*y + 0*z + 1.7 = 0 (normal up)
    data.update(road_plane=np.array([0.0, -1.0, 0.0, 1.7]), calib=_simple_calib())
    out = sampler(data)
    new = out["gt_boxes"][2:]
    assert len(new) > 0
    np.testing.assert_allclose(new[:, 2] - new[:, 5] / 2, -1.7, atol=1e-4)  # bottoms on the ground
    member = _membership(out["points"], out["gt_boxes"])
    np.testing.assert_array_equal(member[2:].sum(axis=1), 30)  # points moved with their boxes


def test_gt_sampling_without_road_plane_keeps_heights_and_leaves_the_warning_to_the_dataset(tmp_path, caplog):
    """The dataset counts and reports the missing plane file (test_kitti_data); the sampler adds no second warning."""
    np.random.seed(0)
    rng = np.random.default_rng(5)
    db = _make_database(tmp_path, rng)
    sampler = DataBaseSampler(tmp_path, _sampler_cfg(USE_ROAD_PLANE=True), CLASSES)
    with caplog.at_level(logging.WARNING, logger="pcdet"):
        out = sampler(_scene_dict(rng))  # no road_plane / calib in the sample
    assert "plane" not in caplog.text
    heights = {float(i["box3d_lidar"][2]) for v in db.values() for i in v}
    assert set(out["gt_boxes"][2:, 2].tolist()) <= heights


def test_gt_sampling_missing_database_and_shared_memory_are_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="dbinfos.pkl"):
        DataBaseSampler(tmp_path, _sampler_cfg(), CLASSES)
    _make_database(tmp_path, np.random.default_rng(6))
    with pytest.raises(NotImplementedError, match="USE_SHARED_MEMORY"):
        DataBaseSampler(tmp_path, _sampler_cfg(USE_SHARED_MEMORY=True), CLASSES)


def test_full_pipeline_with_gt_sampling_keeps_membership(tmp_path):
    """gt sampling followed by the world transforms: pasted boxes still hold exactly their points."""
    np.random.seed(7)
    rng = np.random.default_rng(7)
    _make_database(tmp_path, rng)
    aug = DataAugmentor(tmp_path, _aug_cfg([dict(_sampler_cfg()), *WORLD_AUGS]), CLASSES)
    out = aug.forward(_scene_dict(rng))
    member = _membership(out["points"], out["gt_boxes"])
    assert len(out["gt_boxes"]) > 2
    np.testing.assert_array_equal(member[:2].sum(axis=1), 60)
    np.testing.assert_array_equal(member[2:].sum(axis=1), 30)
