"""The README's main job, end to end at a tiny scale: 8 frames, one epoch per stage, then a re-run that skips all."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_main_job_runs_every_stage_then_skips_them(tmp_path):
    cmd = [sys.executable, "main_job.py", "--frames", "8", "--epochs", "1", "--batch_size", "2", "--workers", "0"]
    cmd += ["--data_dir", str(tmp_path / "data"), "--output_root", str(tmp_path / "out")]
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    first = subprocess.run(cmd, cwd=REPO / "tools", env=env, capture_output=True, text=True, timeout=900)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]

    job_dir = tmp_path / "out" / "main_job" / "main_job"
    rows = json.loads((job_dir / "results.json").read_text())
    assert [r["model"] for r in rows] == ["PointPillars teacher", "4x student", "4x + PointDistiller", "4x + FitNet"]
    teacher, student = rows[0], rows[1]
    assert teacher["params_M"] == pytest.approx(4.834888, abs=1e-6)  # OpenPCDet's PointPillars parameter count
    assert student["params_M"] < teacher["params_M"] / 3.5
    assert all(r["params_M"] == student["params_M"] for r in rows[2:])  # KD checkpoints are plain students
    assert all(0.0 <= r["mAP_3d"] <= 100.0 and r["latency_ms"] > 0 for r in rows)
    for name in ("bev_teacher", "bev_student", "bev_pointdistiller", "loss_teacher", "loss_pointdistiller"):
        assert (job_dir / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # Every stage printed the ordinary command a user can copy.
    assert (
        "$ cd tools && " in first.stdout
        and "train.py --cfg_file cfgs/kitti_models/pointpillar_kd_synthetic.yaml" in (first.stdout)
    )
    assert "| 4x + PointDistiller | 1.22 |" in first.stdout

    second = subprocess.run(cmd, cwd=REPO / "tools", env=env, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stderr[-3000:]
    assert second.stdout.count("[skip]") == 9  # data + 4 trainings + 4 evaluations
    assert "train.py --cfg_file" not in second.stdout
