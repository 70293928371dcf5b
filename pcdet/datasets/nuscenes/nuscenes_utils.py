"""nuScenes tables → OpenPCDet's info records, through nuscenes-devkit (an optional dependency: docs/INSTALL.md).

An info is one key frame (``sample``) of the LIDAR_TOP channel: ``lidar_path`` (relative to the data root),
``token``, ``timestamp`` (s), ``ref_from_car`` / ``car_from_global`` (4x4), ``sweeps`` (the ``max_sweeps - 1``
previous LiDAR sweeps, newest first, each with ``lidar_path``, ``sample_data_token``, ``transform_matrix`` (sweep
LiDAR → key-frame LiDAR, None for a repeat of the key frame itself) and ``time_lag`` (s, >= 0)), and for annotated
versions ``gt_boxes (M, 9: x, y, z, dx, dy, dz, heading, vx, vy)`` in the key frame's LiDAR frame,
``gt_boxes_velocity (M, 3)``, ``gt_names`` (detection classes, ``ignore`` for the others), ``gt_boxes_token``,
``num_lidar_pts``, ``num_radar_pts`` — only objects with at least one LiDAR or radar point.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from ...utils.cli import InputError

DETECTION_CLASSES = (
    "car", "truck", "construction_vehicle", "bus", "trailer",
    "barrier", "motorcycle", "bicycle", "pedestrian", "traffic_cone",
)  # fmt: skip
# version → (train split, val split) in nuscenes.utils.splits; the test version has no annotations
VERSION_SPLITS = {
    "v1.0-trainval": ("train", "val"),
    "v1.0-test": ("test", None),
    "v1.0-mini": ("mini_train", "mini_val"),
}
DEVKIT_MISSING = (
    "nuScenes support needs nuscenes-devkit, installed beside numpy 2 without its pins: "
    "pip install -r requirements-nuscenes.txt && pip install --no-deps -r requirements-nuscenes-devkit.txt "
    "(docs/INSTALL.md)"
)


class NuScenesTokenError(InputError, LookupError):
    """A table row refers to a token that no table holds."""


class NuScenesLayoutError(InputError, ValueError):
    """The data set does not fit what is asked of it: the devkit's own consistency check (an ``assert``) failed, e.g.
    on a missing map mask, or the infos hold fewer sweeps than MAX_SWEEPS needs."""


def require_devkit():
    """The ``nuscenes`` package, or an ImportError that says how to install it."""
    try:
        import nuscenes
    except ImportError as exc:
        raise ImportError(DEVKIT_MISSING) from exc
    return nuscenes


def load_nuscenes(version: str, dataroot: str | Path, verbose: bool = False):
    """``nuscenes.NuScenes(version, dataroot)``, with errors that name the missing folder or the dangling token."""
    require_devkit()
    from nuscenes import NuScenes

    dataroot = Path(dataroot)
    table_root = dataroot / version
    if not table_root.is_dir():
        found = sorted(p.name for p in dataroot.glob("v1.0-*") if p.is_dir()) if dataroot.is_dir() else []
        raise FileNotFoundError(
            f"nuScenes version folder {table_root} not found (folders there: {found or 'none'}); set VERSION / "
            "--version to one of them, or generate the synthetic set with python -m "
            "pcdet.datasets.synthetic.generate_nuscenes"
        )
    try:
        return NuScenes(version=version, dataroot=str(dataroot), verbose=verbose)
    except KeyError as exc:  # the devkit's reverse index looks every foreign key up
        raise NuScenesTokenError(
            f"nuScenes tables in {table_root} refer to token {exc.args[0]!r}, which no table holds "
            "(a truncated download or an edited table)"
        ) from exc
    except AssertionError as exc:
        raise NuScenesLayoutError(f"nuscenes-devkit cannot load {table_root}: {exc}") from exc


def get(nusc, table: str, tok: str, what: str):
    """``nusc.get(table, tok)``; a missing token is an error naming it and who referred to it."""
    try:
        return nusc.get(table, tok)
    except KeyError:
        raise NuScenesTokenError(
            f"{table} token {tok!r} ({what}) is not in {Path(nusc.table_root) / (table + '.json')}"
        ) from None


def _transform(translation, rotation, inverse: bool = False) -> np.ndarray:
    from nuscenes.utils.geometry_utils import transform_matrix
    from pyquaternion import Quaternion

    return transform_matrix(translation, Quaternion(rotation), inverse=inverse)


def available_scenes(nusc, logger: logging.Logger) -> list[dict]:
    """Scenes whose first LiDAR key frame is on disk. The others are skipped and counted, as OpenPCDet does for a
    partly downloaded trainval set."""
    found, missing = [], []
    for scene in nusc.scene:
        sample = get(nusc, "sample", scene["first_sample_token"], f"first sample of {scene['name']}")
        sd = get(nusc, "sample_data", sample["data"]["LIDAR_TOP"], f"LIDAR_TOP of sample {sample['token']}")
        path = Path(nusc.dataroot) / sd["filename"]
        (found if path.is_file() else missing).append((scene, path))
    if missing:
        logger.warning(
            f"{len(missing)} of {len(nusc.scene)} scenes skipped: their first LiDAR file is missing (first: "
            f"{missing[0][1]})"
        )
    logger.info(f"nuScenes scenes with data: {len(found)}")
    return [scene for scene, _ in found]


def _sweeps(nusc, ref_sd: dict, ref_lidar_path: str, max_sweeps: int, ref_from_global: np.ndarray) -> list[dict]:
    ref_time = 1e-6 * ref_sd["timestamp"]
    sweeps: list[dict] = []
    cur = ref_sd
    while len(sweeps) < max_sweeps - 1:
        if cur["prev"] == "":
            # no older sweep (start of the scene): repeat the oldest one, or the key frame itself
            sweeps.append(
                sweeps[-1]
                if sweeps
                else {
                    "lidar_path": ref_lidar_path,
                    "sample_data_token": ref_sd["token"],
                    "transform_matrix": None,
                    "time_lag": 0.0,
                }  # fmt: skip
            )
            continue
        cur = get(nusc, "sample_data", cur["prev"], f"prev of sample_data {cur['token']}")
        pose = get(nusc, "ego_pose", cur["ego_pose_token"], f"ego pose of sample_data {cur['token']}")
        cs = get(nusc, "calibrated_sensor", cur["calibrated_sensor_token"], f"sensor of sample_data {cur['token']}")
        global_from_sweep = _transform(pose["translation"], pose["rotation"]) @ _transform(
            cs["translation"], cs["rotation"]
        )
        sweeps.append(
            {
                "lidar_path": cur["filename"],
                "sample_data_token": cur["token"],
                "transform_matrix": ref_from_global @ global_from_sweep,
                "time_lag": ref_time - 1e-6 * cur["timestamp"],
            }
        )
    return sweeps


def _annotations(nusc, sample: dict, ref_sd: dict, ref_pose: dict, ref_cs: dict) -> dict:
    from nuscenes.eval.detection.utils import category_to_detection_name
    from pyquaternion import Quaternion

    anns = [get(nusc, "sample_annotation", t, f"annotation of sample {sample['token']}") for t in sample["anns"]]
    boxes = []
    for ann in anns:
        box = nusc.get_box(ann["token"])
        box.velocity = nusc.box_velocity(ann["token"])  # global frame; rotated along with the box below
        box.translate(-np.array(ref_pose["translation"]))
        box.rotate(Quaternion(ref_pose["rotation"]).inverse)
        box.translate(-np.array(ref_cs["translation"]))
        box.rotate(Quaternion(ref_cs["rotation"]).inverse)
        boxes.append(box)
    num_lidar = np.array([a["num_lidar_pts"] for a in anns], dtype=np.int64)
    num_radar = np.array([a["num_radar_pts"] for a in anns], dtype=np.int64)
    keep = (num_lidar + num_radar) > 0
    centers = np.array([b.center for b in boxes], dtype=np.float64).reshape(-1, 3)
    dims = np.array([b.wlh for b in boxes], dtype=np.float64).reshape(-1, 3)[:, [1, 0, 2]]  # w, l, h → l, w, h
    yaws = np.array([b.orientation.yaw_pitch_roll[0] for b in boxes], dtype=np.float64).reshape(-1, 1)
    velocity = np.array([b.velocity for b in boxes], dtype=np.float64).reshape(-1, 3)
    names = np.array([category_to_detection_name(a["category_name"]) or "ignore" for a in anns], dtype="<U32")
    gt_boxes = np.concatenate([centers, dims, yaws, velocity[:, 0:2]], axis=1)
    return {
        "gt_boxes": gt_boxes[keep],
        "gt_boxes_velocity": velocity[keep],
        "gt_names": names[keep],
        "gt_boxes_token": np.array([a["token"] for a in anns], dtype="<U32")[keep],
        "num_lidar_pts": num_lidar[keep],
        "num_radar_pts": num_radar[keep],
    }


def sample_info(nusc, sample: dict, max_sweeps: int, with_annotations: bool) -> dict:
    """The info record of one key frame (see the module docstring)."""
    ref_sd = get(nusc, "sample_data", sample["data"]["LIDAR_TOP"], f"LIDAR_TOP of sample {sample['token']}")
    ref_cs = get(nusc, "calibrated_sensor", ref_sd["calibrated_sensor_token"], f"sensor of {ref_sd['token']}")
    ref_pose = get(nusc, "ego_pose", ref_sd["ego_pose_token"], f"ego pose of sample_data {ref_sd['token']}")
    ref_from_car = _transform(ref_cs["translation"], ref_cs["rotation"], inverse=True)
    car_from_global = _transform(ref_pose["translation"], ref_pose["rotation"], inverse=True)
    info = {
        "lidar_path": ref_sd["filename"],
        "token": sample["token"],
        "sweeps": _sweeps(nusc, ref_sd, ref_sd["filename"], max_sweeps, ref_from_car @ car_from_global),
        "ref_from_car": ref_from_car,
        "car_from_global": car_from_global,
        "timestamp": 1e-6 * ref_sd["timestamp"],
    }
    if "CAM_FRONT" in sample["data"]:
        cam = get(nusc, "sample_data", sample["data"]["CAM_FRONT"], f"CAM_FRONT of sample {sample['token']}")
        info["cam_front_path"] = cam["filename"]
    if with_annotations:
        info.update(_annotations(nusc, sample, ref_sd, ref_pose, ref_cs))
    return info


def split_scene_names(version: str) -> tuple[list[str], list[str]]:
    """(train scene names, val scene names) of the devkit's predefined splits for ``version``."""
    from nuscenes.utils import splits

    if version not in VERSION_SPLITS:
        raise ValueError(f"unknown nuScenes version {version!r} (known: {', '.join(VERSION_SPLITS)})")
    train, val = VERSION_SPLITS[version]
    return list(getattr(splits, train)), list(getattr(splits, val)) if val else []


def fill_infos(nusc, version: str, max_sweeps: int, logger: logging.Logger) -> tuple[list[dict], list[dict]]:
    """(train infos, val infos) over the scenes on disk; for v1.0-test, (test infos, [])."""
    from tqdm import tqdm

    train_names, val_names = split_scene_names(version)
    scenes = {s["token"]: s["name"] for s in available_scenes(nusc, logger)}
    train_infos, val_infos = [], []
    annotated = version != "v1.0-test"
    for sample in tqdm(nusc.sample, desc="nuScenes infos"):
        name = scenes.get(sample["scene_token"])
        if name is None or (name not in train_names and name not in val_names):
            continue
        info = sample_info(nusc, sample, max_sweeps, with_annotations=annotated)
        (train_infos if name in train_names else val_infos).append(info)
    logger.info(f"nuScenes {version}: {len(train_infos)} train / {len(val_infos)} val samples")
    return train_infos, val_infos
