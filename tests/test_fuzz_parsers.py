"""Fuzzing the KITTI file parsers (hypothesis): any label, calib or .bin content either parses into sane values or
raises the parser's own error (LabelError, CalibrationError, PointCloudError) naming the file — never another
exception type. Examples are bounded so the file runs in seconds."""

import math
import tempfile
from pathlib import Path

import numpy as np
import pytest
from easydict import EasyDict
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pcdet.config import cfg_from_yaml_file
from pcdet.datasets.dataset import DatasetTemplate
from pcdet.utils.calibration_kitti import Calibration, CalibrationError
from pcdet.utils.object3d_kitti import KITTI_CLASSES, LabelError, Object3d, get_objects_from_label
from pcdet.utils.point_cloud_io import PointCloudError, load_points_bin

REPO = Path(__file__).resolve().parents[1]
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

numbers = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.floats(min_value=-2000, max_value=2000, allow_nan=False),
    st.integers(min_value=-5, max_value=5),
    st.sampled_from([1e39, -1e39, 3.4e38]),  # beyond / at the edge of float32
).map(repr)
garbage = st.text(alphabet=st.characters(blacklist_categories=["Cs"]), max_size=12)
label_token = st.one_of(numbers, numbers, numbers, st.sampled_from([*KITTI_CLASSES, "Bus", "car", ""]), garbage)
separators = st.sampled_from([" ", "  ", "\t", " \t "])


@st.composite
def label_line(draw) -> str:
    """Mostly 15/16-column lines with a class first (the parser must look inside them), sometimes anything."""
    if draw(st.booleans()):
        cls = draw(st.sampled_from([*KITTI_CLASSES, "Bus"]))
        tokens = [cls, *draw(st.lists(numbers, min_size=14, max_size=15))]
        if draw(st.integers(0, 4)) == 0:  # one corrupted column
            tokens[draw(st.integers(0, len(tokens) - 1))] = draw(label_token)
    else:
        tokens = draw(st.lists(label_token, max_size=18))
    return draw(separators).join(tokens)


label_file = st.one_of(
    st.lists(label_line(), max_size=5).map("\n".join),
    st.binary(max_size=200),
)


@st.composite
def calib_file(draw) -> str | bytes:
    if draw(st.integers(0, 5)) == 0:
        return draw(st.binary(max_size=300))
    lines = []
    keys = ["P0", "P1", "P2", "P3", "R0_rect", "Tr_velo_to_cam", "Tr_imu_to_velo"]
    for key in draw(st.lists(st.sampled_from([*keys, "X"]), min_size=0, max_size=8)):
        size = draw(st.sampled_from([9, 12, 12, 3, 0, 16]))
        if draw(st.booleans()):  # plausible values: a random rotation-ish matrix
            values = [repr(v) for v in draw(st.lists(st.floats(-1e3, 1e3), min_size=size, max_size=size))]
        else:
            values = draw(st.lists(label_token, min_size=0, max_size=size))
        lines.append(f"{key}:{draw(separators)}{' '.join(values)}")
    if draw(st.booleans()):
        lines.append(draw(garbage))
    return "\n".join(lines)


def _write(directory: Path, name: str, content: str | bytes) -> Path:
    path = directory / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8", errors="surrogatepass")
    return path


@pytest.fixture(scope="module")
def work_dir():
    with tempfile.TemporaryDirectory(prefix="pcdet_fuzz_") as d:
        yield Path(d)


@FUZZ
@given(content=label_file, skip_unknown=st.booleans())
def test_label_parser_parses_or_raises_label_error(work_dir, content, skip_unknown):
    path = _write(work_dir, "000000.txt", content)
    try:
        objects = get_objects_from_label(path, skip_unknown=skip_unknown)
    except LabelError as exc:
        assert "000000.txt" in str(exc)
        return
    for obj in objects:
        assert obj.cls_type in KITTI_CLASSES and obj.level in (-1, 0, 1, 2)
        values = [obj.truncation, obj.alpha, obj.h, obj.w, obj.l, obj.ry, *obj.box2d, *obj.loc]
        assert all(math.isfinite(v) for v in values)
        again = Object3d(obj.to_kitti_format())  # what we write, we read back
        assert again.cls_type == obj.cls_type and again.occlusion == obj.occlusion


@FUZZ
@given(content=calib_file())
def test_calib_parser_parses_or_raises_calibration_error(work_dir, content):
    path = _write(work_dir, "calib.txt", content)
    try:
        calib = Calibration(path)
    except CalibrationError as exc:
        assert "calib.txt" in str(exc)
        return
    pts = np.array([[10.0, 2.0, -1.0], [30.0, -5.0, 0.5]])
    back = calib.rect_to_lidar(calib.lidar_to_rect(pts))
    assert np.isfinite(back).all()
    np.testing.assert_allclose(back, pts, rtol=1e-3, atol=1e-3 * (1 + np.abs(calib.lidar_to_rect(pts)).max()))


@pytest.fixture(scope="module")
def test_mode_dataset(work_dir):
    cfg = cfg_from_yaml_file(REPO / "tools/cfgs/dataset_configs/kitti_dataset.yaml", EasyDict())
    return DatasetTemplate(cfg, ["Car", "Pedestrian", "Cyclist"], training=False, root_path=work_dir)


@FUZZ
@given(content=st.one_of(st.binary(max_size=400), st.lists(st.floats(width=32), max_size=64).map(
    lambda v: np.array(v, dtype=np.float32).tobytes())))  # fmt: skip
def test_bin_reader_parses_or_raises_point_cloud_error_and_voxels_stay_finite(work_dir, test_mode_dataset, content):
    path = _write(work_dir, "000000.bin", content)
    try:
        points = load_points_bin(path)
    except PointCloudError as exc:
        assert len(content) % 16 != 0 and "000000.bin" in str(exc)
        return
    assert len(content) % 16 == 0 and points.shape == (len(content) // 16, 4) and points.dtype == np.float32
    # whatever the floats (NaN, inf, 1e38), the test-time pipeline yields finite voxels inside the grid
    sample = test_mode_dataset.prepare_data({"points": points.copy(), "frame_id": "000000"})
    assert np.isfinite(sample["voxels"]).all()
    grid = test_mode_dataset.grid_size
    assert ((sample["voxel_coords"] >= 0) & (sample["voxel_coords"] < grid[::-1])).all()


# The gaps fuzzing found in the first parsers (each raised another exception type, or parsed into NaN/inf).
LABEL = "Car 0.00 0 -1.58 587.01 173.33 614.12 200.12 1.65 1.67 3.64 -0.65 1.71 46.70 -1.59"
CALIB = """P2: 721.5 0 609.5 44.8 0 721.5 172.8 0.2 0 0 1 0.003
R0_rect: 1 0 0 0 1 0 0 0 1
Tr_velo_to_cam: 0 -1 0 0 0 0 -1 -0.08 1 0 0 -0.27
"""


@pytest.mark.parametrize(
    "content",
    [
        LABEL.replace(" 0 -1.58", " inf -1.58"),  # was OverflowError (int(inf) occlusion)
        LABEL.replace(" 0 -1.58", " nan -1.58"),  # was ValueError from int(nan)
        LABEL.replace("1.65", "nan"),  # was parsed: a NaN box
        LABEL.replace("-0.65", "1e39"),  # was parsed: inf once stored as float32
        b"\x80abc",  # was UnicodeDecodeError
    ],
)
def test_label_gaps_found_by_fuzzing_are_label_errors(tmp_path, content):
    with pytest.raises(LabelError, match="000000.txt"):
        get_objects_from_label(_write(tmp_path, "000000.txt", content))


@pytest.mark.parametrize(
    "content",
    [
        CALIB.replace("R0_rect: 1 0 0 0 1 0 0 0 1", "R0_rect: 0 0 0 0 0 0 0 0 0"),  # was numpy LinAlgError
        CALIB.replace("P2: 721.5", "P2: 0"),  # was parsed: division by a zero focal length later
        CALIB.replace("-0.08", "nan"),  # was parsed: NaN transforms
        CALIB.replace("-0.08", "1e39"),  # was parsed: inf once stored as float32
        b"P2: \xff",  # was UnicodeDecodeError
    ],
)
def test_calib_gaps_found_by_fuzzing_are_calibration_errors(tmp_path, content):
    with pytest.raises(CalibrationError, match="calib.txt"):
        Calibration(_write(tmp_path, "calib.txt", content))
    assert Calibration(_write(tmp_path, "good.txt", CALIB)).fu == pytest.approx(721.5)
