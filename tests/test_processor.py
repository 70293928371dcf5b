"""Point feature encoding, data processing (crop, shuffle, voxelise, sample) and batch collation."""

import numpy as np
import pytest
from easydict import EasyDict

from pcdet.datasets.dataset import DatasetTemplate
from pcdet.datasets.processor.data_processor import DataProcessor, _Voxelizer
from pcdet.datasets.processor.point_feature_encoder import PointFeatureEncoder

PC_RANGE = np.array([0.0, -4.0, -2.0, 8.0, 4.0, 2.0], dtype=np.float32)


def _voxel_cfg(voxel_size=(0.5, 0.5, 1.0), max_points=3, max_voxels=(10000, 10000)):
    return EasyDict(
        NAME="transform_points_to_voxels",
        VOXEL_SIZE=list(voxel_size),
        MAX_POINTS_PER_VOXEL=max_points,
        MAX_NUMBER_OF_VOXELS={"train": max_voxels[0], "test": max_voxels[1]},
    )


def _clustered_points(rng, num=3000):
    """Points in a few dense clumps (many cells over the per-voxel cap) plus a sparse background."""
    centres = rng.uniform(PC_RANGE[0:3] + 0.5, PC_RANGE[3:6] - 0.5, size=(6, 3))
    clumps = centres[rng.integers(0, 6, num // 2)] + rng.normal(0, 0.1, (num // 2, 3))
    background = rng.uniform(PC_RANGE[0:3], PC_RANGE[3:6], size=(num - num // 2, 3))
    xyz = np.concatenate([clumps, background]).astype(np.float32)
    xyz = xyz[((xyz >= PC_RANGE[0:3]) & (xyz < PC_RANGE[3:6])).all(axis=1)]
    return np.hstack([xyz, rng.uniform(0, 1, (len(xyz), 1)).astype(np.float32)])


def test_voxel_counts_match_a_naive_cell_count(device):
    rng = np.random.default_rng(0)
    points = _clustered_points(rng)
    proc = DataProcessor([_voxel_cfg()], PC_RANGE, training=False, num_point_features=4)
    if device.type == "cpu":  # the data pipeline's own path
        out = proc.forward({"points": points.copy(), "use_lead_xyz": True})
        voxels, coords, num = out["voxels"], out["voxel_coords"], out["voxel_num_points"]
    else:
        voxelizer = _Voxelizer([0.5, 0.5, 1.0], PC_RANGE, 4, max_points=3, max_voxels=10000, device=device)
        voxels, coords, num = voxelizer.generate(points)

    cells = np.floor((points[:, 0:3] - PC_RANGE[0:3]) / np.array([0.5, 0.5, 1.0])).astype(np.int64)
    uniq, counts = np.unique(cells, axis=0, return_counts=True)
    assert counts.max() > 3  # the test exercises the per-voxel cap
    assert len(voxels) == len(uniq)
    assert num.sum() == np.minimum(counts, 3).sum()
    assert voxels.shape[1:] == (3, 4) and coords.shape[1] == 3
    # coords are (z, y, x): reversed, they must be exactly the occupied cells
    np.testing.assert_array_equal(np.unique(coords[:, ::-1], axis=0), uniq)
    # every stored point lies in its voxel's cell, and unused slots are zero
    for v in range(len(voxels)):
        real = voxels[v, : num[v]]
        cell = np.floor((real[:, 0:3] - PC_RANGE[0:3]) / np.array([0.5, 0.5, 1.0])).astype(np.int64)
        assert (cell == coords[v, ::-1]).all()
        assert not voxels[v, num[v] :].any()
    np.testing.assert_array_equal(proc.grid_size, [16, 16, 4])


def test_voxel_cap_and_out_of_range_points_are_dropped():
    rng = np.random.default_rng(1)
    points = _clustered_points(rng)
    outside = np.array([[-1.0, 0, 0, 1], [8.5, 0, 0, 1], [1, 0, 2.5, 1]], dtype=np.float32)
    proc = DataProcessor([_voxel_cfg(max_voxels=(50, 10000))], PC_RANGE, training=True, num_point_features=4)
    out = proc.forward({"points": np.concatenate([points, outside]), "use_lead_xyz": True})
    assert len(out["voxels"]) == 50  # training cap
    test_proc = DataProcessor([_voxel_cfg()], PC_RANGE, training=False, num_point_features=4)
    only_outside = test_proc.forward({"points": outside.copy(), "use_lead_xyz": True})
    assert len(only_outside["voxels"]) == 0


def test_voxeliser_survives_pickling():
    """Loader workers receive the processor by pickle; the lazily built spconv object must not travel."""
    import pickle

    proc = DataProcessor([_voxel_cfg()], PC_RANGE, training=False, num_point_features=4)
    points = _clustered_points(np.random.default_rng(2), 200)
    first = proc.forward({"points": points.copy(), "use_lead_xyz": True})
    clone = pickle.loads(pickle.dumps(proc))
    again = clone.forward({"points": points.copy(), "use_lead_xyz": True})
    np.testing.assert_array_equal(first["voxel_coords"], again["voxel_coords"])


def test_mask_points_and_boxes_outside_range():
    cfg = [EasyDict(NAME="mask_points_and_boxes_outside_range", REMOVE_OUTSIDE_BOXES=True)]
    points = np.array([[1, 0, 0, 0], [9, 0, 0, 0], [1, -5, 0, 0], [7.9, 3.9, 5.0, 0]], dtype=np.float32)
    boxes = np.array(
        [[1, 0, 0, 2, 1, 1, 0, 1], [7.9, 0, 0, 4, 2, 1, 0, 1], [8.5, 0, 0, 4, 2, 1, 0, 2], [1, 0, 3, 1, 1, 1, 0, 1]],
        dtype=np.float32,
    )
    train = DataProcessor(cfg, PC_RANGE, training=True, num_point_features=4).forward(
        {"points": points.copy(), "gt_boxes": boxes.copy()}
    )
    # x/y crop only (z is not checked, as OpenPCDet)
    np.testing.assert_array_equal(train["points"], points[[0, 3]])
    # box kept iff its centre is inside the 3D range
    np.testing.assert_array_equal(train["gt_boxes"], boxes[[0, 1]])
    test = DataProcessor(cfg, PC_RANGE, training=False, num_point_features=4).forward(
        {"points": points.copy(), "gt_boxes": boxes.copy()}
    )
    assert len(test["gt_boxes"]) == 4  # boxes are only filtered for training


def test_shuffle_points_only_in_training():
    cfg = [EasyDict(NAME="shuffle_points", SHUFFLE_ENABLED={"train": True, "test": False})]
    points = np.arange(400, dtype=np.float32).reshape(100, 4)
    np.random.seed(0)
    shuffled = DataProcessor(cfg, PC_RANGE, True, 4).forward({"points": points.copy()})["points"]
    assert not np.array_equal(shuffled, points)
    np.testing.assert_array_equal(np.sort(shuffled[:, 0]), points[:, 0])
    kept = DataProcessor(cfg, PC_RANGE, False, 4).forward({"points": points.copy()})["points"]
    np.testing.assert_array_equal(kept, points)


@pytest.mark.parametrize("target", [50, 150, 1000])
def test_sample_points_down_and_up(target):
    cfg = [EasyDict(NAME="sample_points", NUM_POINTS={"train": target, "test": -1})]
    rng = np.random.default_rng(3)
    near = np.hstack([rng.uniform(0, 20, (80, 3)), np.zeros((80, 1))])
    far = np.hstack([rng.uniform(45, 60, (20, 3)), np.ones((20, 1))])
    points = np.concatenate([near, far]).astype(np.float32)
    out = DataProcessor(cfg, PC_RANGE, True, 4).forward({"points": points.copy()})["points"]
    assert len(out) == target
    assert set(map(tuple, out)) <= set(map(tuple, points))
    if target < len(points):
        assert (out[:, 3] == 1).sum() == 20  # all far points survive down-sampling
    else:
        assert len(set(map(tuple, out))) == len(points)  # every point kept before repeating
    unchanged = DataProcessor(cfg, PC_RANGE, False, 4).forward({"points": points.copy()})["points"]
    np.testing.assert_array_equal(unchanged, points)


def test_unknown_processor_is_rejected():
    with pytest.raises(ValueError, match="transform_points_to_voxel'.*known"):
        DataProcessor([EasyDict(NAME="transform_points_to_voxel")], PC_RANGE, True, 4)


def test_point_feature_encoder_orders_columns():
    enc = PointFeatureEncoder(
        EasyDict(
            encoding_type="absolute_coordinates_encoding",
            used_feature_list=["x", "y", "z", "elongation"],
            src_feature_list=["x", "y", "z", "intensity", "elongation"],
        )
    )
    points = np.arange(10, dtype=np.float32).reshape(2, 5)
    out = enc.forward({"points": points})
    np.testing.assert_array_equal(out["points"], points[:, [0, 1, 2, 4]])
    assert out["use_lead_xyz"] is True and enc.num_point_features == 4
    with pytest.raises(ValueError, match="intensity2"):
        PointFeatureEncoder(
            EasyDict(encoding_type="absolute_coordinates_encoding", used_feature_list=["x", "y", "z", "intensity2"],
                     src_feature_list=["x", "y", "z", "intensity"])
        )  # fmt: skip
    with pytest.raises(ValueError, match="encoding_type"):
        PointFeatureEncoder(EasyDict(encoding_type="nope", used_feature_list=["x"], src_feature_list=["x", "y", "z"]))


def test_collate_batch_pads_boxes_and_prefixes_batch_index():
    samples = [
        {
            "points": np.ones((3, 4), np.float32),
            "voxels": np.ones((2, 5, 4), np.float32),
            "voxel_coords": np.array([[0, 1, 2], [0, 3, 4]], np.int32),
            "voxel_num_points": np.array([1, 2], np.int32),
            "gt_boxes": np.ones((2, 8), np.float32),
            "frame_id": "000001",
            "calib": "calib-a",
            "image_shape": np.array([375, 1242]),
        },
        {
            "points": np.full((2, 4), 2, np.float32),
            "voxels": np.ones((1, 5, 4), np.float32),
            "voxel_coords": np.array([[0, 5, 6]], np.int32),
            "voxel_num_points": np.array([3], np.int32),
            "gt_boxes": np.full((4, 8), 2, np.float32),
            "frame_id": "000002",
            "calib": "calib-b",
            "image_shape": np.array([370, 1224]),
        },
    ]
    batch = DatasetTemplate.collate_batch(samples)
    assert batch["batch_size"] == 2
    assert batch["points"].shape == (5, 5)
    np.testing.assert_array_equal(batch["points"][:, 0], [0, 0, 0, 1, 1])
    np.testing.assert_array_equal(batch["voxel_coords"], [[0, 0, 1, 2], [0, 0, 3, 4], [1, 0, 5, 6]])
    assert batch["voxels"].shape == (3, 5, 4)
    np.testing.assert_array_equal(batch["voxel_num_points"], [1, 2, 3])
    assert batch["gt_boxes"].shape == (2, 4, 8)
    assert (batch["gt_boxes"][0, 2:] == 0).all() and (batch["gt_boxes"][0, :2] == 1).all()
    assert (batch["gt_boxes"][1] == 2).all()
    assert batch["calib"] == ["calib-a", "calib-b"]
    assert list(batch["frame_id"]) == ["000001", "000002"]
    assert batch["image_shape"].shape == (2, 2)


def test_distributed_sampler_pads_ranks_equally_and_keeps_order_in_eval():
    from pcdet.datasets import DistributedSampler

    data = list(range(5))
    ranks = [list(DistributedSampler(data, num_replicas=2, rank=r, shuffle=False)) for r in range(2)]
    assert ranks == [[0, 2, 4], [1, 3, 0]]  # padded by wrapping around; interleaving restores 0..4
    tiny = [list(DistributedSampler([7], num_replicas=3, rank=r, shuffle=False)) for r in range(3)]
    assert tiny == [[0], [0], [0]]
    shuffled = [DistributedSampler(list(range(10)), num_replicas=2, rank=r, shuffle=True) for r in range(2)]
    for s in shuffled:
        s.set_epoch(3)
    together = sorted(list(shuffled[0]) + list(shuffled[1]))
    assert together == list(range(10))  # same permutation on every rank: a partition of the data
