"""KITTI object evaluation with the official devkit's semantics (``evaluate_object``, 3D/BEV version), on CPU.

Rules (all as in the devkit, see docs/EVALUATION.md for the full list):

* difficulty of a ground truth box: 2D height > 40 / 25 / 25 px, occlusion <= 0 / 1 / 2, truncation <= 0.15 / 0.3 / 0.5
  for easy / moderate / hard; harder boxes are "ignored" (neither TP nor FN; a detection on them is not a FP);
  the same 2D-height difficulty applies to the bbox, bev and 3d metrics;
* neighbouring classes (Van for Car, Person_sitting for Pedestrian) are ignored, other classes don't exist;
* detections whose 2D height, truncated to an integer, is below the difficulty's minimum (40 / 25 / 25 px) are
  ignored (whatever their class), detections of other classes don't exist;
* unmatched detections overlapping a DontCare region (intersection / detection area above the class threshold) are
  not false positives;
* 41 score thresholds at recall steps of 1/40 (from the true-positive scores of a first, threshold-free pass),
  precision interpolated as max over higher recalls; R11 = mean of the precision at recall indices 0, 4, ..., 40,
  R40 = mean over indices 1..40 (with fewer than 40 counted ground truths some recall positions stay 0, as in the
  devkit);
* AOS (similarity (1 + cos(d_alpha)) / 2 of the TPs, 0 for the FPs) with the 2D matching, computed only when no
  detection has the invalid alpha -10.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import _kernels as K
from ._jit import announce_compilation
from .geometry import frame_image_overlaps, frame_rotated_overlaps

CLASS_NAMES = {0: "Car", 1: "Pedestrian", 2: "Cyclist", 3: "Van", 4: "Person_sitting", 5: "Truck"}
_NAME_TO_ID = {v.lower(): k for k, v in CLASS_NAMES.items()}
# neighbouring classes whose ground truth is ignored, never a false negative nor a source of false positives
NEIGHBOURS = {"car": "van", "pedestrian": "person_sitting"}

MIN_HEIGHT = (40, 25, 25)
MAX_OCCLUSION = (0, 1, 2)
MAX_TRUNCATION = (0.15, 0.3, 0.5)
DIFFICULTIES = ("easy", "moderate", "hard")
METRICS = ("bbox", "bev", "3d")

# minimum overlaps, rows bbox / bev / 3d, columns = class ids above (OpenPCDet's overlap_0_7 and overlap_0_5 tables)
OVERLAP_STRICT = np.array([[0.7, 0.5, 0.5, 0.7, 0.5, 0.7]] * 3)
OVERLAP_LOOSE = np.array(
    [[0.7, 0.5, 0.5, 0.7, 0.5, 0.5], [0.5, 0.25, 0.25, 0.5, 0.25, 0.5], [0.5, 0.25, 0.25, 0.5, 0.25, 0.5]]
)
# COCO-style ranges (start, stop, count) per class id
COCO_RANGES = {
    0: (0.5, 0.95, 10),
    1: (0.25, 0.7, 10),
    2: (0.25, 0.7, 10),
    3: (0.5, 0.95, 10),
    4: (0.25, 0.7, 10),
    5: (0.5, 0.95, 10),
}


def resolve_classes(current_classes: int | str | Sequence[int | str]) -> list[int]:
    """Class ids from ids or names (case-insensitive), in the given order."""
    if isinstance(current_classes, (int, np.integer, str)):
        current_classes = [current_classes]
    ids = []
    for c in current_classes:
        if isinstance(c, str):
            if c.lower() not in _NAME_TO_ID:
                raise ValueError(f"unknown KITTI class {c!r}; known: {list(CLASS_NAMES.values())}")
            ids.append(_NAME_TO_ID[c.lower()])
        else:
            if int(c) not in CLASS_NAMES:
                raise ValueError(f"unknown KITTI class id {c!r}; known: {CLASS_NAMES}")
            ids.append(int(c))
    return ids


def _column(annos: Sequence[dict], key: str, width: int) -> np.ndarray:
    parts = [np.asarray(a[key], dtype=np.float64).reshape(-1, width) for a in annos]
    if not parts:
        return np.zeros((0, width))
    return np.concatenate(parts, axis=0)


def _lower_names(annos: Sequence[dict]) -> np.ndarray:
    parts = [np.asarray(a["name"]).reshape(-1).astype(str) for a in annos]
    names = np.concatenate(parts) if parts else np.zeros(0, dtype=str)
    if names.size == 0:
        return names
    # lower-case the few distinct names only (the devkit compares names case-insensitively)
    uniq, inv = np.unique(names, return_inverse=True)
    return np.char.lower(uniq)[inv.reshape(-1)]


def _offsets(counts: np.ndarray) -> np.ndarray:
    off = np.zeros(len(counts) + 1, dtype=np.int64)
    np.cumsum(counts, out=off[1:])
    return off


def _box7(loc: np.ndarray, dims: np.ndarray, ry: np.ndarray) -> np.ndarray:
    # anno dimensions are (l, h, w); kernels want (x, y, z, l, h, w, ry)
    return np.ascontiguousarray(np.concatenate([loc, dims, ry], axis=1))


@dataclass
class _Prepared:
    """All frames flattened, plus caches of overlaps and curves (shared by the strict/loose/COCO passes)."""

    gt_off: np.ndarray
    dt_off: np.ndarray
    dc_off: np.ndarray
    gt_name: np.ndarray
    gt_trunc: np.ndarray
    gt_occ: np.ndarray
    gt_height: np.ndarray
    gt_alpha: np.ndarray
    gt_bbox: np.ndarray
    gt_box7: np.ndarray
    dt_name: np.ndarray
    dt_height_int: np.ndarray
    dt_alpha: np.ndarray
    dt_score: np.ndarray
    dt_bbox: np.ndarray
    dt_box7: np.ndarray
    dc_bbox: np.ndarray
    dc_box7: np.ndarray
    compute_aos: bool
    overlaps: dict = field(default_factory=dict)
    curves: dict = field(default_factory=dict)
    ignores: dict = field(default_factory=dict)

    def pair_offsets(self, dc: bool) -> np.ndarray:
        g = np.diff(self.dc_off if dc else self.gt_off)
        return _offsets(g * np.diff(self.dt_off))


def _prepare(gt_annos: Sequence[dict], dt_annos: Sequence[dict], class_ids: list[int]) -> _Prepared:
    if len(gt_annos) != len(dt_annos):
        raise ValueError(f"got {len(gt_annos)} ground-truth frames but {len(dt_annos)} detection frames")
    wanted = {CLASS_NAMES[c].lower() for c in class_ids}
    relevant_gt = wanted | {NEIGHBOURS[c] for c in wanted if c in NEIGHBOURS}

    gt_name = _lower_names(gt_annos)
    gt_counts = np.array([len(np.asarray(a["name"]).reshape(-1)) for a in gt_annos], dtype=np.int64)
    gt_frame = np.repeat(np.arange(len(gt_annos)), gt_counts)
    gt_bbox = _column(gt_annos, "bbox", 4)
    gt_box7 = _box7(
        _column(gt_annos, "location", 3), _column(gt_annos, "dimensions", 3), _column(gt_annos, "rotation_y", 1)
    )
    gt_trunc = _column(gt_annos, "truncated", 1)[:, 0]
    gt_occ = _column(gt_annos, "occluded", 1)[:, 0]
    gt_alpha = _column(gt_annos, "alpha", 1)[:, 0]

    dt_name = _lower_names(dt_annos)
    dt_counts = np.array([len(np.asarray(a["name"]).reshape(-1)) for a in dt_annos], dtype=np.int64)
    dt_frame = np.repeat(np.arange(len(dt_annos)), dt_counts)
    dt_bbox = _column(dt_annos, "bbox", 4)
    dt_box7 = _box7(
        _column(dt_annos, "location", 3), _column(dt_annos, "dimensions", 3), _column(dt_annos, "rotation_y", 1)
    )
    dt_alpha = _column(dt_annos, "alpha", 1)[:, 0]
    dt_score = _column(dt_annos, "score", 1)[:, 0]
    # the devkit skips AOS altogether as soon as one detection carries the invalid alpha -10
    compute_aos = not bool(np.any(dt_alpha == -10))
    # the devkit stores the detection height in an int32 (truncation toward zero)
    with np.errstate(invalid="ignore"):
        dt_height_int = np.trunc(np.abs(dt_bbox[:, 1] - dt_bbox[:, 3]))

    # only keep what can ever matter: ground truth of the evaluated classes or their neighbours, DontCare regions,
    # detections of the evaluated classes or small enough to be "ignored" detections (any class) in some difficulty
    keep_gt = np.isin(gt_name, list(relevant_gt))
    is_dc = gt_name == "dontcare"
    keep_dt = np.isin(dt_name, list(wanted)) | (dt_height_int < max(MIN_HEIGHT))

    nf = len(gt_annos)
    gt_sel = np.flatnonzero(keep_gt)
    dc_sel = np.flatnonzero(is_dc)
    dt_sel = np.flatnonzero(keep_dt)
    gt_height = gt_bbox[:, 3] - gt_bbox[:, 1]
    return _Prepared(
        gt_off=_offsets(np.bincount(gt_frame[gt_sel], minlength=nf)),
        dt_off=_offsets(np.bincount(dt_frame[dt_sel], minlength=nf)),
        dc_off=_offsets(np.bincount(gt_frame[dc_sel], minlength=nf)),
        gt_name=gt_name[gt_sel],
        gt_trunc=gt_trunc[gt_sel],
        gt_occ=gt_occ[gt_sel],
        gt_height=gt_height[gt_sel],
        gt_alpha=np.ascontiguousarray(gt_alpha[gt_sel]),
        gt_bbox=np.ascontiguousarray(gt_bbox[gt_sel]),
        gt_box7=np.ascontiguousarray(gt_box7[gt_sel]),
        dt_name=dt_name[dt_sel],
        dt_height_int=dt_height_int[dt_sel],
        dt_alpha=np.ascontiguousarray(dt_alpha[dt_sel]),
        dt_score=np.ascontiguousarray(dt_score[dt_sel]),
        dt_bbox=np.ascontiguousarray(dt_bbox[dt_sel]),
        dt_box7=np.ascontiguousarray(dt_box7[dt_sel]),
        dc_bbox=np.ascontiguousarray(gt_bbox[dc_sel]),
        dc_box7=np.ascontiguousarray(gt_box7[dc_sel]),
        compute_aos=compute_aos,
    )


def _overlaps(p: _Prepared, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """(gt x det IoU, DontCare x det intersection-over-detection) for one metric, computed once."""
    if metric not in p.overlaps:
        pair, dc_pair = p.pair_offsets(False), p.pair_offsets(True)
        if metric == "bbox":
            ov = frame_image_overlaps(p.gt_off, p.dt_off, pair, p.gt_bbox, p.dt_bbox, -1)
            dc = frame_image_overlaps(p.dc_off, p.dt_off, dc_pair, p.dc_bbox, p.dt_bbox, 0)
        else:
            h = metric == "3d"
            ov = frame_rotated_overlaps(p.gt_off, p.dt_off, pair, p.gt_box7, p.dt_box7, -1, h)
            dc = frame_rotated_overlaps(p.dc_off, p.dt_off, dc_pair, p.dc_box7, p.dt_box7, 0, h)
        p.overlaps[metric] = (ov, dc)
    return p.overlaps[metric]


def _ignores(p: _Prepared, cls: int, diff: int) -> tuple[np.ndarray, np.ndarray, int]:
    """The devkit's ``cleanData``: ignored_gt / ignored_det flags and the number of counted ground truths."""
    key = (cls, diff)
    if key not in p.ignores:
        name = CLASS_NAMES[cls].lower()
        same = p.gt_name == name
        neighbour = p.gt_name == NEIGHBOURS[name] if name in NEIGHBOURS else np.zeros_like(same)
        too_hard = (
            (p.gt_occ > MAX_OCCLUSION[diff]) | (p.gt_trunc > MAX_TRUNCATION[diff]) | (p.gt_height <= MIN_HEIGHT[diff])
        )
        ign_gt = np.full(len(same), -1, dtype=np.int64)
        ign_gt[neighbour | (same & too_hard)] = 1
        ign_gt[same & ~too_hard] = 0
        ign_dt = np.full(len(p.dt_name), -1, dtype=np.int64)
        ign_dt[p.dt_name == name] = 0
        ign_dt[p.dt_height_int < MIN_HEIGHT[diff]] = 1  # too small: ignored whatever the class
        p.ignores[key] = (ign_gt, ign_dt, int(np.count_nonzero(ign_gt == 0)))
    return p.ignores[key]


def _curve(p: _Prepared, metric: str, cls: int, diff: int, min_overlap: float) -> tuple[np.ndarray, np.ndarray | None]:
    """Interpolated precision (41,) and, for bbox with valid alphas, orientation similarity (41,)."""
    key = (metric, cls, diff, float(min_overlap))
    if key in p.curves:
        return p.curves[key]
    ov, dc_ov = _overlaps(p, metric)
    ign_gt, ign_dt, n_gt = _ignores(p, cls, diff)
    pair, dc_pair = p.pair_offsets(False), p.pair_offsets(True)
    # scratch arrays are allocated here: numba's own np.zeros/np.empty would add a second of first-time compilation
    assigned = np.zeros(int(np.diff(p.dt_off).max(initial=0)) + 1, dtype=np.bool_)
    v = np.empty(len(ign_gt))
    nv = K.tp_scores(p.gt_off, p.dt_off, pair, ov, ign_gt, ign_dt, p.dt_score, float(min_overlap), assigned, v)
    v = np.ascontiguousarray(np.sort(v[:nv])[::-1])
    thresholds = np.empty(nv)
    thresholds = thresholds[: K.recall_thresholds(v, n_gt, thresholds)][: K.N_SAMPLE_PTS]
    aos_on = p.compute_aos and metric == "bbox"
    tot = np.zeros((len(thresholds), 4))
    # scratch for the per-frame match lists, sized from the largest frame
    max_pairs = int(max(np.diff(pair).max(initial=0), np.diff(dc_pair).max(initial=0))) + 1
    max_n = int(
        max(np.diff(p.gt_off).max(initial=0), np.diff(p.dt_off).max(initial=0), np.diff(p.dc_off).max(initial=0))
    )
    K.pr_counts(
        p.gt_off,
        p.dt_off,
        pair,
        ov,
        p.dc_off,
        dc_pair,
        dc_ov,
        ign_gt,
        ign_dt,
        p.dt_score,
        p.gt_alpha,
        p.dt_alpha,
        float(min_overlap),
        np.ascontiguousarray(thresholds),
        aos_on,
        np.empty(max_pairs, dtype=np.int64),
        np.empty(max_n + 2, dtype=np.int64),
        np.empty(max_pairs, dtype=np.int64),
        np.empty(max_n + 2, dtype=np.int64),
        np.empty(max_n + 1, dtype=np.int64),
        assigned,
        np.zeros(4),
        tot,
    )
    n = len(thresholds)
    prec = np.zeros(K.N_SAMPLE_PTS)
    aos = np.zeros(K.N_SAMPLE_PTS) if aos_on else None
    denom = tot[:, 0] + tot[:, 1]
    # tp + fp == 0 cannot normally happen at a threshold taken from a TP score; count it as precision 0
    safe = np.where(denom > 0, denom, 1.0)
    prec[:n] = np.where(denom > 0, tot[:, 0] / safe, 0.0)
    # max over this and all higher recalls (the untouched tail stays 0)
    prec[:n] = np.maximum.accumulate(prec[::-1])[::-1][:n]
    if aos is not None:
        aos[:n] = np.where(denom > 0, tot[:, 3] / safe, 0.0)
        aos[:n] = np.maximum.accumulate(aos[::-1])[::-1][:n]
    p.curves[key] = (prec, aos)
    return prec, aos


def ap_r11(prec: np.ndarray) -> float:
    """11-point AP in percent: mean of the precision at recall indices 0, 4, ..., 40."""
    return float(np.sum(prec[0 : K.N_SAMPLE_PTS : 4]) / 11.0 * 100.0)


def ap_r40(prec: np.ndarray) -> float:
    """40-point AP in percent: mean of the precision at recall indices 1..40 (recall 1/40 .. 1)."""
    return float(np.sum(prec[1 : K.N_SAMPLE_PTS]) / 40.0 * 100.0)


def evaluate(
    gt_annos: Sequence[dict],
    dt_annos: Sequence[dict],
    current_classes: int | str | Sequence[int | str],
    overlap_tables: Sequence[np.ndarray] = (OVERLAP_STRICT, OVERLAP_LOOSE),
) -> dict[str, Any]:
    """Raw results: ``ap[(cls_id, metric, table_index, recall)] -> [easy, moderate, hard]`` (metric incl. 'aos'),
    ``precision[(cls_id, metric, table_index)] -> (3, 41)``, ``compute_aos`` and ``classes``."""
    class_ids = resolve_classes(current_classes)
    announce_compilation()
    p = _prepare(gt_annos, dt_annos, class_ids)
    ap: dict[tuple, list[float]] = {}
    precision: dict[tuple, np.ndarray] = {}
    for cls in class_ids:
        for t, table in enumerate(overlap_tables):
            for m, metric in enumerate(METRICS):
                curves = [_curve(p, metric, cls, d, table[m, cls]) for d in range(3)]
                precision[(cls, metric, t)] = np.stack([c[0] for c in curves])
                ap[(cls, metric, t, "R11")] = [ap_r11(c[0]) for c in curves]
                ap[(cls, metric, t, "R40")] = [ap_r40(c[0]) for c in curves]
                if metric == "bbox" and p.compute_aos:
                    precision[(cls, "aos", t)] = np.stack([c[1] for c in curves])
                    ap[(cls, "aos", t, "R11")] = [ap_r11(c[1]) for c in curves]
                    ap[(cls, "aos", t, "R40")] = [ap_r40(c[1]) for c in curves]
    return {"ap": ap, "precision": precision, "compute_aos": p.compute_aos, "classes": class_ids}


def format_results(res: dict[str, Any], recalls: Sequence[str] = ("R11", "R40"), num_tables: int = 2) -> str:
    """The table KITTI/OpenPCDet users read: per class, strict then loose thresholds, R11 then R40 blocks."""
    lines = []
    ap = res["ap"]
    for cls in res["classes"]:
        name = CLASS_NAMES[cls]
        for t, table in enumerate((OVERLAP_STRICT, OVERLAP_LOOSE)[:num_tables]):
            thr = ", ".join(f"{table[m, cls]:.2f}" for m in range(3))
            for recall in recalls:
                tag = "AP" if recall == "R11" else "AP_R40"
                lines.append(f"{name} {tag}@{thr}:")
                for metric, label in (("bbox", "bbox"), ("bev", "bev "), ("3d", "3d  ")):
                    vals = ap[(cls, metric, t, recall)]
                    lines.append(f"{label} AP:{vals[0]:.4f}, {vals[1]:.4f}, {vals[2]:.4f}")
                if res["compute_aos"]:
                    vals = ap[(cls, "aos", t, recall)]
                    lines.append(f"aos  AP:{vals[0]:.2f}, {vals[1]:.2f}, {vals[2]:.2f}")
    return "\n".join(lines) + "\n"


def get_official_eval_result(
    gt_annos: Sequence[dict],
    dt_annos: Sequence[dict],
    current_classes: int | str | Sequence[int | str],
    PR_detail_dict: dict | None = None,  # noqa: N803 - OpenPCDet's keyword name
) -> tuple[str, dict[str, float]]:
    """OpenPCDet-compatible entry point: ``(result_str, ret_dict)``.

    ``ret_dict`` holds the strict-threshold APs: ``<Class>_<image|bev|3d|aos>/<easy|moderate|hard>_R40`` and the R11
    values under the same keys without ``_R40`` (aos keys only when AOS was computed, as upstream). When
    ``PR_detail_dict`` is given it receives the interpolated precision curves, ``{'bbox'|'bev'|'3d'|'aos':
    array (num_class, 3 difficulties, 2 threshold sets, 41)}``.
    """
    res = evaluate(gt_annos, dt_annos, current_classes)
    ret: dict[str, float] = {}
    prefix = {"bbox": "image", "bev": "bev", "3d": "3d", "aos": "aos"}
    for cls in res["classes"]:
        name = CLASS_NAMES[cls]
        for metric in ("aos", "3d", "bev", "bbox"):
            if metric == "aos" and not res["compute_aos"]:
                continue
            for recall, suffix in (("R40", "_R40"), ("R11", "")):
                vals = res["ap"][(cls, metric, 0, recall)]
                for d, diff in enumerate(DIFFICULTIES):
                    ret[f"{name}_{prefix[metric]}/{diff}{suffix}"] = vals[d]
    if PR_detail_dict is not None:
        for metric in ("bbox", "bev", "3d", "aos"):
            if metric == "aos" and not res["compute_aos"]:
                continue
            PR_detail_dict[metric] = np.stack(
                [np.stack([res["precision"][(cls, metric, t)] for t in range(2)], axis=1) for cls in res["classes"]]
            )
    return format_results(res), ret


def get_coco_eval_result(
    gt_annos: Sequence[dict], dt_annos: Sequence[dict], current_classes: int | str | Sequence[int | str]
) -> str:
    """COCO-style summary: R11 AP averaged over 10 overlap thresholds per class (e.g. Car 0.50:0.05:0.95)."""
    class_ids = resolve_classes(current_classes)
    lines = []
    p = _prepare(gt_annos, dt_annos, class_ids)
    for cls in class_ids:
        start, stop, num = COCO_RANGES[cls]
        thresholds = np.linspace(start, stop, num)
        step = (stop - start) / (num - 1)
        sums = {m: np.zeros(3) for m in (*METRICS, "aos")}
        for thr in thresholds:
            for metric in METRICS:
                for d in range(3):
                    prec, aos = _curve(p, metric, cls, d, thr)
                    sums[metric][d] += ap_r11(prec)
                    if aos is not None:
                        sums["aos"][d] += ap_r11(aos)
        lines.append(f"{CLASS_NAMES[cls]} coco AP@{start:.2f}:{step:.2f}:{stop:.2f}:")
        for metric, label in (("bbox", "bbox"), ("bev", "bev "), ("3d", "3d  ")):
            v = sums[metric] / num
            lines.append(f"{label} AP:{v[0]:.2f}, {v[1]:.2f}, {v[2]:.2f}")
        if p.compute_aos:
            v = sums["aos"] / num
            lines.append(f"aos  AP:{v[0]:.2f}, {v[1]:.2f}, {v[2]:.2f}")
    return "\n".join(lines) + "\n"
