"""The Distiller: a student detector trained with extra losses against a frozen teacher on the same batch."""

from __future__ import annotations

import copy
import logging

import torch
import torch.nn as nn

from ...config import plain_data
from .diagnostics import gradient_report
from .errors import KDConfigError
from .feature_matching import VoxelGrid, match_voxels
from .losses import KDBatch
from .teacher import Teacher, module_names, run_teacher


def _count(params) -> int:
    return sum(p.numel() for p in params)


class Distiller(nn.Module):
    """Behaves like the student detector for the tools (forward, global_step, checkpoints), adding the KD losses.

    The teacher is deliberately not a sub-module: its parameters never reach an optimizer, DDP or the state dict,
    and ``train()`` cannot switch it out of eval mode. ``to()`` / ``cuda()`` still move it (see ``_apply``).
    """

    def __init__(
        self,
        student: nn.Module,
        teacher: Teacher,
        losses: nn.ModuleDict,
        loss_cfgs: list,
        student_grid: VoxelGrid | None,
        logger: logging.Logger | None = None,
        diagnose_every: int = 0,
    ):
        super().__init__()
        self.student = student
        self.kd_losses = losses
        object.__setattr__(self, "_teacher", teacher)
        self._loss_cfgs = plain_data(loss_cfgs)
        self._student_grid = student_grid
        self._logger = logger or logging.getLogger("pcdet")
        self._teacher_keys = set().union(*(loss.teacher_keys() for loss in losses.values()))
        self._teacher_modules = set().union(*(loss.teacher_modules() for loss in losses.values()))
        self._shapes_logged = False
        self._diagnose_every = int(diagnose_every)

    # ------------------------------------------------------------------ the detector's interface
    @property
    def teacher(self) -> nn.Module:
        return self._teacher.model

    @property
    def global_step(self) -> torch.Tensor:
        return self.student.global_step

    def update_global_step(self) -> None:
        self.student.update_global_step()

    def train(self, mode: bool = True) -> Distiller:
        super().train(mode)
        self._teacher.model.eval()
        return self

    def _apply(self, fn, recurse: bool = True):
        super()._apply(fn, recurse)
        self._teacher.model._apply(fn, recurse)
        return self

    def forward(self, batch_dict: dict):
        """Training: ``({'loss'}, tb_dict, disp_dict)`` with the KD terms added; eval: the student's predictions."""
        if not self.training:
            return self.student(batch_dict)
        teacher_dict = self._teacher_forward(batch_dict)
        ret_dict, tb_dict, disp_dict = self.student(batch_dict)
        batch = KDBatch(
            student=batch_dict,
            teacher=teacher_dict,
            student_model=self.student,
            teacher_model=self._teacher.model,
            teacher_to_student_voxels=self._voxel_match(batch_dict, teacher_dict),
        )
        det_loss = total = ret_dict["loss"]
        tb_dict["kd/loss_det"] = float(total.item())
        diagnose = self._diagnosing()
        terms = {}
        for tag, loss in self.kd_losses.items():
            loss.diagnose = diagnose
            terms[tag] = term = loss.weight * loss(batch)
            total = total + term
            tb_dict[f"kd/{tag}"] = float(term.item())
            tb_dict.update({f"kd/{tag}/{part}": value for part, value in loss.parts.items()})
        if diagnose:
            report = gradient_report(det_loss, terms, list(self.student.parameters()))
            tb_dict.update({f"kd/{key}": value for key, value in report.items()})
        ret_dict["loss"] = total
        if not self._shapes_logged:
            self._logger.info("KD feature shapes at the first step:\n" + self._shape_lines())
            self._shapes_logged = True
        return ret_dict, tb_dict, disp_dict

    def _diagnosing(self) -> bool:
        """Every ``diagnose_every`` steps (0: never). Not under DDP: the extra autograd.grad passes would run
        outside the reducer's bookkeeping."""
        if self._diagnose_every <= 0 or (torch.distributed.is_available() and torch.distributed.is_initialized()):
            return False
        return int(self.student.global_step) % self._diagnose_every == 0

    def _teacher_forward(self, batch_dict: dict) -> dict:
        # The teacher writes into its own dict; inputs are copied so not even an in-place op can reach the student.
        teacher_dict = {k: v.clone() if isinstance(v, torch.Tensor) else copy.copy(v) for k, v in batch_dict.items()}
        if self._teacher.grid is not None:
            teacher_dict.update(
                self._teacher.grid.voxelize(batch_dict["points"], int(batch_dict["batch_size"]), self.training)
            )
        return run_teacher(self._teacher.model, teacher_dict, self._teacher_keys, self._teacher_modules)

    def _voxel_match(self, student_dict: dict, teacher_dict: dict) -> torch.Tensor | None:
        if self._teacher.grid is None:
            return None
        if self._student_grid is None:
            raise KDConfigError("the teacher voxelises but the student does not: no voxels to match")
        return match_voxels(
            teacher_dict["voxel_coords"], self._teacher.grid, student_dict["voxel_coords"], self._student_grid
        )

    # ------------------------------------------------------------------ checkpoints
    def checkpoint_model_state(self) -> dict:
        """The plain student state dict: what test.py and OpenPCDet load (no adapters, no teacher)."""
        return self.student.state_dict()

    def extra_checkpoint_state(self) -> dict:
        """Saved under the checkpoint's 'kd_state': adapters and the provenance of the teacher."""
        return {
            "adapters": {tag: dict(loss.state_dict()) for tag, loss in self.kd_losses.items()},
            "teacher_cfg": str(self._teacher.cfg_path),
            "teacher_ckpt": str(self._teacher.ckpt_path),
            "teacher_sha256": self._teacher.sha256,
            "losses": copy.deepcopy(self._loss_cfgs),
        }

    def load_extra_checkpoint_state(self, state: dict) -> None:
        saved = state.get("adapters", {})
        if set(saved) != set(self.kd_losses):
            raise KDConfigError(
                f"the checkpoint's KD losses {sorted(saved)} differ from the config's {sorted(self.kd_losses)}"
            )
        for tag, loss in self.kd_losses.items():
            loss.load_state_dict(saved[tag], strict=True)
        if state.get("teacher_sha256") != self._teacher.sha256:
            self._logger.warning(
                f"resuming with another teacher: checkpoint trained with {state.get('teacher_ckpt')} "
                f"(sha256 {state.get('teacher_sha256')}), now {self._teacher.ckpt_path} (sha256 {self._teacher.sha256})"
            )
        if state.get("losses") != self._loss_cfgs:
            self._logger.warning(f"resuming with changed KD losses: saved {state.get('losses')}, now {self._loss_cfgs}")

    # ------------------------------------------------------------------ the KD plan
    def _shape_lines(self) -> str:
        lines = []
        for tag, loss in self.kd_losses.items():
            shapes = ", ".join(f"{k} {tuple(v)}" for k, v in loss.shapes.items()) or "(known after the first step)"
            lines.append(f"  {tag}: {shapes}")
        return "\n".join(lines)

    def describe(self) -> str:
        teacher = self._teacher
        n_student = _count(self.student.parameters())
        n_teacher = _count(teacher.model.parameters())
        n_adapters = _count(self.kd_losses.parameters())
        runs = module_names(teacher.model)
        voxels = (
            "shares the batch's voxels"
            if teacher.grid is None
            else f"voxelises the points itself (voxel {teacher.grid.voxel_size}), matched to the student by position"
        )
        lines = [
            "KD plan",
            f"  teacher: {teacher.cfg.MODEL.NAME} from {teacher.cfg_path}",
            f"           checkpoint {teacher.ckpt_path}",
            f"           sha256 {teacher.sha256}",
            f"           {n_teacher:,} parameters (frozen, eval mode); modules {runs}, run only until "
            f"{sorted(self._teacher_keys | self._teacher_modules)} exist; {voxels}",
            f"  student: {self.student.model_cfg.NAME}, {n_student:,} parameters "
            f"(+ {n_adapters:,} adapter parameters, trained with it and not exported)",
            "  losses (added to the student's detection loss):",
        ]
        lines += [f"    - {tag}: {loss.describe()}" for tag, loss in self.kd_losses.items()]
        lines += ["  feature shapes:", self._shape_lines()]
        return "\n".join(lines)
