"""Detections → nuscenes-devkit's results JSON → the devkit's own ``DetectionEval`` (mAP, NDS, TP errors).

The metric is entirely the devkit's; this module only converts boxes (key-frame LiDAR frame → global) and formats
the summary it writes (``metrics_summary.json``).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .nuscenes_utils import get, require_devkit

EVAL_SET = {"v1.0-mini": "mini_val", "v1.0-trainval": "val", "v1.0-test": "test"}
EVAL_CONFIG = "detection_cvpr_2019"
MAX_BOXES_PER_SAMPLE = 500  # the devkit refuses a sample with more
TP_ERRORS = {"trans_err": "mATE", "scale_err": "mASE", "orient_err": "mAOE", "vel_err": "mAVE", "attr_err": "mAAE"}
# The attribute a detector does not predict, from its class and speed (> 0.2 m/s = moving); otherwise the class's
# most common attribute in nuScenes' training annotations.
_MOVING_ATTRIBUTE = {"car": "vehicle.moving", "truck": "vehicle.moving", "bus": "vehicle.moving",
                     "trailer": "vehicle.moving", "construction_vehicle": "vehicle.moving",
                     "bicycle": "cycle.with_rider", "motorcycle": "cycle.with_rider"}  # fmt: skip
_STILL_ATTRIBUTE = {"pedestrian": "pedestrian.standing", "bus": "vehicle.stopped"}
_COMMON_ATTRIBUTE = {"car": "vehicle.parked", "truck": "vehicle.parked", "bus": "vehicle.moving",
                     "trailer": "vehicle.parked", "construction_vehicle": "vehicle.parked",
                     "bicycle": "cycle.without_rider", "motorcycle": "cycle.without_rider",
                     "pedestrian": "pedestrian.moving", "barrier": "", "traffic_cone": ""}  # fmt: skip


def attribute_for(name: str, velocity_xy) -> str:
    moving = float(np.hypot(velocity_xy[0], velocity_xy[1])) > 0.2
    table = _MOVING_ATTRIBUTE if moving else _STILL_ATTRIBUTE
    return table.get(name, _COMMON_ATTRIBUTE.get(name, ""))


def det_annos_to_results(det_annos: list[dict], nusc) -> dict:
    """``det_annos`` (``name``, ``score``, ``boxes_lidar (M, 7|9)``, ``metadata.token``) → the devkit's results
    dict ``{'meta': ..., 'results': {sample_token: [box dicts in the global frame]}}``. Only the best
    MAX_BOXES_PER_SAMPLE boxes of a sample are kept (the devkit rejects more)."""
    require_devkit()
    from nuscenes.utils.data_classes import Box
    from pyquaternion import Quaternion

    results: dict[str, list[dict]] = {}
    for anno in det_annos:
        sample_token = anno["metadata"]["token"]
        sample = get(nusc, "sample", sample_token, "sample token of a detection")
        sd = get(nusc, "sample_data", sample["data"]["LIDAR_TOP"], f"LIDAR_TOP of sample {sample_token}")
        cs = get(nusc, "calibrated_sensor", sd["calibrated_sensor_token"], f"sensor of sample_data {sd['token']}")
        pose = get(nusc, "ego_pose", sd["ego_pose_token"], f"ego pose of sample_data {sd['token']}")
        boxes = np.asarray(anno["boxes_lidar"], dtype=np.float64)
        boxes = boxes.reshape(len(anno["score"]), boxes.shape[-1] if boxes.ndim == 2 else 7)
        order = np.argsort(-np.asarray(anno["score"], dtype=np.float64), kind="stable")[:MAX_BOXES_PER_SAMPLE]
        entries = []
        for i in order:
            b = boxes[i]
            velocity = (b[7], b[8], 0.0) if boxes.shape[1] >= 9 else (0.0, 0.0, 0.0)
            box = Box(b[0:3], [b[4], b[3], b[5]], Quaternion(axis=[0, 0, 1], radians=b[6]), velocity=velocity)
            box.rotate(Quaternion(cs["rotation"]))
            box.translate(np.array(cs["translation"]))
            box.rotate(Quaternion(pose["rotation"]))
            box.translate(np.array(pose["translation"]))
            name = str(anno["name"][i])
            entries.append(
                {
                    "sample_token": sample_token,
                    "translation": box.center.tolist(),
                    "size": box.wlh.tolist(),
                    "rotation": box.orientation.elements.tolist(),
                    "velocity": box.velocity[0:2].tolist(),
                    "detection_name": name,
                    "detection_score": float(anno["score"][i]),
                    "attribute_name": attribute_for(name, box.velocity[0:2]),
                }
            )
        results[sample_token] = entries
    meta = {"use_camera": False, "use_lidar": True, "use_radar": False, "use_map": False, "use_external": False}
    return {"meta": meta, "results": results}


def evaluate(nusc, results: dict, version: str, output_dir: str | Path, verbose: bool = False) -> dict:
    """Write ``results_nusc.json`` to ``output_dir`` and run the devkit's ``DetectionEval`` on the version's
    validation split; returns its metrics summary (also written there as ``metrics_summary.json``)."""
    require_devkit()
    from nuscenes.eval.common.config import config_factory
    from nuscenes.eval.detection.evaluate import DetectionEval

    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    result_path = output_dir / "results_nusc.json"
    result_path.write_text(json.dumps(results))
    config = config_factory(EVAL_CONFIG)
    if not any(results["results"].values()):
        return _empty_submission_summary(config)
    evaluator = DetectionEval(
        nusc, config=config, result_path=str(result_path), eval_set=EVAL_SET[version],
        output_dir=str(output_dir), verbose=verbose,
    )  # fmt: skip
    return evaluator.main(plot_examples=0, render_curves=False)


def _empty_submission_summary(config) -> dict:
    """The devkit cannot evaluate a submission without a single box (it infers the box type from the first one);
    such a submission scores AP 0 and the maximal TP error 1 for every class, which NDS turns into 0."""
    names = list(config.class_names)
    return {
        "mean_ap": 0.0,
        "nd_score": 0.0,
        "tp_errors": dict.fromkeys(TP_ERRORS, 1.0),
        "label_aps": {n: dict.fromkeys(config.dist_ths, 0.0) for n in names},
        "mean_dist_aps": dict.fromkeys(names, 0.0),
        "label_tp_errors": {n: dict.fromkeys(TP_ERRORS, 1.0) for n in names},
    }


def format_metrics(metrics: dict, class_names: list[str]) -> tuple[str, dict]:
    """The devkit's summary → (a table for the log, flat dict: ``mAP``, ``NDS``, ``mATE`` ... and per class
    ``<cls>_AP``, ``<cls>_AP@<dist>``, ``<cls>_<err>``)."""
    result = {"mAP": metrics["mean_ap"], "NDS": metrics["nd_score"]}
    for err, short in TP_ERRORS.items():
        result[short] = metrics["tp_errors"][err]
    dists = sorted(next(iter(metrics["label_aps"].values())), key=float)  # float keys, or str after JSON
    head = f"{'class':<22}" + "".join(f"{'AP@' + str(float(d)):<8}" for d in dists) + f"{'AP':>6}   ATE   ASE   AOE"
    lines = [f"----- nuScenes {EVAL_CONFIG} (nuscenes-devkit DetectionEval) -----", head + "   AVE   AAE"]
    for name in class_names:
        if name not in metrics["label_aps"]:
            continue
        aps, errs = metrics["label_aps"][name], metrics["label_tp_errors"][name]
        mean_ap = metrics["mean_dist_aps"][name]
        result[f"{name}_AP"] = mean_ap
        result.update({f"{name}_AP@{float(d)}": aps[d] for d in dists})
        result.update({f"{name}_{err}": errs[err] for err in TP_ERRORS})
        row = "".join(f"{aps[d]:<8.4f}" for d in dists) + f"{mean_ap:6.4f} "
        lines.append(f"{name:<22}" + row + " ".join(f"{errs[e]:5.3f}" for e in TP_ERRORS))
    lines.append(
        f"mAP: {result['mAP']:.4f}  NDS: {result['NDS']:.4f}  "
        + "  ".join(f"{short}: {result[short]:.4f}" for short in TP_ERRORS.values())
    )
    return "\n".join(lines), result
