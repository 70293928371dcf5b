"""The committed teacher checkpoint of the main job: intact, small, and not stale for today's code and generator."""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tools"))

import freeze_teacher  # noqa: E402
import main_job  # noqa: E402

from pcdet.datasets.synthetic import GENERATOR_VERSION  # noqa: E402
from pcdet.utils.checkpoint_io import file_sha256, safe_load  # noqa: E402

CKPT = main_job.COMMITTED_TEACHER
TEACHER_CFG = REPO / "tools" / "cfgs" / "kitti_models" / main_job.TEACHER_CFG


def test_checkpoint_is_the_recorded_file():
    readme = (CKPT.parent / "README.md").read_text()
    recorded = re.search(r"sha256 `([0-9a-f]{64})`", readme)
    assert recorded, "checkpoints/README.md must record the sha256"
    assert file_sha256(CKPT) == recorded.group(1)
    assert CKPT.stat().st_size <= 20_000_000
    assert f"{CKPT.stat().st_size} bytes" in readme


def test_checkpoint_is_not_stale(monkeypatch):
    """Fails when the generator, the teacher's config or its network code changed since the teacher was frozen:
    then retrain it with the command in checkpoints/README.md (main_job.py --train_teacher runs it)."""
    monkeypatch.chdir(REPO / "tools")  # _BASE_CONFIG_ paths are relative to tools/
    checkpoint = safe_load(CKPT)
    provenance = checkpoint["provenance"]
    assert provenance["generator_version"] == GENERATOR_VERSION
    model, cfg = freeze_teacher.build_teacher(str(TEACHER_CFG))
    assert provenance["model_config"] == freeze_teacher.model_config(cfg)
    model.load_state_dict(checkpoint["model_state"], strict=True)
    assert freeze_teacher.probe_fingerprint(model, cfg) == pytest.approx(provenance["fingerprint"], rel=1e-4, abs=1e-5)
    assert "train.py --cfg_file cfgs/kitti_models/pointpillar_synthetic.yaml" in provenance["command"]
    assert os.fspath(CKPT.name) in (CKPT.parent / "README.md").read_text()
