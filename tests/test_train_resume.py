"""Checkpointing and resuming in tools/train_utils: atomic saves, pruning, KD checkpoints, resume equivalence,
and kill -9 of a real ``train.py`` followed by the same command."""

import hashlib
import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from easydict import EasyDict
from torch import nn
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _tiny_experiment import PYTHON, TOOLS, sigkill_when, write_tiny_config  # noqa: E402
from train_utils.optimization import build_optimizer, build_scheduler, get_lr, get_momentum  # noqa: E402
from train_utils.train_utils import (  # noqa: E402
    LATEST_NAME,
    checkpoint_state,
    load_training_checkpoint,
    prune_checkpoints,
    remove_stale_temp_files,
    resume_candidates,
    resume_from_dir,
    save_checkpoint,
    train_model,
)

from pcdet.utils.checkpoint_io import safe_load  # noqa: E402

OPTIM = EasyDict(
    OPTIMIZER="adam_onecycle",
    LR=0.01,
    WEIGHT_DECAY=0.01,
    MOMENTUM=0.9,
    MOMS=[0.95, 0.85],
    PCT_START=0.4,
    DIV_FACTOR=10,
    DECAY_STEP_LIST=[2],
    LR_DECAY=0.1,
    LR_CLIP=1e-7,
    GRAD_NORM_CLIP=10,
)


class TinyDetector(nn.Module):
    """Enough of the detector interface for the training loop: batch_dict in, (ret, tb, disp) out, global_step."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(3, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 1))
        self.register_buffer("global_step", torch.LongTensor(1).zero_())

    def update_global_step(self) -> None:
        self.global_step += 1

    def forward(self, batch):
        x, y = batch["x"], batch["y"]
        # Random dropout-like noise: a resumed run only matches if the RNG is restored per epoch too.
        noise = torch.rand_like(x) * 0.01
        loss = nn.functional.mse_loss(self.net(x + noise).squeeze(1), y)
        return {"loss": loss}, {"mse": loss.item()}, {}


class FakeDistiller(nn.Module):
    """The distiller contract train.py relies on (see pcdet/models/kd): student + frozen teacher + an adapter."""

    def __init__(self) -> None:
        super().__init__()
        self.student = TinyDetector()
        self.teacher = TinyDetector().requires_grad_(False)
        self.adapter = nn.Linear(8, 8)

    @property
    def global_step(self):
        return self.student.global_step

    def update_global_step(self) -> None:
        self.student.update_global_step()

    def train(self, mode: bool = True):
        super().train(mode)
        self.teacher.eval()
        return self

    def forward(self, batch):
        ret, tb, disp = self.student(batch)
        kd = self.adapter(self.student.net[0](batch["x"])).pow(2).mean() * 1e-3
        tb["kd_loss"] = kd.item()
        return {"loss": ret["loss"] + kd}, tb, disp

    def checkpoint_model_state(self) -> dict:
        return self.student.state_dict()

    def extra_checkpoint_state(self) -> dict:
        return {"adapters": self.adapter.state_dict(), "teacher_sha256": "ab" * 32}

    def load_extra_checkpoint_state(self, state: dict) -> None:
        assert state["teacher_sha256"] == "ab" * 32
        self.adapter.load_state_dict(state["adapters"])


def model_func(model, batch):
    ret, tb, disp = model(batch)
    (model.module if hasattr(model, "module") else model).update_global_step()
    return ret["loss"], tb, disp


def make_loader(n=12, batch_size=3):
    gen = torch.Generator().manual_seed(5)
    samples = [{"x": torch.randn(3, generator=gen), "y": torch.randn((), generator=gen)} for _ in range(n)]
    return DataLoader(
        samples,
        batch_size=batch_size,
        shuffle=True,
        collate_fn=lambda b: {"x": torch.stack([s["x"] for s in b]), "y": torch.stack([s["y"] for s in b])},
    )


def run_training(model, ckpt_dir, start_iter=0, start_epoch=0, epochs=4, optimizer=None, stop_epoch=None, **kwargs):
    """Train a schedule planned for ``epochs``; ``stop_epoch`` ends the process early, as a crash would."""
    loader = make_loader()
    optimizer = optimizer or build_optimizer(model, OPTIM)
    sched, warm = build_scheduler(optimizer, len(loader), epochs, start_iter - 1, OPTIM)
    stop = epochs if stop_epoch is None else stop_epoch
    return train_model(
        model,
        optimizer,
        loader,
        model_func,
        sched,
        OPTIM,
        start_epoch,
        stop,
        start_iter,
        rank=0,
        tb_log=None,
        ckpt_save_dir=ckpt_dir,
        lr_warmup_scheduler=warm,
        use_logger_to_record=True,
        logger_iter_interval=1000,
        epoch_seed=666,
        **kwargs,
    )


# ------------------------------------------------------------------------------------------------ checkpoint files
def test_checkpoint_has_the_openpcdet_keys_and_loads_back(tmp_path):
    model = TinyDetector()
    optimizer = build_optimizer(model, OPTIM)
    path = save_checkpoint(checkpoint_state(model, optimizer, epoch=3, it=42), tmp_path / "checkpoint_epoch_3")
    assert path.name == "checkpoint_epoch_3.pth"
    ckpt = safe_load(path)
    assert set(ckpt) == {"epoch", "it", "model_state", "optimizer_state", "version"}
    assert (ckpt["epoch"], ckpt["it"]) == (3, 42) and ckpt["version"].startswith("pcdet+")
    assert list(ckpt["model_state"]) == list(model.state_dict())

    other = TinyDetector()
    other_opt = build_optimizer(other, OPTIM)
    assert load_training_checkpoint(other, other_opt, path) == (42, 3)
    for key, val in model.state_dict().items():
        torch.testing.assert_close(other.state_dict()[key], val)


def test_distiller_checkpoint_is_a_plain_student_checkpoint_plus_kd_state(tmp_path):
    model = FakeDistiller()
    optimizer = build_optimizer(model, OPTIM)
    teacher_ids = {id(p) for p in model.teacher.parameters()}
    assert not teacher_ids & {id(p) for p in optimizer.parameters()}
    path = save_checkpoint(checkpoint_state(model, optimizer, 1, 7), tmp_path / "checkpoint_epoch_1.pth")
    ckpt = safe_load(path)
    assert list(ckpt["model_state"]) == list(TinyDetector().state_dict())  # no teacher/adapter keys
    assert set(ckpt["kd_state"]) == {"adapters", "teacher_sha256"}

    plain = TinyDetector()  # what test.py / OpenPCDet do with it: a strict plain load
    plain.load_state_dict(ckpt["model_state"], strict=True)

    other = FakeDistiller()
    other_opt = build_optimizer(other, OPTIM)
    assert load_training_checkpoint(other, other_opt, path) == (7, 1)
    torch.testing.assert_close(other.adapter.weight, model.adapter.weight)
    torch.testing.assert_close(other.student.net[0].weight, model.student.net[0].weight)


def test_checkpoint_of_another_model_is_an_error_naming_keys(tmp_path):
    path = save_checkpoint(checkpoint_state(TinyDetector(), None, 1, 1), tmp_path / "checkpoint_epoch_1")
    other = nn.Sequential(nn.Linear(3, 8))
    with pytest.raises(RuntimeError, match="missing keys|unexpected keys"):
        load_training_checkpoint(other, None, path)
    # resume_from_dir must not silently skip it and start from scratch
    with pytest.raises(RuntimeError):
        resume_from_dir(other, None, tmp_path)


def test_prune_keeps_the_newest_epochs(tmp_path):
    for epoch in (1, 2, 3, 10, 11):
        (tmp_path / f"checkpoint_epoch_{epoch}.pth").write_bytes(b"x")
    (tmp_path / LATEST_NAME).write_bytes(b"x")
    removed = prune_checkpoints(tmp_path, 3)
    assert sorted(p.name for p in removed) == ["checkpoint_epoch_1.pth", "checkpoint_epoch_2.pth"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "checkpoint_epoch_10.pth",
        "checkpoint_epoch_11.pth",
        "checkpoint_epoch_3.pth",
        LATEST_NAME,
    ]


def test_truncated_newest_checkpoint_is_skipped_for_the_previous_one(tmp_path, caplog):
    model = TinyDetector()
    state = checkpoint_state(model, build_optimizer(model, OPTIM), 2, 20)
    good = save_checkpoint(state, tmp_path / "checkpoint_epoch_2")
    data = good.read_bytes()
    bad = tmp_path / "checkpoint_epoch_3.pth"
    bad.write_bytes(data[: len(data) // 2])  # e.g. copied by hand while being written
    os.utime(bad, ns=(time.time_ns() + 10**9, time.time_ns() + 10**9))
    assert resume_candidates(tmp_path)[0] == bad
    with caplog.at_level(logging.WARNING, logger="pcdet"):
        it, epoch, path = resume_from_dir(TinyDetector(), None, tmp_path, logging.getLogger("pcdet"))
    assert (it, epoch, path) == (20, 2, good)
    assert "Skipping unreadable checkpoint" in caplog.text and "checkpoint_epoch_3.pth" in caplog.text


def test_kill_during_save_leaves_no_checkpoint_that_resume_picks(tmp_path):
    """kill -9 in the middle of writing: only a temp file exists, resume uses the older checkpoint, cleanup
    removes the temp file."""
    model = TinyDetector()
    save_checkpoint(checkpoint_state(model, None, 1, 10), tmp_path / "checkpoint_epoch_1")
    script = textwrap.dedent(f"""
        import sys, time, torch
        sys.path.insert(0, {str(TOOLS)!r})
        from train_utils.train_utils import save_checkpoint

        def slow_save(obj, f, *args, **kwargs):  # write half a checkpoint, then hang until killed
            f.write(b"PK" + b"\\0" * 4096)
            f.flush()
            print("writing", flush=True)
            time.sleep(60)

        torch.save = slow_save
        save_checkpoint({{"model_state": {{}}, "epoch": 2, "it": 20}}, {str(tmp_path / "checkpoint_epoch_2")!r})
    """)
    proc = subprocess.Popen([str(PYTHON), "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "writing"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    names = sorted(p.name for p in tmp_path.iterdir())
    assert "checkpoint_epoch_2.pth" not in names
    temps = [n for n in names if n.endswith(".tmp")]
    assert len(temps) == 1 and temps[0].startswith(".checkpoint_epoch_2.pth.")
    assert [p.name for p in resume_candidates(tmp_path)] == ["checkpoint_epoch_1.pth"]
    assert resume_from_dir(TinyDetector(), None, tmp_path)[:2] == (10, 1)
    assert [p.name for p in remove_stale_temp_files(tmp_path)] == temps
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint_epoch_1.pth"]


# ------------------------------------------------------------------------------------------------ train_model
@pytest.mark.parametrize("model_cls", [TinyDetector, FakeDistiller])
def test_resumed_training_equals_uninterrupted(tmp_path, model_cls):
    torch.manual_seed(0)
    ref = model_cls()
    assert run_training(ref, tmp_path / "ref", epochs=4) == 16  # 4 iterations per epoch (12 samples, batch 3)
    assert [p.name for p in sorted((tmp_path / "ref").glob("checkpoint_epoch_*.pth"))] == [
        f"checkpoint_epoch_{e}.pth" for e in (1, 2, 3, 4)
    ]

    torch.manual_seed(0)
    first = model_cls()
    run_training(first, tmp_path / "run", epochs=4, stop_epoch=2, max_ckpt_save_num=1)
    assert [p.name for p in (tmp_path / "run").iterdir()] == ["checkpoint_epoch_2.pth"]

    torch.manual_seed(123)
    resumed = model_cls()
    optimizer = build_optimizer(resumed, OPTIM)
    it, epoch, path = resume_from_dir(resumed, optimizer, tmp_path / "run")
    assert (it, epoch) == (8, 2)
    # LR/momentum of the next iteration equal the uninterrupted run's at iteration 8
    probe = build_optimizer(model_cls(), OPTIM)
    build_scheduler(probe, 4, 4, 7, OPTIM)
    build_scheduler(optimizer, 4, 4, it - 1, OPTIM)
    assert (get_lr(optimizer), get_momentum(optimizer)) == (get_lr(probe), get_momentum(probe))
    final_it = run_training(resumed, tmp_path / "run", start_iter=it, start_epoch=epoch, epochs=4, optimizer=optimizer)
    assert final_it == 16

    final_ref = safe_load(tmp_path / "ref" / "checkpoint_epoch_4.pth")
    final = safe_load(tmp_path / "run" / "checkpoint_epoch_4.pth")
    assert final["it"] == final_ref["it"] == 16
    for key, val in final_ref["model_state"].items():
        torch.testing.assert_close(final["model_state"][key], val, rtol=0, atol=0, msg=key)
    assert final["optimizer_state"]["param_groups"] == final_ref["optimizer_state"]["param_groups"]
    for a, b in zip(final_ref["optimizer_state"]["state"].values(), final["optimizer_state"]["state"].values()):
        for key in a:
            torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)
    if model_cls is FakeDistiller:
        torch.testing.assert_close(final["kd_state"]["adapters"]["weight"], final_ref["kd_state"]["adapters"]["weight"])


def test_mid_epoch_latest_model_resumes_with_the_remaining_iterations(tmp_path):
    model = TinyDetector()
    # interval 0: latest_model.pth after every iteration; stop after epoch 1 of 3 and pretend we died mid-epoch 2
    run_training(model, tmp_path, epochs=3, ckpt_save_time_interval=0)
    latest = safe_load(tmp_path / LATEST_NAME)
    assert (latest["epoch"], latest["it"]) == (2, 12)  # saved during epoch index 2, after its last iteration

    state = checkpoint_state(model, build_optimizer(model, OPTIM), epoch=1, it=6)  # epoch 1 (0-based), 2 of 4 done
    save_checkpoint(state, tmp_path / LATEST_NAME)
    for ckpt in tmp_path.glob("checkpoint_epoch_*.pth"):
        if ckpt.name != "checkpoint_epoch_1.pth":
            ckpt.unlink()
    resumed = TinyDetector()
    optimizer = build_optimizer(resumed, OPTIM)
    it, epoch, path = resume_from_dir(resumed, optimizer, tmp_path)
    assert (path.name, it, epoch) == (LATEST_NAME, 6, 1)
    assert run_training(resumed, tmp_path, start_iter=it, start_epoch=epoch, epochs=3, optimizer=optimizer) == 12
    assert safe_load(tmp_path / "checkpoint_epoch_2.pth")["it"] == 8  # epoch boundaries stay at multiples of 4


# ------------------------------------------------------------------------------------------------ real train.py
def _train_cmd(cfg_file: Path, out: Path, epochs: int) -> list[str]:
    return [
        str(PYTHON),
        "train.py",
        "--cfg_file",
        str(cfg_file),
        "--workers",
        "0",
        "--batch_size",
        "1",
        "--epochs",
        str(epochs),
        "--fix_random_seed",
        "--output_root",
        str(out),
        "--num_epochs_to_eval",
        "0",
    ]


@pytest.mark.slow
def test_kill_9_during_training_then_same_command_resumes(tmp_path):
    cfg_file = write_tiny_config(tmp_path, epochs=3)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    ref = subprocess.run(
        _train_cmd(cfg_file, tmp_path / "ref", 3), cwd=TOOLS, env=env, capture_output=True, text=True, timeout=300
    )
    assert ref.returncode == 0, ref.stderr[-3000:]
    from visual_utils.plot_curves import read_tensorboard_scalars

    scalars = read_tensorboard_scalars(tmp_path / "ref" / "tiny" / "tiny_pp" / "default")
    for tag in ("train/loss", "train/rpn_loss_cls", "train/rpn_loss_loc", "meta_data/learning_rate",
                "meta_data/momentum", "meta_data/grad_norm"):  # fmt: skip
        assert sorted(scalars[tag]) == list(range(1, 10)), tag  # 3 epochs x 3 iterations
    assert scalars["meta_data/momentum"][1] == pytest.approx(0.95)

    out = tmp_path / "run"
    ckpt_dir = out / "tiny" / "tiny_pp" / "default" / "ckpt"
    sigkill_when(_train_cmd(cfg_file, out, 3), ckpt_dir / "checkpoint_epoch_1.pth", env)
    done = sorted(ckpt_dir.glob("checkpoint_epoch_*.pth"))
    assert done and "checkpoint_epoch_3.pth" not in [p.name for p in done], "killed too late to test resuming"
    newest = max(done, key=lambda p: int(p.stem.rsplit("_", 1)[1]))

    again = subprocess.run(
        _train_cmd(cfg_file, out, 3), cwd=TOOLS, env=env, capture_output=True, text=True, timeout=300
    )
    assert again.returncode == 0, again.stderr[-3000:]
    epoch = int(newest.stem.rsplit("_", 1)[1])
    assert f"Resumed from {newest} (epoch {epoch}, iteration {3 * epoch}" in again.stderr
    assert "Epoch 3 has been evaluated" in again.stderr

    # Same seed, per-epoch reseeding, one process: the resumed run ends bit-identical to the uninterrupted one.
    final_ref = safe_load(tmp_path / "ref" / "tiny" / "tiny_pp" / "default" / "ckpt" / "checkpoint_epoch_3.pth")
    final = safe_load(ckpt_dir / "checkpoint_epoch_3.pth")
    assert final["it"] == final_ref["it"] == 9
    assert final["optimizer_state"]["param_groups"] == final_ref["optimizer_state"]["param_groups"]
    for key, val in final_ref["model_state"].items():
        torch.testing.assert_close(final["model_state"][key], val, rtol=0, atol=0, msg=key)


KD_STUDENT = """
_BASE_CONFIG_: {teacher_cfg}
MODEL:
    VFE:
        NUM_FILTERS: [8]
    MAP_TO_BEV:
        NUM_BEV_FEATURES: 8
    BACKBONE_2D:
        NUM_FILTERS: [8, 8, 8]
        NUM_UPSAMPLE_FILTERS: [8, 8, 8]
KD:
    TEACHER:
        CFG_FILE: {teacher_cfg}
        CKPT: /nonexistent/overridden/by/teacher_ckpt.pth
    LOSSES:
        - NAME: PointDistiller
          WEIGHT: 2.0
          FEATURE: pillar_features
          NUM_NODES: 64
          K: 4
          ADAPTER_CHANNELS: 8
          EDGE: identity
          POOL: none
          IMPORTANCE: voxel_num_points
          GRAPH: batch
          CANDIDATES: all
          RL: True
          TAU: 0.01
          NORMALIZE: none
          LOSS_FORM: mse
"""


@pytest.mark.slow
def test_kd_config_trains_resumes_and_saves_a_plain_student(tmp_path):
    from train_utils.experiment import load_experiment_config

    from pcdet.datasets import build_dataloader
    from pcdet.models import build_network

    teacher_cfg_file = write_tiny_config(tmp_path, epochs=2)
    teacher_cfg = load_experiment_config(str(teacher_cfg_file), None, EasyDict({"ROOT_DIR": TOOLS.parent}))
    dataset, _, _ = build_dataloader(teacher_cfg.DATA_CONFIG, teacher_cfg.CLASS_NAMES, 1, False, workers=0)
    teacher = build_network(teacher_cfg.MODEL, 3, dataset)
    teacher_ckpt = save_checkpoint(checkpoint_state(teacher, None, 2, 4), tmp_path / "teacher.pth")
    kd_cfg = teacher_cfg_file.with_name("tiny_kd.yaml")
    kd_cfg.write_text(KD_STUDENT.format(teacher_cfg=teacher_cfg_file))

    def run(epochs):
        cmd = [str(PYTHON), "train.py", "--cfg_file", str(kd_cfg), "--teacher_ckpt", str(teacher_ckpt),
               "--workers", "0", "--epochs", str(epochs), "--output_root", str(tmp_path / "out"),
               "--logger_iter_interval", "1"]  # fmt: skip
        proc = subprocess.run(cmd, cwd=TOOLS, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True,
                              text=True, timeout=300)  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-4000:]
        return proc.stderr

    first = run(1)
    assert "kd/loss_det=" in first and "kd/PointDistiller=" in first  # each term of the total is logged
    teacher_sha = hashlib.sha256(teacher_ckpt.read_bytes()).hexdigest()
    assert f"sha256 {teacher_sha}" in first  # the KD plan names the teacher
    log_2 = run(2)
    ckpt_dir = tmp_path / "out" / "tiny" / "tiny_kd" / "default" / "ckpt"
    assert f"Resumed from {ckpt_dir / 'checkpoint_epoch_1.pth'} (epoch 1, iteration 2" in log_2
    assert "Epoch 2 has been evaluated" in log_2  # post-training evaluation of the plain student
    ckpt = safe_load(ckpt_dir / "checkpoint_epoch_2.pth")
    assert ckpt["it"] == 4 and ckpt["kd_state"]["teacher_sha256"] == teacher_sha
    student_cfg = load_experiment_config(str(kd_cfg), None, EasyDict({"ROOT_DIR": TOOLS.parent}))
    student = build_network(student_cfg.MODEL, 3, dataset)  # no KD code involved
    student.load_state_dict(ckpt["model_state"], strict=True)
    first_ckpt = safe_load(ckpt_dir / "checkpoint_epoch_1.pth")
    moved = [k for k, v in ckpt["kd_state"]["adapters"]["PointDistiller"].items()
             if not torch.equal(v, first_ckpt["kd_state"]["adapters"]["PointDistiller"][k])]  # fmt: skip
    assert moved  # the adapters kept training after the resume
