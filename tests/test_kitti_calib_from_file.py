"""KittiDataset samples take their calibration from ``calib/<id>.txt`` (as OpenPCDet), not from the infos' copy: a
corrected file is used without rebuilding the infos, a missing one is an error naming it."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from easydict import EasyDict

from pcdet.config import cfg_from_yaml_file
from pcdet.datasets.kitti.kitti_dataset import KittiDataset

REPO = Path(__file__).resolve().parents[1]
KITTI_REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "kitti_real"
CLASSES = ["Car", "Pedestrian", "Cyclist"]
FRAME = "000001"  # a Car and a Cyclist


@pytest.fixture
def kitti(tmp_path) -> KittiDataset:
    """Frame 000001 with a writable copy of its calib file and infos made from it; the rest links to the shared
    (read-only) frames."""
    if not KITTI_REAL.is_dir():
        pytest.skip("shared KITTI sample frames not available")
    root = tmp_path / "kitti"
    (root / "ImageSets").mkdir(parents=True)
    (root / "ImageSets" / "val.txt").write_text(FRAME + "\n")
    training = root / "training"
    training.mkdir()
    for sub in ("velodyne", "label_2", "image_2"):
        (training / sub).symlink_to(KITTI_REAL / "training" / sub, target_is_directory=True)
    (training / "calib").mkdir()
    shutil.copy(KITTI_REAL / "training" / "calib" / f"{FRAME}.txt", training / "calib")
    cfg = cfg_from_yaml_file(REPO / "tools/cfgs/dataset_configs/kitti_dataset.yaml", EasyDict())
    cfg.INFO_PATH = {"train": [], "test": []}
    dataset = KittiDataset(cfg, CLASSES, training=False, root_path=root)
    dataset.kitti_infos = dataset.get_infos(num_workers=1, count_inside_pts=False, sample_id_list=[FRAME])
    return dataset


def _matrices(path: Path) -> dict[str, np.ndarray]:
    rows = dict(line.split(":", 1) for line in path.read_text().splitlines() if ":" in line)
    return {key.strip(): np.array([float(v) for v in vals.split()]) for key, vals in rows.items()}


def test_a_corrected_calib_file_is_used_without_rebuilding_the_infos(kitti):
    calib_file = kitti.root_split_path / "calib" / f"{FRAME}.txt"
    before = kitti[0]
    # Move the LiDAR 1 m along the reference camera's x axis: Tr_velo_to_cam's translation grows by d = (1, 0, 0).
    text = calib_file.read_text().splitlines()
    mats = _matrices(calib_file)
    tr = mats["Tr_velo_to_cam"].reshape(3, 4)
    shifted = tr.copy()
    shifted[0, 3] += 1.0
    text = [
        "Tr_velo_to_cam: " + " ".join(f"{v:.12e}" for v in shifted.ravel())
        if line.startswith("Tr_velo_to_cam")
        else line
        for line in text
    ]
    calib_file.write_text("\n".join(text) + "\n")

    after = kitti[0]
    np.testing.assert_allclose(after["calib"].V2C, shifted, rtol=0, atol=1e-6)
    # LiDAR = R^T (ref - t): the boxes (labelled in the camera frame) move by -R^T d in the LiDAR frame.
    expected_shift = -tr[:, :3].T @ np.array([1.0, 0.0, 0.0])
    assert len(before["gt_boxes"]) == len(after["gt_boxes"]) == 2
    np.testing.assert_allclose(
        after["gt_boxes"][:, 0:3] - before["gt_boxes"][:, 0:3], np.tile(expected_shift, (2, 1)), atol=1e-4
    )
    np.testing.assert_array_equal(after["gt_boxes"][:, 3:6], before["gt_boxes"][:, 3:6])
    # The infos still hold the old matrix: the sample did not come from them.
    np.testing.assert_allclose(kitti.kitti_infos[0]["calib"]["Tr_velo_to_cam"][:3], tr, atol=1e-6)


def test_a_missing_calib_file_is_an_error_naming_it(kitti):
    calib_file = kitti.root_split_path / "calib" / f"{FRAME}.txt"
    calib_file.unlink()
    with pytest.raises(FileNotFoundError, match=rf"calib/{FRAME}\.txt.*frame {FRAME}"):
        kitti[0]
