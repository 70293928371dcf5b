"""The README's main job, end to end at a tiny scale: a live teacher of one epoch, students side by side, then a
re-run that skips every stage."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_main_job_runs_every_stage_then_skips_them(tmp_path):
    cmd = [sys.executable, "main_job.py", "--train_frames", "8", "--dev_frames", "4", "--test_frames", "4"]
    cmd += ["--epochs", "1", "--batch_size", "2", "--workers", "0", "--train_teacher", "--teacher_epochs", "1"]
    cmd += ["--data_root", str(tmp_path / "data"), "--output_root", str(tmp_path / "out")]
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    first = subprocess.run(cmd, cwd=REPO / "tools", env=env, capture_output=True, text=True, timeout=900)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]

    job_dir = tmp_path / "out" / "main_job" / "main_job"
    rows = json.loads((job_dir / "results.json").read_text())
    assert [r["model"] for r in rows] == [
        "PointPillars teacher",
        "4x student",
        "4x + PointDistiller (frozen teacher adapter)",
    ]
    teacher, student = rows[0], rows[1]
    assert teacher["params_M"] == pytest.approx(4.834888, abs=1e-6)  # OpenPCDet's PointPillars parameter count
    assert student["params_M"] < teacher["params_M"] / 3.5
    assert rows[2]["params_M"] == student["params_M"]  # KD checkpoints are plain students
    assert all(0.0 <= r["mAP_3d"] <= 100.0 and r["latency_ms"] > 0 for r in rows)
    for name in ("bev_teacher", "bev_student", "bev_pointdistiller", "loss_teacher", "loss_pointdistiller"):
        assert (job_dir / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # Every stage printed the ordinary command a user can copy; the table was evaluated on the held-out test set.
    out = first.stdout + first.stderr
    assert (
        "$ cd tools && " in out and "train.py --cfg_file cfgs/kitti_models/pointpillar_kd_frozen_synthetic.yaml" in out
    )
    assert out.count(f"DATA_CONFIG.DATA_PATH {tmp_path / 'data' / 'test'}") == 3
    assert "| 4x + PointDistiller (frozen teacher adapter) | 1.22 |" in first.stdout

    second = subprocess.run(cmd, cwd=REPO / "tools", env=env, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stderr[-3000:]
    again = second.stdout + second.stderr
    assert again.count("[skip]") == 8  # 2 data sets + 3 trainings + 3 evaluations
    assert "train.py --cfg_file" not in again
