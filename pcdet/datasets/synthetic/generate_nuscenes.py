"""Synthetic data set in nuScenes' layout (the project's embedded nuScenes default).

    python -m pcdet.datasets.synthetic.generate_nuscenes --out data/synthetic_nuscenes --scenes 10 --samples 10

writes ``<out>/v1.0-mini/*.json`` (the 13 tables nuscenes-devkit loads), ``samples/LIDAR_TOP`` (key frames, 2 Hz)
and ``sweeps/LIDAR_TOP`` (the 9 sweeps between key frames, 20 Hz) as ``.pcd.bin`` (float32 x, y, z, intensity
0-255, ring) and one ``maps/*.png`` per location. Scenes carry v1.0-mini's scene names, ordered so that the first
two are one of the devkit's ``mini_train`` and one of its ``mini_val`` scenes: the devkit's own splits then apply.
``--version v1.0-trainval --scenes N --val_scenes M`` names M scenes from the devkit's ``val`` split and N - M from
its ``train`` split instead (larger sets, e.g. the KD benchmark's). Every scene depends only on (seed, scene index).
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import math
from pathlib import Path

import numpy as np
from PIL import Image

from .nuscenes_world import CATEGORIES, NUSCENES_LIDAR, Sequence, build_sequence_with_all_classes

# v1.0-mini's scene names (devkit splits: 0103 and 0916 are mini_val), interleaved so any prefix of two or more has
# both splits.
MINI_SCENES = (
    "scene-0061", "scene-0103", "scene-0553", "scene-0655", "scene-0757",
    "scene-0796", "scene-0916", "scene-1077", "scene-1094", "scene-1100",
)  # fmt: skip
SWEEPS_PER_SAMPLE = 10  # 20 Hz LiDAR, 2 Hz key frames
SWEEP_DT = 0.05
ANNOTATION_RANGE = 70.0  # m from the ego: objects beyond are not annotated
LOCATIONS = ("singapore-onenorth", "boston-seaport", "singapore-queenstown", "singapore-hollandvillage")
ATTRIBUTES = (
    "vehicle.moving", "vehicle.stopped", "vehicle.parked", "cycle.with_rider", "cycle.without_rider",
    "pedestrian.sitting_lying_down", "pedestrian.standing", "pedestrian.moving",
)  # fmt: skip
VISIBILITY = (("1", "v0-40"), ("2", "v40-60"), ("3", "v60-80"), ("4", "v80-100"))
# LIDAR_TOP as mounted on nuScenes' cars: 0.94 m ahead of the rear axle, x to the right and y forward (yaw -90 deg).
LIDAR_TRANSLATION = (0.94, 0.0, 1.73)
LIDAR_ROTATION = (math.cos(-math.pi / 4), 0.0, 0.0, math.sin(-math.pi / 4))
_BASE_TIME_US = 1_531_281_439_800_013
TABLES = (
    "attribute", "calibrated_sensor", "category", "ego_pose", "instance", "log", "map", "sample",
    "sample_annotation", "sample_data", "scene", "sensor", "visibility",
)  # fmt: skip


def token(*parts) -> str:
    """Deterministic 32-hex token (nuScenes tokens look alike)."""
    return hashlib.md5("/".join(str(p) for p in parts).encode()).hexdigest()


def yaw_quaternion(yaw: float) -> list[float]:
    return [math.cos(yaw / 2), 0.0, 0.0, math.sin(yaw / 2)]


def _rot(yaw: float) -> np.ndarray:
    c, s = math.cos(yaw), math.sin(yaw)
    return np.array([[c, -s], [s, c]])


def _visibility_level(num_points: int) -> str:
    # nuScenes grades camera visibility; here the LiDAR point count stands in for it.
    return "1" if num_points < 5 else "2" if num_points < 15 else "3" if num_points < 40 else "4"


def lidar_points(scan: dict) -> np.ndarray:
    """Ray-frame scan → ``(N, 5)`` float32 in the LIDAR_TOP frame: x, y, z, intensity (0-255), ring index."""
    pts = scan["points"]
    ray_to_lidar = np.array([[0.0, -1.0], [1.0, 0.0]])  # inverse of LIDAR_ROTATION (yaw -90 deg)
    xy = pts[:, 0:2].astype(np.float64) @ ray_to_lidar.T
    elevation = np.arctan2(pts[:, 2], np.hypot(pts[:, 0], pts[:, 1]))
    ring = np.abs(elevation[:, None] - NUSCENES_LIDAR.elevations[None, :]).argmin(axis=1)
    out = np.stack([xy[:, 0], xy[:, 1], pts[:, 2], np.round(pts[:, 3] * 255.0), ring], axis=1)
    return out.astype(np.float32)


class _Tables:
    def __init__(self) -> None:
        self.rows: dict[str, list[dict]] = {name: [] for name in TABLES}

    def add(self, table: str, **row) -> dict:
        self.rows[table].append(row)
        return row


def _static_tables(tables: _Tables) -> None:
    tables.add("sensor", token=token("sensor", "LIDAR_TOP"), channel="LIDAR_TOP", modality="lidar")
    for name, category in CATEGORIES.items():
        tables.add("category", token=token("category", category), name=category, description=f"synthetic {name}")
    for name in ATTRIBUTES:
        tables.add("attribute", token=token("attribute", name), name=name, description=name)
    for level, description in VISIBILITY:
        tables.add("visibility", token=level, level=description, description=f"visibility of whole object {level}")


def scene_names(version: str, num_scenes: int, val_scenes: int | None = None) -> list[str]:
    """The scenes' names, whose membership in the devkit's splits makes them train or val scenes. v1.0-mini: its
    ten names (``val_scenes`` is fixed by them); v1.0-trainval: ``val_scenes`` names of the ``val`` split first, then
    ``num_scenes - val_scenes`` of the ``train`` split."""
    if version == "v1.0-mini":
        if val_scenes is not None:
            raise ValueError("v1.0-mini's scene names fix its val scenes: leave val_scenes unset")
        if not 1 <= num_scenes <= len(MINI_SCENES):
            raise ValueError(f"num_scenes must be 1..{len(MINI_SCENES)} (the v1.0-mini scene names), got {num_scenes}")
        return list(MINI_SCENES[:num_scenes])
    if version != "v1.0-trainval":
        raise ValueError(f"version must be v1.0-mini or v1.0-trainval, got {version!r}")
    from ..nuscenes.nuscenes_utils import require_devkit

    require_devkit()
    from nuscenes.utils import splits

    val_scenes = max(1, round(0.15 * num_scenes)) if val_scenes is None else val_scenes
    if not (0 <= val_scenes <= min(num_scenes, len(splits.val)) and num_scenes - val_scenes <= len(splits.train)):
        raise ValueError(
            f"{num_scenes} scenes with {val_scenes} val scenes do not fit v1.0-trainval's splits "
            f"({len(splits.train)} train, {len(splits.val)} val)"
        )
    return list(splits.val[:val_scenes]) + list(splits.train[: num_scenes - val_scenes])


def _write_scene(out: Path, tables: _Tables, seed: int, index: int, name: str, num_samples: int) -> None:
    rng = np.random.default_rng([seed, index])
    world_rng, sensor_rng = rng.spawn(2)
    seq: Sequence = build_sequence_with_all_classes(world_rng)
    location = LOCATIONS[index % len(LOCATIONS)]
    date = datetime.date(2018, 7, 11) + datetime.timedelta(days=index)  # one log (drive) per scene
    log_name = f"n015-{date.isoformat()}-11-22-45+0800"
    # world (the sensor frame at t = 0) → global: one rotation and offset per log
    g_yaw = float(world_rng.uniform(-math.pi, math.pi))
    g_offset = np.array([world_rng.uniform(300.0, 2000.0), world_rng.uniform(300.0, 2000.0)])
    log = tables.add(
        "log", token=token(seed, name, "log"), logfile=log_name, vehicle="n015",
        date_captured=date.isoformat(), location=location,
    )  # fmt: skip
    calib = tables.add(
        "calibrated_sensor", token=token(seed, name, "calib"), sensor_token=token("sensor", "LIDAR_TOP"),
        translation=list(LIDAR_TRANSLATION), rotation=list(LIDAR_ROTATION), camera_intrinsic=[],
    )  # fmt: skip
    t0_us = _BASE_TIME_US + index * 60_000_000
    samples = [token(seed, name, "sample", k) for k in range(num_samples)]
    for k, sample_token in enumerate(samples):
        tables.add(
            "sample", token=sample_token, timestamp=t0_us + int(round(k * SWEEP_DT * SWEEPS_PER_SAMPLE * 1e6)),
            prev=samples[k - 1] if k > 0 else "", next=samples[k + 1] if k + 1 < num_samples else "",
            scene_token=token(seed, name, "scene"),
        )  # fmt: skip
    tables.add(
        "scene", token=token(seed, name, "scene"), log_token=log["token"], nbr_samples=num_samples,
        first_sample_token=samples[0], last_sample_token=samples[-1], name=name,
        description=f"synthetic {seq.scene.kind} street, ego {seq.ego_speed:.1f} m/s",
    )  # fmt: skip

    # sweeps from 9 before the first key frame (so it has a full history too) to the last key frame
    steps = list(range(-(SWEEPS_PER_SAMPLE - 1), (num_samples - 1) * SWEEPS_PER_SAMPLE + 1))
    sd_tokens = [token(seed, name, "lidar", step) for step in steps]
    annotations: dict[int, list[dict]] = {}  # track → its annotations, in time order
    for i, step in enumerate(steps):
        t = step * SWEEP_DT
        timestamp = t0_us + int(round(t * 1e6))
        key = step >= 0 and step % SWEEPS_PER_SAMPLE == 0
        scan = seq.scan(t, NUSCENES_LIDAR, sensor_rng)
        folder = "samples" if key else "sweeps"
        filename = f"{folder}/LIDAR_TOP/{log_name}__LIDAR_TOP__{timestamp}.pcd.bin"
        lidar_points(scan).tofile(out / filename)

        xy, z, yaw = seq.sensor_pose(t)
        ego_xy = xy - _rot(yaw) @ np.array(LIDAR_TRANSLATION[:2])
        ego_z = z - LIDAR_TRANSLATION[2]
        tables.add(
            "ego_pose", token=sd_tokens[i], timestamp=timestamp,
            translation=[*(_rot(g_yaw) @ ego_xy + g_offset).tolist(), ego_z], rotation=yaw_quaternion(g_yaw + yaw),
        )  # fmt: skip
        sample_index = max(0, -(-step // SWEEPS_PER_SAMPLE))  # a sweep belongs to the next key frame
        tables.add(
            "sample_data", token=sd_tokens[i], sample_token=samples[sample_index], ego_pose_token=sd_tokens[i],
            calibrated_sensor_token=calib["token"], timestamp=timestamp, fileformat="pcd", is_key_frame=key,
            height=0, width=0, filename=filename, prev=sd_tokens[i - 1] if i > 0 else "",
            next=sd_tokens[i + 1] if i + 1 < len(steps) else "",
        )  # fmt: skip
        if key:
            _annotate(seq, t, scan, samples[step // SWEEPS_PER_SAMPLE], xy, g_yaw, g_offset, annotations)
    _link_instances(tables, seed, name, seq, annotations)


def _annotate(seq: Sequence, t: float, scan: dict, sample_token: str, sensor_xy, g_yaw, g_offset, annotations) -> None:
    counts = np.bincount(scan["object"][scan["object"] >= 0], minlength=len(seq.scene.objects))
    for k, (track, box) in enumerate(zip(seq.tracks, seq.boxes(t), strict=True)):
        if np.hypot(*(box[0:2] - sensor_xy)) > ANNOTATION_RANGE:
            continue
        n = int(counts[track.obj])
        annotations.setdefault(k, []).append(
            {
                "sample_token": sample_token,
                "translation": [*(_rot(g_yaw) @ box[0:2] + g_offset).tolist(), float(box[2])],
                "size": [float(box[4]), float(box[3]), float(box[5])],  # w, l, h
                "rotation": yaw_quaternion(g_yaw + box[6]),
                "attribute_tokens": [token("attribute", track.attribute)] if track.attribute else [],
                "visibility_token": _visibility_level(n),
                "num_lidar_pts": n,
                "num_radar_pts": 0,
            }
        )


def _link_instances(tables: _Tables, seed: int, scene_name: str, seq: Sequence, annotations: dict) -> None:
    for k, anns in annotations.items():
        track = seq.tracks[k]
        instance = token(seed, scene_name, "instance", k)
        ann_tokens = [token(instance, j) for j in range(len(anns))]
        for j, ann in enumerate(anns):
            tables.add(
                "sample_annotation", token=ann_tokens[j], instance_token=instance,
                prev=ann_tokens[j - 1] if j > 0 else "", next=ann_tokens[j + 1] if j + 1 < len(anns) else "", **ann,
            )  # fmt: skip
        tables.add(
            "instance", token=instance, category_token=token("category", CATEGORIES[track.name]),
            nbr_annotations=len(anns), first_annotation_token=ann_tokens[0], last_annotation_token=ann_tokens[-1],
        )  # fmt: skip


def generate_nuscenes(out_dir: str | Path, num_scenes: int = 10, num_samples: int = 10, seed: int = 0,
                      version: str = "v1.0-mini", val_scenes: int | None = None) -> Path:  # fmt: skip
    """Write the data set under ``out_dir`` and return its path."""
    names = scene_names(version, num_scenes, val_scenes)
    if num_samples < 2:
        raise ValueError(f"num_samples must be >= 2 (velocities need two key frames), got {num_samples}")
    out = Path(out_dir)
    for sub in ("samples/LIDAR_TOP", "sweeps/LIDAR_TOP", "maps", version):
        (out / sub).mkdir(parents=True, exist_ok=True)
    tables = _Tables()
    _static_tables(tables)
    for index, name in enumerate(names):
        _write_scene(out, tables, seed, index, name, num_samples)
    for location in sorted({row["location"] for row in tables.rows["log"]}):
        map_token = token("map", location)
        filename = f"maps/{map_token}.png"
        Image.new("L", (64, 64), 0).save(out / filename)  # a placeholder semantic prior: no map is modelled
        logs = [row["token"] for row in tables.rows["log"] if row["location"] == location]
        tables.add("map", token=map_token, category="semantic_prior", filename=filename, log_tokens=logs)
    for name, rows in tables.rows.items():
        (out / version / f"{name}.json").write_text(json.dumps(rows, indent=0))
    meta = {
        "generator": "pcdet.datasets.synthetic.generate_nuscenes",
        "seed": seed,
        "scenes": num_scenes,
        "scene_names": names,
        "samples_per_scene": num_samples,
        "version": version,
        "lidar_beams": len(NUSCENES_LIDAR.elevations),
        "annotations": len(tables.rows["sample_annotation"]),
    }
    (out / "synthetic_meta.json").write_text(json.dumps(meta, indent=1))
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Write a synthetic data set in nuScenes' layout")
    parser.add_argument("--out", default="data/synthetic_nuscenes", help="output root (DATA_PATH of the config)")
    parser.add_argument(
        "--scenes", type=int, default=10, help="v1.0-mini: 1-10 scenes (its names; 2 of 10 are val); v1.0-trainval: any"
    )
    parser.add_argument(
        "--val_scenes", type=int, default=None, help="v1.0-trainval: how many are val scenes (default 15 %%)"
    )
    parser.add_argument("--samples", type=int, default=10, help="key frames per scene (2 Hz)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--version", default="v1.0-mini", choices=["v1.0-mini", "v1.0-trainval"], help="table folder")
    args = parser.parse_args(argv)
    out = generate_nuscenes(args.out, args.scenes, args.samples, args.seed, args.version, args.val_scenes)
    print(f"wrote {args.scenes} scenes x {args.samples} samples to {out}")


if __name__ == "__main__":
    main()
