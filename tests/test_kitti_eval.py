"""KITTI evaluation: devkit rules on hand-made cases, exact geometry, bad inputs, and the official devkit's numbers."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import shapely
from shapely.geometry import Polygon

from pcdet.datasets.kitti.kitti_object_eval_python import eval as kitti_eval
from pcdet.datasets.kitti.kitti_object_eval_python import evaluate as kitti_cli
from pcdet.datasets.kitti.kitti_object_eval_python import kitti_common
from pcdet.datasets.kitti.kitti_object_eval_python.geometry import pairwise_overlaps

SHARED = Path(__file__).resolve().parents[2] / "shared"
DIFFS = ("easy", "moderate", "hard")


# ----------------------------------------------------------------------------------------------------------------------
# helpers: hand-made frames
def _obj(
    name="Car",
    bbox=(100.0, 100.0, 200.0, 160.0),
    loc=(0.0, 1.5, 20.0),
    lhw=(3.9, 1.5, 1.6),
    ry=0.0,
    alpha=0.0,
    trunc=0.0,
    occ=0,
    score=0.5,
):
    return dict(name=name, bbox=bbox, loc=loc, lhw=lhw, ry=ry, alpha=alpha, trunc=trunc, occ=occ, score=score)


def _anno(objs: list[dict]) -> dict:
    return {
        "name": np.array([o["name"] for o in objs], dtype="<U16"),
        "truncated": np.array([o["trunc"] for o in objs], dtype=float),
        "occluded": np.array([o["occ"] for o in objs], dtype=int),
        "alpha": np.array([o["alpha"] for o in objs], dtype=float),
        "bbox": np.array([o["bbox"] for o in objs], dtype=float).reshape(-1, 4),
        "dimensions": np.array([o["lhw"] for o in objs], dtype=float).reshape(-1, 3),
        "location": np.array([o["loc"] for o in objs], dtype=float).reshape(-1, 3),
        "rotation_y": np.array([o["ry"] for o in objs], dtype=float),
        "score": np.array([o["score"] for o in objs], dtype=float),
    }


def _perfect(n: int, **kw) -> tuple[list[dict], list[dict]]:
    """n frames with one easy Car each, detected exactly (distinct scores)."""
    gts, dts = [], []
    for i in range(n):
        o = _obj(loc=(0.1 * i, 1.5, 20.0), ry=0.01 * i, alpha=0.02 * i, **kw)
        gts.append(_anno([o]))
        dts.append(_anno([dict(o, score=0.5 + i / 1000)]))
    return gts, dts


def _ap(gts, dts, cls="Car", metric="bbox", recall="R40", table=0):
    return kitti_eval.evaluate(gts, dts, [cls])["ap"][(kitti_eval.resolve_classes(cls)[0], metric, table, recall)]


ALL_METRICS = ("bbox", "bev", "3d", "aos")
ONE_FP = 100.0 * 80 / 81  # 80 TPs + 1 FP above every TP score: precision 80/81 at every recall step


# ----------------------------------------------------------------------------------------------------------------------
# matching rules
def test_perfect_detection_is_100_everywhere():
    gts, dts = _perfect(80)
    res = kitti_eval.evaluate(gts, dts, ["Car"])
    for metric in ALL_METRICS:
        for recall in ("R11", "R40"):
            for t in (0, 1):
                assert res["ap"][(0, metric, t, recall)] == pytest.approx([100.0] * 3, abs=1e-9)


def test_one_false_positive_above_all_tps():
    gts, dts = _perfect(80)
    far = _obj(bbox=(400.0, 100.0, 500.0, 160.0), loc=(10.0, 1.5, 50.0), score=0.99)
    dts[0] = _anno([*_objs(dts[0]), far])
    for metric in ALL_METRICS:
        for recall in ("R11", "R40"):
            assert _ap(gts, dts, metric=metric, recall=recall) == pytest.approx([ONE_FP] * 3, abs=1e-9)
    # below every TP score it never enters a threshold: no effect
    dts[0] = _anno([*_objs(dts[0])[:1], dict(far, score=0.01)])
    assert _ap(gts, dts) == pytest.approx([100.0] * 3)


def _objs(anno: dict) -> list[dict]:
    return [
        _obj(
            name=str(anno["name"][k]),
            bbox=tuple(anno["bbox"][k]),
            loc=tuple(anno["location"][k]),
            lhw=tuple(anno["dimensions"][k]),
            ry=float(anno["rotation_y"][k]),
            alpha=float(anno["alpha"][k]),
            trunc=float(anno["truncated"][k]),
            occ=int(anno["occluded"][k]),
            score=float(anno["score"][k]),
        )
        for k in range(len(anno["name"]))
    ]


def test_dontcare_region_ignores_detection_in_2d_only():
    gts, dts = _perfect(80)
    fp = _obj(bbox=(400.0, 100.0, 500.0, 160.0), loc=(10.0, 1.5, 50.0), score=0.99)
    dts[0] = _anno([*_objs(dts[0]), fp])
    # DontCare as in label files: 2D region only, 3D fields -1 / -1000
    dc = _obj(
        name="DontCare",
        bbox=(390.0, 90.0, 510.0, 170.0),
        loc=(-1000.0, -1000.0, -1000.0),
        lhw=(-1, -1, -1),
        ry=-10.0,
        alpha=-10.0,
        trunc=-1.0,
        occ=-1,
    )
    gts[0] = _anno([*_objs(gts[0]), dc])
    assert _ap(gts, dts, metric="bbox") == pytest.approx([100.0] * 3)
    assert _ap(gts, dts, metric="aos") == pytest.approx([100.0] * 3)
    # the devkit checks DontCare with the metric's own overlap: a 2D-only region never covers a BEV/3D box
    assert _ap(gts, dts, metric="bev") == pytest.approx([ONE_FP] * 3)
    assert _ap(gts, dts, metric="3d") == pytest.approx([ONE_FP] * 3)


def test_van_ground_truth_and_van_detections_are_ignored_for_car():
    gts, dts = _perfect(80)
    fp = _obj(bbox=(400.0, 100.0, 500.0, 160.0), loc=(10.0, 1.5, 50.0), score=0.99)
    dts[0] = _anno([*_objs(dts[0]), fp, _obj(name="Van", bbox=(600.0, 100.0, 700.0, 160.0), score=0.98)])
    assert _ap(gts, dts) == pytest.approx([ONE_FP] * 3)  # the Car FP counts, the Van detection does not
    gts[0] = _anno([*_objs(gts[0]), dict(fp, name="Van")])
    for metric in ALL_METRICS:
        assert _ap(gts, dts, metric=metric) == pytest.approx([100.0] * 3)
    # Person_sitting plays the same role for Pedestrian
    pgts, pdts = _perfect(80, name="Pedestrian", lhw=(0.8, 1.7, 0.6))
    pdts[0] = _anno([*_objs(pdts[0]), dict(fp, name="Pedestrian", lhw=(0.8, 1.7, 0.6))])
    assert _ap(pgts, pdts, cls="Pedestrian") == pytest.approx([ONE_FP] * 3)
    pgts[0] = _anno([*_objs(pgts[0]), dict(fp, name="Person_sitting", lhw=(0.8, 1.7, 0.6))])
    assert _ap(pgts, pdts, cls="Pedestrian") == pytest.approx([100.0] * 3)


def test_small_detections_are_ignored_per_difficulty():
    gts, dts = _perfect(80)
    tiny = _obj(bbox=(400.0, 100.0, 500.0, 120.0), loc=(10.0, 1.5, 50.0), score=0.99)  # 20 px: < 25
    dts[0] = _anno([*_objs(dts[0]), tiny])
    for metric in ALL_METRICS:
        assert _ap(gts, dts, metric=metric) == pytest.approx([100.0] * 3)
    # 30 px: below the easy minimum (40) only
    dts[0] = _anno([*_objs(dts[0])[:1], dict(tiny, bbox=(400.0, 100.0, 500.0, 130.0))])
    assert _ap(gts, dts) == pytest.approx([100.0, ONE_FP, ONE_FP])


def test_ground_truth_difficulty_boundaries():
    # 2D height exactly 40 px is not "easy" (the devkit ignores height <= 40)
    gts, dts = _perfect(80, bbox=(100.0, 100.0, 200.0, 140.0))
    assert _ap(gts, dts) == pytest.approx([0.0, 100.0, 100.0])
    # occlusion 1 / truncation 0.3: moderate and hard only; occlusion 2 / truncation 0.5: hard only
    assert _ap(*_perfect(80, occ=1)) == pytest.approx([0.0, 100.0, 100.0])
    assert _ap(*_perfect(80, trunc=0.3)) == pytest.approx([0.0, 100.0, 100.0])
    assert _ap(*_perfect(80, occ=2)) == pytest.approx([0.0, 0.0, 100.0])
    assert _ap(*_perfect(80, trunc=0.5)) == pytest.approx([0.0, 0.0, 100.0])
    assert _ap(*_perfect(80, occ=3)) == pytest.approx([0.0, 0.0, 0.0])


def test_3d_needs_height_overlap_bev_does_not():
    gts, dts = _perfect(80)
    for d in dts:
        d["location"][:, 1] += 0.375  # a quarter of the 1.5 m height: 3D IoU 0.75 / 1.25 = 0.6
    assert _ap(gts, dts, metric="bev") == pytest.approx([100.0] * 3)
    assert _ap(gts, dts, metric="3d") == pytest.approx([0.0] * 3)  # strict Car 3D: 0.7
    assert _ap(gts, dts, metric="3d", table=1) == pytest.approx([100.0] * 3)  # loose Car 3D: 0.5


def test_r40_cap_with_few_ground_truth_boxes():
    # one box, perfectly detected: a single recall step is reached; R11 counts recall 0, R40 starts at 1/40
    assert _ap(*_perfect(1), recall="R11") == pytest.approx([100.0 / 11] * 3)
    assert _ap(*_perfect(1), recall="R40") == pytest.approx([0.0] * 3)
    # 20 boxes: 20 thresholds fill recall indices 0..19 only
    assert _ap(*_perfect(20), recall="R11") == pytest.approx([100.0 * 5 / 11] * 3)
    assert _ap(*_perfect(20), recall="R40") == pytest.approx([100.0 * 19 / 40] * 3)
    # 41 boxes are enough for a full curve
    assert _ap(*_perfect(41), recall="R40") == pytest.approx([100.0] * 3)


def test_no_ground_truth_or_no_detection_gives_zero():
    gts, dts = _perfect(5)
    empty = [kitti_common.empty_anno() for _ in gts]
    assert _ap(gts, empty) == [0.0, 0.0, 0.0]
    assert _ap(empty, dts) == [0.0, 0.0, 0.0]


def test_aos_uses_alpha_and_is_skipped_for_invalid_alpha():
    gts, dts = _perfect(80)
    for d in dts:
        d["alpha"] = d["alpha"] + math.pi  # flipped heading: similarity 0, 2D matches still fine
    assert _ap(gts, dts, metric="bbox") == pytest.approx([100.0] * 3)
    assert _ap(gts, dts, metric="aos") == pytest.approx([0.0] * 3, abs=1e-9)
    for d in dts:
        d["alpha"] = d["alpha"] - math.pi / 2  # 90 degrees off: similarity 1/2
    assert _ap(gts, dts, metric="aos") == pytest.approx([50.0] * 3)
    dts[3]["alpha"][:] = -10  # one invalid alpha switches AOS off, as in the devkit
    result_str, ret = kitti_eval.get_official_eval_result(gts, dts, [0])
    assert "aos" not in result_str and not any("aos" in k for k in ret)


def test_ret_dict_keys_result_str_layout_and_class_names():
    gts, dts = _perfect(80)
    result_str, ret = kitti_eval.get_official_eval_result(gts, dts, [0, 1])
    expected = {
        f"{c}_{m}/{d}{s}"
        for c in ("Car", "Pedestrian")
        for m in ("image", "bev", "3d", "aos")
        for d in DIFFS
        for s in ("", "_R40")
    }
    assert set(ret) == expected
    assert ret["Car_3d/moderate_R40"] == pytest.approx(100.0) and ret["Car_bev/easy"] == pytest.approx(100.0)
    assert ret["Pedestrian_image/hard_R40"] == 0.0
    lines = result_str.splitlines()
    assert lines[:5] == [
        "Car AP@0.70, 0.70, 0.70:",
        "bbox AP:100.0000, 100.0000, 100.0000",
        "bev  AP:100.0000, 100.0000, 100.0000",
        "3d   AP:100.0000, 100.0000, 100.0000",
        "aos  AP:100.00, 100.00, 100.00",
    ]
    assert lines[5] == "Car AP_R40@0.70, 0.70, 0.70:"
    assert lines[10] == "Car AP@0.70, 0.50, 0.50:" and lines[15] == "Car AP_R40@0.70, 0.50, 0.50:"
    assert "Pedestrian AP@0.50, 0.50, 0.50:" in lines and "Pedestrian AP_R40@0.50, 0.25, 0.25:" in lines
    # names (any case) and ids are the same classes
    assert kitti_eval.get_official_eval_result(gts, dts, ["car", "PEDESTRIAN"])[1] == ret
    assert kitti_eval.get_official_eval_result(gts, dts, 0)[1] == {k: v for k, v in ret.items() if "Car" in k}
    pr: dict = {}
    kitti_eval.get_official_eval_result(gts, dts, [0], PR_detail_dict=pr)
    assert set(pr) == {"bbox", "bev", "3d", "aos"} and pr["3d"].shape == (1, 3, 2, 41)
    with pytest.raises(ValueError, match="unknown KITTI class"):
        kitti_eval.get_official_eval_result(gts, dts, ["Tram"])
    with pytest.raises(ValueError, match="frames"):
        kitti_eval.get_official_eval_result(gts, dts[:-1], [0])


def test_openpcdet_style_annos_and_coco_result():
    gts, dts = _perfect(80)
    # OpenPCDet's prediction dicts carry extra keys; empty frames have (0,) / (0, 4) arrays
    for i, d in enumerate(dts):
        d["boxes_lidar"] = np.zeros((len(d["name"]), 7))
        d["frame_id"] = f"{i:06d}"
    gts.append(_anno([]))
    dts.append(kitti_common.empty_anno())
    _, ret = kitti_eval.get_official_eval_result(gts, dts, ["Car"])
    assert ret["Car_3d/hard_R40"] == pytest.approx(100.0)
    coco = kitti_eval.get_coco_eval_result(gts, dts, [0])
    assert coco.splitlines()[0] == "Car coco AP@0.50:0.05:0.95:"
    assert coco.splitlines()[1] == "bbox AP:100.00, 100.00, 100.00"


# ----------------------------------------------------------------------------------------------------------------------
# geometry
def _random_boxes(rng: np.random.Generator, n: int) -> np.ndarray:
    xyz = rng.uniform([-3, 0, 10], [3, 2, 16], size=(n, 3))
    lhw = rng.uniform([0.5, 0.5, 0.5], [5, 2, 3], size=(n, 3))
    ry = rng.uniform(-np.pi, np.pi, size=(n, 1))
    return np.concatenate([xyz, lhw, ry], axis=1)


def _devkit_polygon(b) -> Polygon:
    """Independent footprint in the devkit's convention: corners R(ry) @ (+-l/2, +-w/2), R = [[c, s], [-s, c]]."""
    x, _, z, l, _, w, ry = (float(v) for v in b)
    c, s = math.cos(ry), math.sin(ry)
    pts = [(l / 2, w / 2), (l / 2, -w / 2), (-l / 2, -w / 2), (-l / 2, w / 2)]
    return Polygon([(c * u + s * v + x, -s * u + c * v + z) for u, v in pts])


def test_identical_boxes_have_iou_exactly_one():
    rng = np.random.default_rng(0)
    boxes = _random_boxes(rng, 200)
    for b in boxes:
        assert pairwise_overlaps(b[None], b[None], "bev")[0, 0] == 1.0
        assert pairwise_overlaps(b[None], b[None], "3d")[0, 0] == 1.0
    b2d = np.array([[10.25, 20.5, 110.75, 80.125], [0.0, 0.0, 1.0, 1.0]])
    assert np.all(np.diag(pairwise_overlaps(b2d, b2d, "bbox")) == 1.0)


def test_rotated_overlaps_known_areas():
    sq = np.array([[0.0, 1.0, 0.0, 1.0, 1.0, 1.0, 0.0]])
    rot45 = sq.copy()
    rot45[0, 6] = np.pi / 4
    octagon = 2.0 * (math.sqrt(2.0) - 1.0)  # unit square and its 45-degree copy share a regular octagon
    assert pairwise_overlaps(sq, rot45, "bev")[0, 0] == pytest.approx(octagon / (2.0 - octagon), abs=1e-12)
    assert pairwise_overlaps(sq, rot45, "3d")[0, 0] == pytest.approx(octagon / (2.0 - octagon), abs=1e-12)
    assert pairwise_overlaps(sq, rot45, "bev", criterion=0)[0, 0] == pytest.approx(octagon, abs=1e-12)
    # 4 x 2 boxes shifted by 2 m along their length: intersection 2 x 2 = 4, union 12
    a = np.array([[0.0, 1.0, 0.0, 4.0, 1.0, 2.0, 0.0]])
    b = a.copy()
    b[0, 0] = 2.0
    assert pairwise_overlaps(a, b, "bev")[0, 0] == pytest.approx(4.0 / 12.0, abs=1e-12)
    # same 8 m2 footprint, 3D: vertical spans [0, 1] and [0.75, 1.75] -> inter 8 * 0.25 = 2, union 8 + 8 - 2
    c = a.copy()
    c[0, 1] = 1.75
    assert pairwise_overlaps(a, c, "3d")[0, 0] == pytest.approx(2.0 / 14.0, abs=1e-12)
    # l along x at ry = 0 equals w along x at ry = pi/2; ry = +pi/4 sends +l towards (+x, -z) (devkit's rotation)
    swapped = np.array([[0.0, 1.0, 0.0, 2.0, 1.0, 4.0, np.pi / 2]])
    assert pairwise_overlaps(a, swapped, "bev")[0, 0] == pytest.approx(1.0, abs=1e-12)
    stick = np.array([[0.0, 1.0, 0.0, 4.0, 1.0, 0.2, np.pi / 4]])
    probe = np.array([[1.2, 1.0, -1.2, 0.2, 1.0, 0.2, 0.0], [1.2, 1.0, 1.2, 0.2, 1.0, 0.2, 0.0]])
    ov = pairwise_overlaps(stick, probe, "bev")[0]
    assert ov[0] > 0 and ov[1] == 0
    # 2D boxes, the devkit's area convention (no +1)
    assert pairwise_overlaps(np.array([[0.0, 0.0, 2.0, 2.0]]), np.array([[1.0, 0.0, 3.0, 2.0]]), "bbox")[0, 0] == (
        pytest.approx(2.0 / 6.0)
    )


def test_rotated_overlaps_match_shapely():
    rng = np.random.default_rng(1)
    a, b = _random_boxes(rng, 60), _random_boxes(rng, 60)
    pa = np.array([_devkit_polygon(x) for x in a], dtype=object)
    pb = np.array([_devkit_polygon(x) for x in b], dtype=object)
    inter = shapely.area(shapely.intersection(pa[:, None], pb[None, :]))
    area_a, area_b = shapely.area(pa)[:, None], shapely.area(pb)[None, :]
    bev_ref = inter / (area_a + area_b - inter)
    # rows = ground truth (a), columns = detections (b)
    assert np.abs(pairwise_overlaps(a, b, "bev") - bev_ref).max() < 1e-9
    top = np.minimum(a[:, 1][:, None], b[:, 1][None, :])
    bottom = np.maximum((a[:, 1] - a[:, 4])[:, None], (b[:, 1] - b[:, 4])[None, :])
    inter3d = inter * np.clip(top - bottom, 0, None)
    vol_a, vol_b = area_a * a[:, 4][:, None], area_b * b[:, 4][None, :]
    assert np.abs(pairwise_overlaps(a, b, "3d") - inter3d / (vol_a + vol_b - inter3d)).max() < 1e-9
    assert np.abs(pairwise_overlaps(a, b, "bev", criterion=0) - inter / area_b).max() < 1e-9
    assert (bev_ref > 0).mean() > 0.1  # the sample really exercises overlaps


# ----------------------------------------------------------------------------------------------------------------------
# files and the command line
LABEL = "Car 0.00 0 -1.58 587.01 173.33 614.12 200.12 1.65 1.67 3.64 -0.65 1.71 46.70 -1.59\n"
DONTCARE = "DontCare -1 -1 -10 503.89 169.71 590.61 190.13 -1 -1 -1 -1000 -1000 -1000 -10\n"


def test_label_files(tmp_path: Path):
    (tmp_path / "000000.txt").write_text(LABEL + DONTCARE)
    (tmp_path / "000002.txt").write_text(LABEL.rstrip("\n") + " 0.75\n\n")
    (tmp_path / "000001.txt").write_text("")
    anno = kitti_common.get_label_anno(tmp_path / "000000.txt")
    assert list(anno["name"]) == ["Car", "DontCare"]
    np.testing.assert_allclose(anno["dimensions"][0], [3.64, 1.65, 1.67])  # (l, h, w) from h, w, l columns
    np.testing.assert_allclose(anno["location"][0], [-0.65, 1.71, 46.70])
    np.testing.assert_allclose(anno["bbox"][0], [587.01, 173.33, 614.12, 200.12])
    assert anno["score"].tolist() == [0.0, 0.0] and anno["index"].tolist() == [0, -1]
    annos = kitti_common.get_label_annos(tmp_path)
    assert [len(a["name"]) for a in annos] == [2, 0, 1] and annos[2]["score"].tolist() == [0.75]
    assert len(kitti_common.get_label_annos(tmp_path, [2, 0])[0]["name"]) == 1
    assert len(kitti_common.get_label_annos(tmp_path, ["000000"])[0]["name"]) == 2
    (tmp_path / "000003.txt").write_text(LABEL + "Car 0.00 0 -1.58 587.01\n")
    with pytest.raises(ValueError, match=r"000003\.txt:2: expected 15 or 16 columns, got 5"):
        kitti_common.get_label_anno(tmp_path / "000003.txt")


def _write_set(tmp_path: Path) -> tuple[Path, Path]:
    labels, results = tmp_path / "label_2", tmp_path / "results"
    labels.mkdir()
    results.mkdir()
    for i in range(3):
        (labels / f"{i:06d}.txt").write_text(LABEL + DONTCARE)
    return labels, results


def test_cli_table_missing_files_and_bad_results(tmp_path: Path, capsys):
    labels, results = _write_set(tmp_path)
    for i in range(2):
        (results / f"{i:06d}.txt").write_text(LABEL.rstrip("\n") + " 0.9\n")
    split = tmp_path / "val.txt"
    split.write_text("000000\n000001\n000002\n")
    with pytest.warns(UserWarning, match="1 of 3 result files missing"):
        kitti_cli.main(
            [
                "--label_path",
                str(labels),
                "--result_path",
                str(results),
                "--label_split_file",
                str(split),
                "--current_class",
                "Car",
                "--metric",
                "R40",
            ]
        )
    out = capsys.readouterr().out
    assert out.startswith("Car AP_R40@0.70, 0.70, 0.70:\nbbox AP:") and "Car AP@" not in out
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        kitti_cli.main(["--label_path", str(labels), "--result_path", str(results), "--current_class", "0,1"])
    assert len([w for w in caught if "missing" in str(w.message)]) == 1  # one warning, not one per frame
    out = capsys.readouterr().out
    assert "Car AP@0.70, 0.70, 0.70:" in out and "Car AP_R40@" in out and "Pedestrian AP@0.50, 0.50, 0.50:" in out

    (results / "000002.txt").write_text(LABEL)  # 15 columns: no score
    with pytest.raises(ValueError, match=r"000002\.txt:1: expected 16 columns, got 15"):
        kitti_cli.evaluate(labels, results)
    (results / "000002.txt").write_text(LABEL.replace("46.70", "nan").rstrip("\n") + " 0.9\n")
    with pytest.raises(ValueError, match=r"000002\.txt:1: NaN or inf"):
        kitti_cli.evaluate(labels, results)
    (results / "000002.txt").write_text(LABEL.replace("1.65", "inf").rstrip("\n") + " 0.9\n")
    with pytest.raises(ValueError, match=r"000002\.txt"):
        kitti_cli.evaluate(labels, results)


# ----------------------------------------------------------------------------------------------------------------------
# the official devkit's numbers on real labels
# Reference values obtained with the official KITTI C++ devkit (cpp/evaluate_object.cpp, 3D/BEV version, from
# github.com/748811693aB/official_kitti_evaltool) built from source with boost (plots stubbed out, N_TESTIMAGES = 7481
# so that all shared label files are read), run on ../shared/data/kitti_labels/label_2 x each kitti_dets set; AP from
# its precision curves: R11 = sum(prec[0:41:4]) / 11, R40 = sum(prec[1:41]) / 40. "strict" = the devkit's own
# thresholds (0.7 / 0.5 / 0.5); "loose" = the same build with MIN_OVERLAP set to OpenPCDet's overlap_0_5 table
# (bbox 0.7 / 0.5 / 0.5, bev and 3d 0.5 / 0.25 / 0.25). Key: (class, metric, difficulty 0/1/2) -> (R11, R40).
DEVKIT = {
    ("real_car", "strict"): {
        ("Car", "bbox", 0): (45.4082, 46.8741),
        ("Car", "aos", 0): (45.3953, 46.8432),
        ("Car", "bbox", 1): (45.1230, 44.6216),
        ("Car", "aos", 1): (44.9396, 44.3905),
        ("Car", "bbox", 2): (44.8335, 44.2134),
        ("Car", "aos", 2): (44.5055, 43.7999),
        ("Car", "bev", 0): (45.0551, 46.1484),
        ("Car", "bev", 1): (44.4846, 43.9047),
        ("Car", "bev", 2): (44.1813, 43.2157),
        ("Car", "3d", 0): (43.6202, 41.9118),
        ("Car", "3d", 1): (41.2660, 37.3725),
        ("Car", "3d", 2): (35.5652, 34.7913),
    },
    ("real_car", "loose"): {
        ("Car", "bbox", 0): (45.4082, 46.8741),
        ("Car", "aos", 0): (45.3953, 46.8432),
        ("Car", "bbox", 1): (45.1230, 44.6216),
        ("Car", "aos", 1): (44.9396, 44.3905),
        ("Car", "bbox", 2): (44.8335, 44.2134),
        ("Car", "aos", 2): (44.5055, 43.7999),
        ("Car", "bev", 0): (45.4300, 47.0123),
        ("Car", "bev", 1): (46.3848, 47.2069),
        ("Car", "bev", 2): (46.3216, 46.9355),
        ("Car", "3d", 0): (45.4262, 46.9512),
        ("Car", "3d", 1): (46.3930, 47.0672),
        ("Car", "3d", 2): (46.2373, 46.5815),
    },
    ("noisy_all", "strict"): {
        ("Car", "bbox", 0): (68.4253, 69.4548),
        ("Car", "aos", 0): (65.2648, 65.6568),
        ("Car", "bbox", 1): (68.1385, 69.2408),
        ("Car", "aos", 1): (65.1704, 65.6970),
        ("Car", "bbox", 2): (69.3530, 70.6999),
        ("Car", "aos", 2): (66.3777, 67.1602),
        ("Pedestrian", "bbox", 0): (69.9452, 71.1610),
        ("Pedestrian", "aos", 0): (66.4864, 67.0474),
        ("Pedestrian", "bbox", 1): (69.2074, 71.9771),
        ("Pedestrian", "aos", 1): (65.6762, 67.7005),
        ("Pedestrian", "bbox", 2): (69.6219, 72.5574),
        ("Pedestrian", "aos", 2): (65.7927, 67.9507),
        ("Cyclist", "bbox", 0): (66.7651, 68.4476),
        ("Cyclist", "aos", 0): (63.2944, 64.2709),
        ("Cyclist", "bbox", 1): (66.8173, 68.8237),
        ("Cyclist", "aos", 1): (63.7573, 65.0770),
        ("Cyclist", "bbox", 2): (67.1365, 69.0824),
        ("Cyclist", "aos", 2): (64.2434, 65.5217),
        ("Car", "bev", 0): (26.6237, 27.3099),
        ("Car", "bev", 1): (34.0182, 35.0491),
        ("Car", "bev", 2): (37.7364, 38.9315),
        ("Pedestrian", "bev", 0): (30.6492, 30.3547),
        ("Pedestrian", "bev", 1): (34.7283, 34.2529),
        ("Pedestrian", "bev", 2): (36.6494, 36.2413),
        ("Cyclist", "bev", 0): (46.6952, 45.3559),
        ("Cyclist", "bev", 1): (48.3792, 46.4484),
        ("Cyclist", "bev", 2): (48.7378, 46.9026),
        ("Car", "3d", 0): (10.9418, 9.8761),
        ("Car", "3d", 1): (16.0642, 14.4135),
        ("Car", "3d", 2): (16.2284, 16.3531),
        ("Pedestrian", "3d", 0): (27.3984, 26.4300),
        ("Pedestrian", "3d", 1): (31.2687, 30.0050),
        ("Pedestrian", "3d", 2): (33.0330, 31.8350),
        ("Cyclist", "3d", 0): (43.4816, 40.7261),
        ("Cyclist", "3d", 1): (45.2485, 42.4372),
        ("Cyclist", "3d", 2): (45.1666, 42.8538),
    },
    ("noisy_all", "loose"): {
        ("Car", "bbox", 0): (68.4253, 69.4548),
        ("Car", "aos", 0): (65.2648, 65.6568),
        ("Car", "bbox", 1): (68.1385, 69.2408),
        ("Car", "aos", 1): (65.1704, 65.6970),
        ("Car", "bbox", 2): (69.3530, 70.6999),
        ("Car", "aos", 2): (66.3777, 67.1602),
        ("Pedestrian", "bbox", 0): (69.9452, 71.1610),
        ("Pedestrian", "aos", 0): (66.4864, 67.0474),
        ("Pedestrian", "bbox", 1): (69.2074, 71.9771),
        ("Pedestrian", "aos", 1): (65.6762, 67.7005),
        ("Pedestrian", "bbox", 2): (69.6219, 72.5574),
        ("Pedestrian", "aos", 2): (65.7927, 67.9507),
        ("Cyclist", "bbox", 0): (66.7651, 68.4476),
        ("Cyclist", "aos", 0): (63.2944, 64.2709),
        ("Cyclist", "bbox", 1): (66.8173, 68.8237),
        ("Cyclist", "aos", 1): (63.7573, 65.0770),
        ("Cyclist", "bbox", 2): (67.1365, 69.0824),
        ("Cyclist", "aos", 2): (64.2434, 65.5217),
        ("Car", "bev", 0): (66.2341, 67.3583),
        ("Car", "bev", 1): (68.3689, 69.7056),
        ("Car", "bev", 2): (69.6217, 70.9665),
        ("Pedestrian", "bev", 0): (65.9660, 67.1023),
        ("Pedestrian", "bev", 1): (66.9495, 68.1497),
        ("Pedestrian", "bev", 2): (67.6273, 68.9258),
        ("Cyclist", "bev", 0): (66.3379, 67.9081),
        ("Cyclist", "bev", 1): (66.9685, 68.7358),
        ("Cyclist", "bev", 2): (67.1351, 68.8781),
        ("Car", "3d", 0): (62.4895, 63.4535),
        ("Car", "3d", 1): (65.9390, 65.5586),
        ("Car", "3d", 2): (67.9061, 67.1975),
        ("Pedestrian", "3d", 0): (65.1449, 64.7860),
        ("Pedestrian", "3d", 1): (66.3230, 67.5455),
        ("Pedestrian", "3d", 2): (67.1127, 68.4160),
        ("Cyclist", "3d", 0): (66.1624, 66.5742),
        ("Cyclist", "3d", 1): (66.5425, 68.2808),
        ("Cyclist", "3d", 2): (66.7126, 68.3834),
    },
    ("real_car_even", "strict"): {
        ("Car", "bbox", 0): (27.2273, 24.4359),
        ("Car", "aos", 0): (27.2244, 24.4241),
        ("Car", "bbox", 1): (27.0409, 22.4861),
        ("Car", "aos", 1): (26.9186, 22.3615),
        ("Car", "bbox", 2): (26.8413, 22.2957),
        ("Car", "aos", 2): (26.6179, 22.0624),
        ("Car", "bev", 0): (27.0126, 24.0550),
        ("Car", "bev", 1): (26.7019, 22.2594),
        ("Car", "bev", 2): (26.5021, 22.0492),
        ("Car", "3d", 0): (26.1143, 20.6741),
        ("Car", "3d", 1): (24.8769, 18.9525),
        ("Car", "3d", 2): (19.2357, 16.7750),
    },
    ("real_car_even", "loose"): {
        ("Car", "bbox", 0): (27.2273, 24.4359),
        ("Car", "aos", 0): (27.2244, 24.4241),
        ("Car", "bbox", 1): (27.0409, 22.4861),
        ("Car", "aos", 1): (26.9186, 22.3615),
        ("Car", "bbox", 2): (26.8413, 22.2957),
        ("Car", "aos", 2): (26.6179, 22.0624),
        ("Car", "bev", 0): (27.2488, 24.5556),
        ("Car", "bev", 1): (27.1526, 24.4977),
        ("Car", "bev", 2): (27.0677, 23.7985),
        ("Car", "3d", 0): (27.2412, 24.4993),
        ("Car", "3d", 1): (27.1414, 23.3931),
        ("Car", "3d", 2): (27.0236, 22.7086),
    },
}


@pytest.fixture(scope="module")
def shared_gt():
    labels = SHARED / "data" / "kitti_labels" / "label_2"
    if not labels.is_dir():
        pytest.skip("shared KITTI data not available")
    return kitti_common.get_label_annos(labels)


@pytest.mark.parametrize("det_set", ["real_car", "noisy_all", "real_car_even"])
def test_matches_official_devkit(shared_gt, det_set):
    det_dir = SHARED / "data" / "kitti_dets" / det_set
    if not det_dir.is_dir():
        pytest.skip(f"shared detection set {det_set} not available")
    dets = kitti_common.get_label_annos(det_dir, num_columns=16)
    assert len(dets) == len(shared_gt) == 7481
    res = kitti_eval.evaluate(shared_gt, dets, [0, 1, 2])
    checked = 0
    for t, table in enumerate(("strict", "loose")):
        ref = DEVKIT[(det_set, table)]
        classes = {c for c, _, _ in ref}
        assert len(ref) == 12 * len(classes)  # every present class x bbox/aos/bev/3d x 3 difficulties
        for (cls, metric, diff), (r11, r40) in ref.items():
            cid = kitti_eval.resolve_classes(cls)[0]
            assert res["ap"][(cid, metric, t, "R11")][diff] == pytest.approx(r11, abs=0.01), (cls, metric, diff, table)
            assert res["ap"][(cid, metric, t, "R40")][diff] == pytest.approx(r40, abs=0.01), (cls, metric, diff, table)
            checked += 2
    assert checked >= 48
    # and through the OpenPCDet entry point
    _, ret = kitti_eval.get_official_eval_result(shared_gt, dets, ["Car"])
    assert ret["Car_3d/moderate_R40"] == pytest.approx(DEVKIT[(det_set, "strict")][("Car", "3d", 1)][1], abs=0.01)
    assert ret["Car_bev/easy"] == pytest.approx(DEVKIT[(det_set, "strict")][("Car", "bev", 0)][0], abs=0.01)
