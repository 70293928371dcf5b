"""Safe checkpoint loading and atomic writes (pcdet.utils.checkpoint_io)."""

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from pcdet.utils.checkpoint_io import CheckpointError, atomic_torch_save, atomic_write_bytes, safe_load

SHARED = Path(__file__).resolve().parents[2] / "shared"


class _RunsCodeOnLoad:
    """Unpickling this calls os.system: the classic malicious-checkpoint payload."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_numpy_scalars_in_optimizer_state_load(tmp_path):
    state = {"optimizer_state": {"param_groups": [{"betas": (np.float64(0.95), np.float64(0.99))}]}, "arr": np.ones(3)}
    path = tmp_path / "ckpt.pth"
    torch.save(state, path)
    loaded = safe_load(path)
    assert loaded["optimizer_state"]["param_groups"][0]["betas"] == (0.95, 0.99)
    np.testing.assert_array_equal(loaded["arr"], np.ones(3))


def test_code_carrying_pickle_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save({"model_state": {}, "payload": _RunsCodeOnLoad(marker)}, path)
    with pytest.raises(CheckpointError, match="refusing to load"):
        safe_load(path)
    assert not marker.exists()


def test_plain_pickle_with_code_is_refused(tmp_path):
    marker = tmp_path / "pwned2"
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps(_RunsCodeOnLoad(marker)))
    with pytest.raises(CheckpointError):
        safe_load(path)
    assert not marker.exists()


def test_truncated_checkpoint_gives_clear_error(tmp_path):
    path = tmp_path / "full.pth"
    torch.save({"model_state": {"w": torch.randn(100, 100)}}, path)
    cut = tmp_path / "cut.pth"
    cut.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="cut.pth"):
        safe_load(cut)


def test_missing_checkpoint_names_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        safe_load(tmp_path / "nope.pth")


def test_atomic_save_replaces_whole_file_and_leaves_no_temp(tmp_path):
    path = tmp_path / "ckpt" / "checkpoint_epoch_1.pth"
    atomic_torch_save({"it": 1}, path)
    atomic_torch_save({"it": 2}, path)
    assert safe_load(path)["it"] == 2
    assert [p.name for p in path.parent.iterdir()] == ["checkpoint_epoch_1.pth"]


def test_atomic_write_failure_keeps_old_content(tmp_path):
    path = tmp_path / "infos.pkl"
    atomic_write_bytes(b"old", path)

    with pytest.raises(TypeError):
        atomic_write_bytes(object(), path)  # type: ignore[arg-type]
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["infos.pkl"]


@pytest.mark.skipif(not (SHARED / "reference/openpcdet/pointpillar_random.pth").exists(), reason="needs ../shared")
def test_openpcdet_reference_checkpoint_loads_safely():
    ckpt = safe_load(SHARED / "reference/openpcdet/pointpillar_random.pth")
    assert set(ckpt) >= {"model_state", "epoch", "it", "optimizer_state", "version"}
    assert ckpt["model_state"]["vfe.pfn_layers.0.linear.weight"].shape == (64, 10)


def test_atomic_files_get_the_umask_mode_not_mkstemp_0600(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_torch_save({"it": 1}, tmp_path / "a.pth")
        atomic_write_bytes(b"x", tmp_path / "b.pkl")
    finally:
        os.umask(old)
    assert (tmp_path / "a.pth").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "b.pkl").stat().st_mode & 0o777 == 0o644
