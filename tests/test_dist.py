"""Multi-process training and evaluation on CPU: scripts/dist_train.sh / dist_test.sh with 2 gloo processes."""

import os
import pickle
import subprocess
import sys
from argparse import Namespace
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _tiny_experiment import PYTHON, TOOLS, tiny_dataset, write_tiny_config  # noqa: E402

pytestmark = pytest.mark.slow
RUN = Path("tiny") / "tiny_pp" / "default"


def _env() -> dict:
    # The scripts call `python`: make it this venv's. One thread per process: 2 processes share 2 cores.
    return {**os.environ, "PATH": f"{PYTHON.parent}{os.pathsep}{os.environ['PATH']}", "OMP_NUM_THREADS": "1"}


def _frame_ids(result_pkl: Path) -> list[str]:
    with open(result_pkl, "rb") as f:
        return [str(anno["frame_id"]) for anno in pickle.load(f)]


def _val_ids() -> list[str]:
    return (tiny_dataset() / "ImageSets" / "val.txt").read_text().split()


@pytest.fixture(scope="module")
def dist_run(tmp_path_factory):
    """Two CPU processes train 2 epochs (3 frames, 1 per process per step: 2 iterations an epoch) and evaluate."""
    root = tmp_path_factory.mktemp("dist")
    cfg_file = write_tiny_config(root, epochs=2)
    cmd = ["bash", "scripts/dist_train.sh", "2", "--cfg_file", str(cfg_file), "--workers", "0", "--batch_size", "2",
           "--output_root", str(root / "output"), "--logger_iter_interval", "1",
           "--sync_bn", "--use_amp", "--fix_random_seed"]  # fmt: skip
    proc = subprocess.run(cmd, cwd=TOOLS, env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return root, cfg_file, proc.stdout + proc.stderr


def test_dist_train_runs_two_cpu_processes(dist_run):
    root, _, output = dist_run
    out = root / "output" / RUN
    assert "Total batch size: 2 (2 processes)" in output
    assert "--sync_bn: not applicable" in output and "--use_amp needs CUDA" in output
    assert output.count("Acc_iter 4 ") == 1  # 2 epochs x 2 iterations, logged by rank 0 only
    assert sorted(p.name for p in (out / "ckpt").iterdir()) == ["checkpoint_epoch_1.pth", "checkpoint_epoch_2.pth"]
    ckpt = torch.load(out / "ckpt" / "checkpoint_epoch_2.pth", weights_only=True)
    assert (ckpt["epoch"], ckpt["it"]) == (2, 4)
    assert not any(k.startswith("module.") for k in ckpt["model_state"])  # DDP wrapper not saved
    assert (out / "eval" / "eval_with_train" / "eval_list_val.txt").read_text().split() == ["2"]


def test_dist_eval_after_training_has_every_frame_once(dist_run):
    root, _, _ = dist_run
    result = root / "output" / RUN / "eval" / "eval_with_train" / "epoch_2" / "val" / "result.pkl"
    ids = _frame_ids(result)
    assert len(_val_ids()) % 2 == 1  # odd: the distributed sampler pads one rank with a repeated frame
    assert ids == _val_ids()


def test_dist_test_equals_single_process_evaluation(dist_run):
    root, cfg_file, _ = dist_run
    ckpt = root / "output" / RUN / "ckpt" / "checkpoint_epoch_2.pth"
    overrides = ["--set", "MODEL.POST_PROCESSING.SCORE_THRESH", "0.0"]  # an untrained model: keep its boxes
    cmd = ["bash", "scripts/dist_test.sh", "2", "--cfg_file", str(cfg_file), "--workers", "0", "--batch_size", "2",
           "--ckpt", str(ckpt), "--output_root", str(root / "output"), "--eval_tag", "dist", *overrides]  # fmt: skip
    proc = subprocess.run(cmd, cwd=TOOLS, env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "Car AP@0.70" in proc.stderr
    dist_result = root / "output" / RUN / "eval" / "epoch_2" / "val" / "dist" / "result.pkl"
    with open(dist_result, "rb") as f:
        dist_annos = pickle.load(f)
    assert [str(a["frame_id"]) for a in dist_annos] == _val_ids()

    # Reference: the same evaluation in this process, one process, batch size 1.
    from easydict import EasyDict
    from eval_utils.eval_utils import eval_one_epoch
    from train_utils.experiment import load_experiment_config

    from pcdet.config import cfg_from_list
    from pcdet.datasets import build_dataloader
    from pcdet.models import build_network
    from pcdet.utils import common_utils

    cfg = load_experiment_config(str(cfg_file), None, EasyDict({"ROOT_DIR": TOOLS.parent, "LOCAL_RANK": 0}))
    cfg_from_list(overrides[1:], cfg)
    dataset, loader, _ = build_dataloader(cfg.DATA_CONFIG, cfg.CLASS_NAMES, 1, False, workers=0, training=False)
    model = build_network(cfg.MODEL, len(cfg.CLASS_NAMES), dataset)
    model.load_params_strict(str(ckpt))
    args = Namespace(save_to_file=False, infer_time=False)
    # torchrun gives each rank one thread; use one here too, so float sums (and with them the NMS decisions of
    # near-tied boxes at IoU 0.01) come out the same as in the ranks.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        eval_one_epoch(cfg, args, model, loader, 2, common_utils.create_logger(), result_dir=root / "single")
    finally:
        torch.set_num_threads(threads)
    with open(root / "single" / "result.pkl", "rb") as f:
        single_annos = pickle.load(f)
    assert sum(len(a["name"]) for a in single_annos) > 0
    for single, dist in zip(single_annos, dist_annos, strict=True):
        assert str(single["frame_id"]) == str(dist["frame_id"])
        # Near-equal scores may still come out in another order: compare the detections as sets.
        np.testing.assert_allclose(_detections(single), _detections(dist), atol=1e-4)


def _detections(anno: dict) -> np.ndarray:
    labels = [["Car", "Pedestrian", "Cyclist"].index(name) for name in anno["name"]]
    rows = np.column_stack([labels, anno["boxes_lidar"], anno["score"]]).astype(np.float64)
    order = np.lexsort(np.round(rows[:, ::-1], 2).T)
    return rows[order]


@pytest.mark.parametrize("launcher", ["slurm", "pytorch"])
def test_launchers_form_a_gloo_group_from_their_environment(launcher):
    """slurm: rank/size from SLURM_* variables; pytorch without torchrun's variables: a one-process group."""
    script = (
        f"import sys; sys.path.insert(0, {str(TOOLS)!r})\n"
        "from train_utils.dist_launch import init_distributed\n"
        "import torch.distributed as dist\n"
        f"print(init_distributed({launcher!r}, int(sys.argv[1]), 0), dist.get_backend())\n"
    )
    env = {k: v for k, v in _env().items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")}
    env["MASTER_ADDR"] = "127.0.0.1"
    if launcher == "slurm":
        env.update(SLURM_PROCID="0", SLURM_NTASKS="1", SLURM_LOCALID="0", SLURM_NODELIST="localhost")
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.run([str(PYTHON), "-c", script, str(port)], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["(True,", "1,", "0)", "gloo"]


def test_slurm_without_its_variables_is_a_clear_error(monkeypatch):
    from train_utils.dist_launch import init_distributed

    monkeypatch.delenv("SLURM_PROCID", raising=False)
    with pytest.raises(RuntimeError, match="--launcher slurm needs SLURM_PROCID"):
        init_distributed("slurm", 12345, 0)
