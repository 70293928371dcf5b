"""The command-line tools: argument compatibility, experiment layout, test.py on a checkpoint, checkpoint sweeps,
demo.py pictures, BEV drawing and loss-curve plotting."""

import importlib.util
import json
import os
import pickle
import subprocess
import sys
from argparse import Namespace
from pathlib import Path

import numpy as np
import pytest
from easydict import EasyDict

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _tiny_experiment import PYTHON, REPO, TOOLS, tiny_dataset, write_tiny_config  # noqa: E402
from train_utils.experiment import exp_group_path, experiment_output_dir, load_experiment_config  # noqa: E402
from train_utils.train_utils import checkpoint_state, save_checkpoint  # noqa: E402


def _load_tool(name: str):
    """Import tools/<name>.py under a private module name (``test`` would clash with the stdlib package)."""
    spec = importlib.util.spec_from_file_location(f"pcdet_tool_{name}", TOOLS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


train_tool = _load_tool("train")
test_tool = _load_tool("test")
demo_tool = _load_tool("demo")


# ------------------------------------------------------------------------------------------------ arguments
def test_train_accepts_every_openpcdet_flag_and_both_local_rank_spellings():
    argv = ["--cfg_file", "x.yaml", "--batch_size", "8", "--epochs", "3", "--workers", "0", "--extra_tag", "e",
            "--ckpt", "c.pth", "--pretrained_model", "p.pth", "--launcher", "pytorch", "--tcp_port", "1234",
            "--sync_bn", "--fix_random_seed", "--ckpt_save_interval", "2", "--local_rank", "1",
            "--max_ckpt_save_num", "5", "--merge_all_iters_to_one_epoch", "--max_waiting_mins", "1",
            "--start_epoch", "1", "--num_epochs_to_eval", "2", "--save_to_file", "--use_tqdm_to_record",
            "--logger_iter_interval", "10", "--ckpt_save_time_interval", "60", "--wo_gpu_stat", "--use_amp",
            "--teacher_ckpt", "t.pth", "--set", "OPTIMIZATION.LR", "0.1", "MODEL.NAME", "X"]  # fmt: skip
    args = train_tool.build_parser().parse_args(argv)
    assert (args.batch_size, args.epochs, args.local_rank, args.launcher) == (8, 3, 1, "pytorch")
    assert args.set_cfgs == ["OPTIMIZATION.LR", "0.1", "MODEL.NAME", "X"]
    assert args.sync_bn and args.use_amp and args.wo_gpu_stat and args.teacher_ckpt == "t.pth"
    # torch >= 2 launchers pass --local-rank; older ones --local_rank
    assert train_tool.build_parser().parse_args(["--cfg_file", "x", "--local-rank", "3"]).local_rank == 3
    assert test_tool.build_parser().parse_args(["--cfg_file", "x", "--local-rank=2"]).local_rank == 2
    defaults = train_tool.build_parser().parse_args(["--cfg_file", "x"])
    assert (defaults.extra_tag, defaults.max_ckpt_save_num, defaults.ckpt_save_time_interval) == ("default", 30, 300)
    assert (defaults.launcher, defaults.max_waiting_mins, defaults.num_epochs_to_eval) == ("none", 0, 0)


def test_test_accepts_every_openpcdet_flag():
    argv = ["--cfg_file", "x.yaml", "--batch_size", "4", "--workers", "0", "--extra_tag", "e", "--ckpt", "c.pth",
            "--pretrained_model", "p", "--launcher", "slurm", "--tcp_port", "5", "--local_rank", "0",
            "--max_waiting_mins", "3", "--start_epoch", "7", "--eval_tag", "t", "--eval_all", "--ckpt_dir", "d",
            "--save_to_file", "--infer_time", "--set", "A.B", "1"]  # fmt: skip
    args = test_tool.build_parser().parse_args(argv)
    assert args.eval_all and args.infer_time and args.save_to_file and args.eval_tag == "t"
    assert args.set_cfgs == ["A.B", "1"]
    assert test_tool.build_parser().parse_args(["--cfg_file", "x"]).max_waiting_mins == 30


@pytest.mark.parametrize("tool", [train_tool, test_tool])
def test_fused_inference_is_the_default_and_no_fused_inference_opts_out(tool, capsys):
    assert tool.build_parser().parse_args(["--cfg_file", "x"]).no_fused_inference is False
    assert tool.build_parser().parse_args(["--cfg_file", "x", "--no_fused_inference"]).no_fused_inference is True
    with pytest.raises(SystemExit):
        tool.build_parser().parse_args(["--help"])
    assert "--no_fused_inference" in capsys.readouterr().out


def test_test_without_ckpt_or_eval_all_is_a_usage_error(capsys):
    with pytest.raises(SystemExit):
        test_tool.parse_config(["--cfg_file", str(TOOLS / "cfgs/kitti_models/pointpillar.yaml")])
    assert "--ckpt is required unless --eval_all" in capsys.readouterr().err


@pytest.mark.parametrize(
    "cfg_file, group",
    [
        ("cfgs/kitti_models/pointpillar.yaml", "kitti_models"),
        ("/abs/tools/cfgs/kitti_models/pointpillar.yaml", "kitti_models"),
        ("cfgs/nuscenes_models/sub/x.yaml", "nuscenes_models/sub"),
        ("/somewhere/else/my_cfg.yaml", "else"),
    ],
)
def test_exp_group_path(cfg_file, group):
    assert exp_group_path(cfg_file) == group


def test_experiment_layout_names_tag_and_group(monkeypatch):
    cfg = EasyDict({"ROOT_DIR": REPO})
    monkeypatch.chdir(TOOLS)  # users run the tools from tools/
    load_experiment_config("cfgs/kitti_models/pointpillar.yaml", ["OPTIMIZATION.NUM_EPOCHS", "3"], cfg)
    assert (cfg.TAG, cfg.EXP_GROUP_PATH, cfg.OPTIMIZATION.NUM_EPOCHS) == ("pointpillar", "kitti_models", 3)
    assert experiment_output_dir(cfg, "exp1") == REPO / "output" / "kitti_models" / "pointpillar" / "exp1"
    assert experiment_output_dir(cfg, "exp1", "/tmp/o") == Path("/tmp/o/kitti_models/pointpillar/exp1")


@pytest.mark.parametrize(
    "ckpt, epoch", [("a/checkpoint_epoch_12.pth", "12"), ("run7/latest_model.pth", "no_number"), (None, "no_number")]
)
def test_checkpoint_epoch_id_comes_from_the_file_name(ckpt, epoch):
    assert test_tool.checkpoint_epoch_id(ckpt) == epoch


# ------------------------------------------------------------------------------------------------ evaluation
@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A tiny config and two random-weight checkpoints (epochs 1 and 2) in its experiment's ckpt/ directory."""
    root = tmp_path_factory.mktemp("cli")
    cfg_file = write_tiny_config(root)
    cfg = load_experiment_config(str(cfg_file), None, EasyDict({"ROOT_DIR": REPO, "LOCAL_RANK": 0}))
    from pcdet.datasets import build_dataloader
    from pcdet.models import build_network

    dataset, loader, _ = build_dataloader(cfg.DATA_CONFIG, cfg.CLASS_NAMES, 2, False, workers=0, training=False)
    model = build_network(cfg.MODEL, len(cfg.CLASS_NAMES), dataset)
    ckpt_dir = experiment_output_dir(cfg, "default", root / "output") / "ckpt"
    for epoch in (1, 2):
        save_checkpoint(checkpoint_state(model, None, epoch, epoch * 2), ckpt_dir / f"checkpoint_epoch_{epoch}")
    return Namespace(root=root, cfg_file=cfg_file, cfg=cfg, model=model, loader=loader, ckpt_dir=ckpt_dir)


def test_test_py_on_a_checkpoint_writes_result_pkl_and_the_kitti_table(tiny_run):
    cmd = [str(PYTHON), "test.py", "--cfg_file", str(tiny_run.cfg_file), "--ckpt",
           str(tiny_run.ckpt_dir / "checkpoint_epoch_2.pth"), "--workers", "0", "--batch_size", "2",
           "--output_root", str(tiny_run.root / "output"), "--save_to_file", "--infer_time",
           "--set", "MODEL.POST_PROCESSING.SCORE_THRESH", "0.0"]  # fmt: skip
    proc = subprocess.run(cmd, cwd=TOOLS, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True,
                          text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    eval_dir = tiny_run.ckpt_dir.parent / "eval" / "epoch_2" / "val" / "default"
    with open(eval_dir / "result.pkl", "rb") as f:
        annos = pickle.load(f)
    val_ids = (tiny_dataset() / "ImageSets" / "val.txt").read_text().split()
    assert [str(a["frame_id"]) for a in annos] == val_ids
    assert sum(len(a["name"]) for a in annos) > 0
    (log_file,) = eval_dir.glob("log_eval_*.txt")
    log = log_file.read_text()
    assert "Car AP@0.70, 0.70, 0.70:" in log and "Cyclist AP_R40@0.50, 0.25, 0.25:" in log
    assert "ms/frame" in log and "recall_roi_0.3:" in log
    assert "Inference path: fused eval path" in log  # the default
    metrics = json.loads((eval_dir / "result_metrics.json").read_text())
    assert 0.0 <= metrics["Car_3d/moderate_R40"] <= 100.0 and metrics["infer_time_ms"] > 0
    assert f"{metrics['Car_3d/moderate_R40']:.4f}" in log  # the same number as the printed table
    txt_files = sorted((eval_dir / "final_result" / "data").glob("*.txt"))
    assert [p.stem for p in txt_files] == val_ids
    first = txt_files[0].read_text().splitlines()
    assert len(first) == len(annos[0]["name"]) and len(first[0].split()) == 16  # KITTI columns + score


def test_eval_all_sweeps_new_checkpoints_once(tiny_run, tmp_path):
    from eval_utils.eval_utils import repeat_eval_ckpt

    from pcdet.utils import common_utils

    args = Namespace(start_epoch=2, max_waiting_mins=0, save_to_file=False, infer_time=False)
    logger = common_utils.create_logger()
    evaluated = repeat_eval_ckpt(tiny_run.cfg, tiny_run.model, tiny_run.loader, args, tmp_path, logger,
                                 tiny_run.ckpt_dir, poll_seconds=0.01)  # fmt: skip
    assert evaluated == [2]  # epoch 1 is before --start_epoch
    assert (tmp_path / "eval_list_val.txt").read_text().split() == ["2"]
    assert (tmp_path / "epoch_2" / "val" / "result.pkl").is_file()
    assert list((tmp_path / "tensorboard_val").glob("events.out.tfevents.*"))

    args.start_epoch = 0
    again = repeat_eval_ckpt(tiny_run.cfg, tiny_run.model, tiny_run.loader, args, tmp_path, logger,
                             tiny_run.ckpt_dir, poll_seconds=0.01)  # fmt: skip
    assert again == [1]  # epoch 2 is already recorded
    assert (tmp_path / "eval_list_val.txt").read_text().split() == ["2", "1"]


@pytest.mark.parametrize("opt_out", [False, True])
def test_evaluation_runs_fused_unless_opted_out_and_gives_the_flags_back(tiny_run, tmp_path, opt_out):
    from eval_utils.eval_utils import eval_one_epoch

    from pcdet.models.model_utils.fused_inference import fused_active
    from pcdet.utils import common_utils

    model = tiny_run.model
    seen = []
    hook = model.backbone_2d.register_forward_pre_hook(lambda module, _: seen.append(fused_active(module)))
    args = Namespace(save_to_file=False, infer_time=False, no_fused_inference=opt_out)
    try:
        eval_one_epoch(tiny_run.cfg, args, model, tiny_run.loader, 1, common_utils.create_logger(), result_dir=tmp_path)
    finally:
        hook.remove()
    assert seen and set(seen) == {not opt_out}
    # Back as it came: training (or a KD teacher's no-grad eval forward) after an evaluation is not fused.
    assert not any(getattr(m, "fused_inference", False) for m in model.modules())


# ------------------------------------------------------------------------------------------------ demo + drawing
def test_demo_writes_a_bev_png_per_frame_with_ground_truth(tiny_run, tmp_path):
    velodyne = tiny_dataset() / "training" / "velodyne"
    frames = tmp_path / "frames"
    frames.mkdir()
    for name in ("000000.bin", "000001.bin"):
        (frames / name).write_bytes((velodyne / name).read_bytes())
    (tmp_path / "calib").mkdir()  # the demo looks for calib/ next to the label folder
    for name in ("000000.txt", "000001.txt"):
        (tmp_path / "calib" / name).write_bytes((tiny_dataset() / "training" / "calib" / name).read_bytes())
    cmd = [str(PYTHON), "demo.py", "--cfg_file", str(tiny_run.cfg_file), "--ckpt",
           str(tiny_run.ckpt_dir / "checkpoint_epoch_1.pth"), "--data_path", str(frames), "--label_path",
           str(tiny_dataset() / "training" / "label_2"), "--out_dir", str(tmp_path / "out")]  # fmt: skip
    proc = subprocess.run(cmd, cwd=TOOLS, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True,
                          text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["000000.png", "000001.png"]
    from PIL import Image

    with Image.open(tmp_path / "out" / "000000.png") as img:
        assert img.format == "PNG" and min(img.size) > 200
    labels = (tiny_dataset() / "training" / "label_2" / "000000.txt").read_text().splitlines()
    n_gt = sum(1 for line in labels if not line.startswith("DontCare"))
    assert f"000000.bin: 0 predictions, {n_gt} ground-truth boxes" in proc.stderr  # random weights: no scores > 0.1
    assert "Inference path: fused eval path" in proc.stderr


def test_demo_documents_no_fused_inference(capsys):
    with pytest.raises(SystemExit):
        demo_tool.parse_config(["--help"])
    assert "--no_fused_inference" in capsys.readouterr().out


def test_demo_ground_truth_boxes_match_the_dataset_infos(tiny_run):
    with open(tiny_dataset() / "kitti_infos_train.pkl", "rb") as f:
        info = pickle.load(f)[0]
    frame = tiny_dataset() / "training" / "velodyne" / f"{info['point_cloud']['lidar_idx']}.bin"
    boxes = demo_tool.find_ground_truth(frame, tiny_dataset() / "training" / "label_2", logger=None)
    assert len(boxes) == (info["annos"]["name"] != "DontCare").sum() > 0
    np.testing.assert_allclose(boxes, info["annos"]["gt_boxes_lidar"], atol=1e-4)


def test_corrupt_bin_is_a_clear_error(tmp_path):
    bad = tmp_path / "bad.bin"
    bad.write_bytes(b"\0" * 20)
    with pytest.raises(ValueError, match="corrupt LiDAR file .*bad.bin: 20 bytes is not a multiple of 16"):
        demo_tool.read_points(bad)
    good = tmp_path / "good.npy"
    np.save(good, np.arange(12, dtype=np.float64).reshape(2, 6))
    np.testing.assert_array_equal(demo_tool.read_points(good), np.array([[0, 1, 2, 3], [6, 7, 8, 9]], np.float32))


def test_bev_footprint_corners_and_heading():
    from visual_utils.bev_plot import bev_footprints, render_bev

    boxes = np.array([[10, 0, 0, 4, 2, 1.5, 0], [0, 5, 0, 4, 2, 1.5, np.pi / 2]], np.float32)
    corners, heading = bev_footprints(boxes)
    # heading 0: front (x + 2) edge first; heading pi/2: the car points along +y
    np.testing.assert_allclose(corners[0], [[12, 1], [12, -1], [8, -1], [8, 1]], atol=1e-5)
    np.testing.assert_allclose(corners[1], [[-1, 7], [1, 7], [1, 3], [-1, 3]], atol=1e-5)
    np.testing.assert_allclose(heading[0], [[10, 0], [12, 0]], atol=1e-5)
    np.testing.assert_allclose(heading[1], [[0, 5], [0, 7]], atol=1e-5)
    assert bev_footprints(np.zeros((0, 7)))[0].shape == (0, 4, 2)

    points = np.random.default_rng(0).uniform(-5, 15, size=(500, 4)).astype(np.float32)
    fig = render_bev(points, pred_boxes=boxes, pred_scores=np.array([0.9, 0.4]), pred_labels=np.array([1, 3]),
                     gt_boxes=boxes[:1], class_names=["Car", "Pedestrian", "Cyclist"],
                     point_cloud_range=[0, -10, -3, 20, 10, 1])  # fmt: skip
    ax = fig.axes[0]
    gt_lines, pred_lines = ax.collections[1], ax.collections[2]  # after the point scatter
    assert len(gt_lines.get_segments()) == 2 and len(pred_lines.get_segments()) == 4  # outline + heading each
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["Car", "Cyclist", "ground truth"]
    # plot axes: u = -y, v = x, so the first box's front edge is at v = 12
    np.testing.assert_allclose(pred_lines.get_segments()[0][0], [-1, 12], atol=1e-5)


# ------------------------------------------------------------------------------------------------ loss curves
def test_plot_curves_reads_tensorboard_and_logs(tmp_path):
    from tensorboardX import SummaryWriter
    from visual_utils.plot_curves import main, read_log_scalars, read_tensorboard_scalars

    writer = SummaryWriter(log_dir=str(tmp_path / "run" / "tensorboard"))
    for step in range(1, 6):
        writer.add_scalar("train/loss", 1.0 / step, step)
        writer.add_scalar("train/rpn_loss_cls", 0.5 / step, step)
        writer.add_scalar("meta_data/learning_rate", 0.001 * step, step)
    writer.close()
    scalars = read_tensorboard_scalars(tmp_path / "run")
    assert scalars["train/loss"] == pytest.approx({s: 1.0 / s for s in range(1, 6)})
    assert sorted(scalars) == ["meta_data/learning_rate", "train/loss", "train/rpn_loss_cls"]

    log = tmp_path / "train_20240101-000000.log"
    log.write_text(
        "2024-01-01 00:00:00,000   INFO  cfg.OPTIMIZATION.LR: 0.003\n"
        "2024-01-01 00:00:01,000   INFO  Train: epoch 1/2 [1/2] Acc_iter 1 LR 3.0000e-04 Loss 1.9397 (1.9397) "
        "Time data 0.26s step 0.64s ETA 0:00:00 loss_rpn=1.9397 rpn_loss_cls=1.0621\n"
        "2024-01-01 00:00:02,000   INFO  Train: epoch 1/2 [2/2] Acc_iter 2 LR 3.0000e-03 Loss 1.5 (1.7) "
        "Time data 0.15s step 0.51s ETA 0:00:00 loss_rpn=1.5 rpn_loss_cls=1e-3\n"
    )
    from_log = read_log_scalars(log)
    assert from_log["train/loss"] == {1: 1.9397, 2: 1.5}
    assert from_log["train/rpn_loss_cls"] == {1: 1.0621, 2: 0.001}
    assert from_log["meta_data/learning_rate"] == {1: 3e-4, 2: 3e-3}

    out = main([str(tmp_path / "run"), "--out", str(tmp_path / "curves.png")])
    assert out.stat().st_size > 1000 and out.read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(ValueError, match="no 'Train:' lines"):
        read_log_scalars(tmp_path / "run" / "tensorboard" / next(iter(os.listdir(tmp_path / "run" / "tensorboard"))))
