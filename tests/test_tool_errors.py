"""What the tools tell a user: the `Train:` log lines by default, one line for a run with nothing to do, one
`error: ...` line (exit 2) for an input error, summarised checkpoint mismatches, both files of --pretrained_model,
demo.py naming the missing label or calib file, the slurm scripts' srun command."""

import logging
import os
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from easydict import EasyDict

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _tiny_experiment import PYTHON, REPO, TOOLS, tiny_dataset, write_tiny_config  # noqa: E402
from train_utils.experiment import ToolError  # noqa: E402

from pcdet.config import ConfigError, cfg_from_yaml_file  # noqa: E402
from pcdet.models import build_network  # noqa: E402
from pcdet.models.detectors import StateDictMismatchError, load_state_dict_strict  # noqa: E402
from pcdet.models.kd.errors import KDConfigError  # noqa: E402
from pcdet.models.kd.teacher import find_file, load_teacher_weights  # noqa: E402
from pcdet.utils import common_utils  # noqa: E402
from pcdet.utils.calibration_kitti import CalibrationError  # noqa: E402
from pcdet.utils.checkpoint_io import CheckpointError, atomic_torch_save  # noqa: E402
from pcdet.utils.cli import USER_ERRORS, InputError, one_line_message, run_tool  # noqa: E402
from pcdet.utils.object3d_kitti import LabelError  # noqa: E402
from pcdet.utils.point_cloud_io import PointCloudError, load_points_bin  # noqa: E402

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _tool(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(PYTHON), *args], cwd=TOOLS, env=ENV, capture_output=True, text=True, timeout=300)


def _error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error: ")]


# ------------------------------------------------------------------------------------ train.py logging, no-op runs
def test_train_logs_train_lines_by_default_bars_on_request_and_says_when_nothing_is_left(tmp_path):
    cfg_file = write_tiny_config(tmp_path, epochs=1)
    out = tmp_path / "out"
    run_dir = out / "tiny" / "tiny_pp" / "default"
    common = ["train.py", "--cfg_file", str(cfg_file), "--workers", "0", "--output_root", str(out), "--skip_eval",
              "--logger_iter_interval", "1"]  # fmt: skip

    first = _tool(*common)
    assert first.returncode == 0, first.stderr[-3000:]
    (log_file,) = run_dir.glob("train_*.log")
    assert re.search(r"Train: epoch 1/1 \[1/\d+\] Acc_iter 1 LR \S+ Loss \S+", log_file.read_text())
    assert "\r" not in first.stderr  # no tqdm bars in a log-lines run

    bars = _tool(*common, "--epochs", "2", "--use_tqdm_to_record")
    assert bars.returncode == 0, bars.stderr[-3000:]
    newest = max(run_dir.glob("train_*.log"), key=lambda p: p.stat().st_mtime_ns)
    assert newest != log_file and "Train:" not in newest.read_text()
    assert "train: 100%" in bars.stderr  # the bar replaced the lines
    assert (run_dir / "ckpt" / "checkpoint_epoch_2.pth").is_file()

    noop = _tool(*common, "--epochs", "2")
    assert noop.returncode == 0, noop.stderr[-3000:]
    said = [line for line in noop.stderr.splitlines() if "Nothing to train" in line]
    assert len(said) == 1 and "checkpoint_epoch_2.pth is at epoch 2 and --epochs is 2" in said[0]
    assert "Train:" not in noop.stderr and "epochs:" not in noop.stderr


def test_eval_all_without_checkpoints_is_one_error_line_and_exit_2(tmp_path):
    cfg_file = write_tiny_config(tmp_path)
    empty = tmp_path / "empty_ckpt"
    empty.mkdir()
    proc = _tool("test.py", "--cfg_file", str(cfg_file), "--eval_all", "--ckpt_dir", str(empty), "--workers", "0",
                 "--max_waiting_mins", "0", "--output_root", str(tmp_path / "out"))  # fmt: skip
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert _error_lines(proc.stderr) == [f"error: Nothing evaluated: no checkpoint_epoch_*.pth in {empty}"]
    assert "Traceback" not in proc.stderr


def test_set_typo_is_a_single_error_line(tmp_path):
    cfg_file = write_tiny_config(tmp_path)
    proc = _tool("train.py", "--cfg_file", str(cfg_file), "--set", "OPTIMIZATION.LRR", "0.1")
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: unknown config key 'OPTIMIZATION.LRR'; did you mean")


# ------------------------------------------------------------------------------------------- run_tool itself
def _failing_main(argv):
    raise ConfigError("unknown config key 'A.B'")


def test_run_tool_prints_one_line_logs_the_traceback_and_debug_reraises(tmp_path, capsys):
    log_file = tmp_path / "run.log"
    common_utils.create_logger(log_file)
    with pytest.raises(SystemExit) as info:
        run_tool(_failing_main, ["--cfg_file", "x"])
    assert info.value.code == 2
    assert capsys.readouterr().err == "error: unknown config key 'A.B'\n"
    assert "Traceback (most recent call last)" in log_file.read_text()
    with pytest.raises(ConfigError):
        run_tool(_failing_main, ["--debug"])
    with pytest.raises(SystemExit):  # after --set, "--debug" is a KEY VALUE item, not the flag
        run_tool(_failing_main, ["--set", "--debug", "1"])
    common_utils.create_logger()  # drop the file handler

    def bug(argv):
        raise ZeroDivisionError("a bug keeps its traceback")

    with pytest.raises(ZeroDivisionError):
        run_tool(bug, [])


def test_every_project_error_type_is_reported_as_an_input_error():
    kinds = (ConfigError, KDConfigError, StateDictMismatchError, CheckpointError, PointCloudError, CalibrationError,
             LabelError, ToolError)  # fmt: skip
    assert all(issubclass(kind, InputError) for kind in kinds)
    assert issubclass(ConfigError, KeyError) and issubclass(PointCloudError, ValueError)  # their builtin bases stay
    assert FileNotFoundError in USER_ERRORS and not issubclass(RuntimeError, USER_ERRORS)


@pytest.mark.parametrize("workers", ["1", "2"])  # in the process itself, and in a pool of info workers
def test_corrupt_bin_during_info_creation_is_one_error_line_naming_the_file(tmp_path, workers):
    from pcdet.datasets.synthetic.generate import generate_dataset

    generate_dataset(tmp_path, num_frames=4, seed=0, val_fraction=0.5, workers=1, progress=False)
    frame = (tmp_path / "ImageSets" / "train.txt").read_text().split()[1]
    bad = tmp_path / "training" / "velodyne" / f"{frame}.bin"
    bad.write_bytes(bad.read_bytes()[:100])  # 100 bytes: 6.25 points
    command = [str(PYTHON), "-m", "pcdet.datasets.kitti.kitti_dataset", "create_kitti_infos",
               "tools/cfgs/dataset_configs/synthetic_kitti_dataset.yaml", "--data_path", str(tmp_path),
               "--workers", workers]  # fmt: skip
    proc = subprocess.run(command, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-3000:]
    message = f"error: corrupt LiDAR file {bad}: 100 bytes is not a multiple of 16 (4 float32 per point)"
    assert _error_lines(proc.stderr) == [message]
    assert proc.stderr.rstrip().splitlines()[-1] == message  # after the progress bar, on a line of its own
    assert "Traceback" not in proc.stderr and "RuntimeWarning" not in proc.stderr
    assert not (tmp_path / "kitti_infos_train.pkl").exists()

    debug = subprocess.run([*command, "--debug"], cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300)
    assert debug.returncode == 1 and "Traceback (most recent call last)" in debug.stderr
    assert debug.stderr.rstrip().endswith(message.removeprefix("error: "))


class _BadFrames(torch.utils.data.Dataset):
    def __init__(self, path: Path) -> None:
        self.path = path

    def __len__(self) -> int:
        return 1

    def __getitem__(self, index: int):
        return load_points_bin(self.path)


def test_corrupt_bin_read_in_a_loader_worker_becomes_the_original_one_line_message(tmp_path):
    bad = tmp_path / "000007.bin"
    bad.write_bytes(b"\0" * 20)
    loader = torch.utils.data.DataLoader(_BadFrames(bad), num_workers=1)
    with pytest.raises(PointCloudError) as info:
        next(iter(loader))
    assert "Original Traceback" in str(info.value)  # what torch re-raises: the worker's whole traceback
    assert one_line_message(info.value) == (
        f"corrupt LiDAR file {bad}: 20 bytes is not a multiple of 16 (4 float32 per point)"
    )
    assert one_line_message(ToolError("two\n  lines")) == "two lines"


# ------------------------------------------------------------------------------------------ checkpoint messages
def _pointpillar(vfe_width: int):
    cfg = cfg_from_yaml_file(TOOLS / "cfgs/kitti_models/pointpillar.yaml", EasyDict())
    cfg.MODEL.VFE.NUM_FILTERS = [vfe_width]
    cfg.MODEL.MAP_TO_BEV.NUM_BEV_FEATURES = vfe_width
    cfg.MODEL.BACKBONE_2D.LAYER_NUMS = [1, 1, 1]
    cfg.MODEL.BACKBONE_2D.NUM_FILTERS = [vfe_width, vfe_width, vfe_width]
    cfg.MODEL.BACKBONE_2D.NUM_UPSAMPLE_FILTERS = [vfe_width, vfe_width, vfe_width]
    pcr = np.array([0.0, -5.12, -3.0, 10.24, 5.12, 1.0], np.float32)
    voxel = np.array([0.16, 0.16, 4], np.float32)
    geometry = SimpleNamespace(
        class_names=list(cfg.CLASS_NAMES), point_cloud_range=pcr, voxel_size=voxel,
        grid_size=np.round((pcr[3:6] - pcr[0:3]) / voxel).astype(np.int64),
        point_feature_encoder=SimpleNamespace(num_point_features=4), depth_downsample_factor=None,
    )  # fmt: skip
    return build_network(cfg.MODEL, 3, geometry)


def test_teacher_mismatch_is_one_short_line_with_count_first_keys_and_a_width_hint(tmp_path):
    teacher, narrow = _pointpillar(16), _pointpillar(8)
    ckpt = tmp_path / "student.pth"
    atomic_torch_save({"model_state": narrow.state_dict()}, ckpt)
    with pytest.raises(KDConfigError) as info:
        load_teacher_weights(teacher, ckpt, Path("cfgs/kitti_models/pointpillar.yaml"))
    message = str(info.value)
    assert "\n" not in message and len(message) < 800, message
    n_shapes = sum(teacher.state_dict()[k].shape != v.shape for k, v in narrow.state_dict().items())
    assert (
        f"{n_shapes} shape mismatches: vfe.pfn_layers.0.linear.weight: checkpoint (8, 10) vs model (16, 10)" in message
    )
    assert f"and {n_shapes - 3} more" in message and "model built from cfgs/kitti_models/pointpillar.yaml" in message
    assert "hint: VFE width 8 in the checkpoint vs 16 in the model: a checkpoint of a 4x smaller model" in message

    prefixed = {f"module.{k}": v for k, v in teacher.state_dict().items()}
    with pytest.raises(StateDictMismatchError, match="saved from a DistributedDataParallel wrapper"):
        load_state_dict_strict(teacher, prefixed)


def test_missing_teacher_names_each_tried_path_once(monkeypatch):
    monkeypatch.chdir(TOOLS)  # from tools/, "cwd/x" and "ROOT_DIR/tools/x" are the same file
    with pytest.raises(KDConfigError) as info:
        find_file("no_such_teacher.pth", "teacher checkpoint")
    assert str(info.value) == f"teacher checkpoint not found: no_such_teacher.pth (tried {TOOLS}/no_such_teacher.pth)"


def test_train_py_with_a_missing_or_mismatched_teacher_ends_in_one_error_line(tmp_path):
    wrong = tmp_path / "student_4x_like.pth"
    atomic_torch_save({"model_state": _pointpillar(32).state_dict()}, wrong)  # the teacher config is 64 wide
    missing = tmp_path / "no_teacher.pth"
    expected = {
        missing: f"error: teacher checkpoint (--teacher_ckpt) not found: {missing} (tried {missing})",
        wrong: "hint: VFE width 32 in the checkpoint vs 64 in the model: a checkpoint of a 4x smaller model",
    }
    for teacher, wanted in expected.items():
        proc = _tool("train.py", "--cfg_file", "cfgs/kitti_models/pointpillar_kd_synthetic.yaml", "--workers", "0",
                     "--output_root", str(tmp_path / "out"), "--teacher_ckpt", str(teacher),
                     "--set", "DATA_CONFIG.DATA_PATH", str(tiny_dataset()))  # fmt: skip
        assert proc.returncode == 2, proc.stderr[-3000:]
        (line,) = _error_lines(proc.stderr)
        assert wanted in line and len(line) < 800 and "Traceback" not in proc.stderr, line
        assert proc.stderr.rstrip().splitlines()[-1] == line


def test_pretrained_model_over_ckpt_names_both_files_and_warns_when_most_weights_did_not_load(tmp_path, caplog):
    model, other = _pointpillar(16), _pointpillar(8)
    ckpt, pretrained = tmp_path / "a.pth", tmp_path / "b.pth"
    atomic_torch_save({"model_state": model.state_dict(), "version": "t"}, ckpt)
    atomic_torch_save({"model_state": other.state_dict()}, pretrained)  # B's shapes overwrite most of A's
    logger = logging.getLogger("pcdet.test_pretrained")
    with caplog.at_level(logging.INFO, logger="pcdet.test_pretrained"):
        model.load_params_from_file(str(ckpt), logger=logger, to_cpu=True, pre_trained_path=str(pretrained))
    assert f"Loading parameters from checkpoint {ckpt} with {pretrained} over it" in caplog.text
    assert f"vfe.pfn_layers.0.linear.weight: {pretrained} has shape (8, 10)" in caplog.text
    (done,) = [r for r in caplog.records if "==> Done" in r.getMessage()]
    assert done.levelno == logging.WARNING and "the other" in done.getMessage()

    caplog.clear()
    with caplog.at_level(logging.INFO, logger="pcdet.test_pretrained"):
        model.load_params_from_file(str(ckpt), logger=logger, to_cpu=True)
    (done,) = [r for r in caplog.records if "==> Done" in r.getMessage()]
    assert done.levelno == logging.INFO and f"from {ckpt}" in done.getMessage()


# ------------------------------------------------------------------------------------------------ demo, slurm
def test_demo_names_the_missing_label_or_calib_file(tmp_path, caplog):
    demo = _load("demo")
    frame = tmp_path / "velodyne" / "000003.bin"
    (tmp_path / "label_2").mkdir()
    logger = logging.getLogger("pcdet.test_demo")
    with caplog.at_level(logging.WARNING, logger="pcdet.test_demo"):
        assert demo.find_ground_truth(frame, tmp_path / "label_2", logger) is None
        assert f"no label file {tmp_path / 'label_2' / '000003.txt'}" in caplog.text
        (tmp_path / "label_2" / "000003.txt").write_text("")
        assert demo.find_ground_truth(frame, tmp_path / "label_2", logger) is None
    # label_2/ and velodyne/ share a parent: its calib/ is named once
    assert f"no calibration file {tmp_path / 'calib' / '000003.txt'}; drawing" in caplog.text


@pytest.mark.parametrize(
    "script, args, expected",
    [
        ("slurm_train.sh", ["p1", "job", "16", "--cfg_file", "c.yaml"],
         "-p p1 --job-name=job --gres=gpu:8 --ntasks=16 --ntasks-per-node=8 --cpus-per-task=5 --kill-on-bad-exit=1 "
         "python -u {tools}/train.py --launcher slurm --tcp_port 23456 --cfg_file c.yaml"),
        ("slurm_test_mgpu.sh", ["p1", "job", "2", "--cfg_file", "c.yaml", "--eval_all"],
         "-p p1 --job-name=job --gres=gpu:2 --ntasks=2 --ntasks-per-node=2 --cpus-per-task=5 --kill-on-bad-exit=1 "
         "python -u {tools}/test.py --launcher slurm --tcp_port 23456 --cfg_file c.yaml --eval_all"),
        ("slurm_test_single.sh", ["p1", "--cfg_file", "c.yaml", "--ckpt", "x.pth"],
         "-p p1 --job-name=pcdet_test --gres=gpu:1 --ntasks=1 --ntasks-per-node=1 --cpus-per-task=5 "
         "--kill-on-bad-exit=1 python -u {tools}/test.py --cfg_file c.yaml --ckpt x.pth"),
    ],
)  # fmt: skip
def test_slurm_scripts_run_srun_with_openpcdets_arguments(tmp_path, script, args, expected):
    fake = tmp_path / "srun"
    fake.write_text('#!/usr/bin/env bash\necho "$@"\n')
    fake.chmod(0o755)
    env = {**ENV, "PATH": f"{tmp_path}:{os.environ['PATH']}", "PORT": "23456"}
    proc = subprocess.run(["bash", f"scripts/{script}", *args], cwd=TOOLS, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == expected.format(tools=TOOLS)
    usage = subprocess.run(["bash", f"scripts/{script}"], cwd=TOOLS, env=env, capture_output=True, text=True)
    assert usage.returncode == 2 and "usage:" in usage.stderr


class _CorruptLoader:
    """A loader whose first batch fails, as one reading a corrupt frame does."""

    dataset = SimpleNamespace(class_names=["Car"])

    def __len__(self) -> int:
        return 2

    def __iter__(self):
        raise PointCloudError("corrupt LiDAR file 000004.bin: 6 bytes is not a multiple of 16")


def test_an_error_during_evaluation_starts_its_own_line_after_the_progress_bar(tmp_path, capsys):
    from argparse import Namespace

    from eval_utils.eval_utils import eval_one_epoch

    cfg = EasyDict(MODEL=EasyDict(POST_PROCESSING=EasyDict()))
    logger = logging.getLogger("pcdet.test_bar")

    def main(argv):
        eval_one_epoch(cfg, Namespace(), torch.nn.Linear(1, 1), _CorruptLoader(), 1, logger, result_dir=tmp_path)

    with pytest.raises(SystemExit):
        run_tool(main, [])
    lines = [line for line in capsys.readouterr().err.split("\n") if line]
    assert lines[-1] == "error: corrupt LiDAR file 000004.bin: 6 bytes is not a multiple of 16"
    assert "eval" in lines[-2]  # the closed bar, on its own line


def _load(name: str):
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"pcdet_tool_{name}_defaults", TOOLS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_workers_default_fits_the_machine_and_demo_reads_bins_through_point_cloud_io(tmp_path, monkeypatch):
    for name in ("train", "test"):
        assert _load(name).build_parser().parse_args(["--cfg_file", "x"]).workers == min(4, os.cpu_count())
    demo = _load("demo")
    calls = []
    monkeypatch.setattr(demo, "load_points_bin", lambda path: calls.append(path) or np.zeros((1, 4), np.float32))
    demo.read_points(tmp_path / "x.bin")
    assert calls == [tmp_path / "x.bin"]
