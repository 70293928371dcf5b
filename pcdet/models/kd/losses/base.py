"""What every KD loss shares: its config (validated), where it reads features, and the batch it sees."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn as nn

from ..errors import KDConfigError

# Width of the features a detector writes under a batch_dict key, read from the module that writes it — the
# adapters must exist before the first batch (the optimizer is built from the parameters at start).
_CHANNEL_SOURCES = {
    "pillar_features": lambda m: m.vfe.get_output_feature_dim(),
    "voxel_features": lambda m: m.vfe.get_output_feature_dim(),
    "spatial_features": lambda m: m.map_to_bev_module.num_bev_features,
    "spatial_features_2d": lambda m: m.backbone_2d.num_bev_features,
    "point_features": lambda m: m.backbone_3d.num_point_features,
}

# Keys every loss accepts; each loss adds its own options in OPTIONS (name → default).
_COMMON_KEYS = frozenset(
    {"NAME", "WEIGHT", "TAG", "FEATURE", "STUDENT_FEATURE", "TEACHER_FEATURE", "STUDENT_CHANNELS", "TEACHER_CHANNELS"}
)


@dataclass
class KDBatch:
    """One training step as the losses see it: both models' batch_dicts after their forward passes."""

    student: dict
    teacher: dict
    student_model: nn.Module
    teacher_model: nn.Module
    # (V_teacher,) index of the student voxel holding each teacher voxel's centre (-1: none); None when both models
    # share the batch's voxels (row i of a voxel-level feature is then the same voxel on both sides).
    teacher_to_student_voxels: torch.Tensor | None = None


def get_feature(batch_dict: dict, key: str, side: str) -> Any:
    if key not in batch_dict:
        raise KDConfigError(
            f"the {side}'s batch_dict has no key '{key}' (available: {', '.join(sorted(map(str, batch_dict)))})"
        )
    return batch_dict[key]


def feature_channels(model: nn.Module, key: str, side: str) -> int:
    """Channels of ``batch_dict[key]`` as written by ``model``."""
    source = _CHANNEL_SOURCES.get(key)
    if source is None:
        raise KDConfigError(
            f"cannot tell the {side}'s channel count of '{key}' from the model: set {side.upper()}_CHANNELS in the "
            f"loss config (known keys: {', '.join(sorted(_CHANNEL_SOURCES))})"
        )
    try:
        return int(source(model))
    except AttributeError as exc:
        raise KDConfigError(f"the {side} model has no module that writes '{key}' ({exc})") from exc


class KDLoss(nn.Module):
    """Base of the registry's losses. ``forward(batch) → scalar`` (unweighted); ``weight`` multiplies it.

    ``OPTIONS`` lists the loss's own config keys with defaults; a key that is neither there nor common is a typo
    and refused. ``CHOICES`` restricts string options to their allowed values.
    """

    OPTIONS: ClassVar[dict[str, Any]] = {}
    CHOICES: ClassVar[dict[str, tuple[str, ...]]] = {}
    # Whether the loss reads a feature (FEATURE / STUDENT_FEATURE / TEACHER_FEATURE); response losses do not.
    USES_FEATURE: ClassVar[bool] = True

    def __init__(self, loss_cfg: dict, student_model: nn.Module, teacher_model: nn.Module):
        super().__init__()
        name = loss_cfg.get("NAME", type(self).__name__)
        unknown = sorted(set(loss_cfg) - _COMMON_KEYS - set(self.OPTIONS))
        if unknown:
            raise KDConfigError(
                f"KD loss {name}: unknown option(s) {', '.join(unknown)} "
                f"(allowed: {', '.join(sorted(_COMMON_KEYS | set(self.OPTIONS)))})"
            )
        self.name = name
        self.weight = float(loss_cfg.get("WEIGHT", 1.0))
        self.opts = {key: loss_cfg.get(key, default) for key, default in self.OPTIONS.items()}
        for key, allowed in self.CHOICES.items():
            if self.opts[key] not in allowed:
                raise KDConfigError(
                    f"KD loss {name}: {key} must be one of {', '.join(allowed)}, got {self.opts[key]!r}"
                )
        self.student_key = self.teacher_key = None
        if self.USES_FEATURE:
            self.student_key = loss_cfg.get("STUDENT_FEATURE", loss_cfg.get("FEATURE"))
            self.teacher_key = loss_cfg.get("TEACHER_FEATURE", loss_cfg.get("FEATURE"))
            if self.student_key is None or self.teacher_key is None:
                raise KDConfigError(f"KD loss {name}: set FEATURE (or STUDENT_FEATURE and TEACHER_FEATURE)")
        self._cfg_channels = {"student": loss_cfg.get("STUDENT_CHANNELS"), "teacher": loss_cfg.get("TEACHER_CHANNELS")}
        self.shapes: dict[str, tuple[int, ...]] = {}  # what the last step saw, for the KD plan
        self.parts: dict[str, float] = {}  # sub-terms of the last step (unweighted), logged beside the total
        # Set by the Distiller on diagnosed steps (KD.DIAGNOSE_EVERY): a loss may then add statistics to ``parts``.
        self.diagnose = False

    def channels(self, model: nn.Module, side: str) -> int:
        """The width of this loss's feature on ``side`` ('student' / 'teacher'): config override, else the model."""
        if self._cfg_channels[side] is not None:
            return int(self._cfg_channels[side])
        return feature_channels(model, self.student_key if side == "student" else self.teacher_key, side)

    def teacher_keys(self) -> set[str]:
        """batch_dict keys the teacher must produce (the teacher runs only as far as needed)."""
        return {self.teacher_key} if self.teacher_key else set()

    def teacher_modules(self) -> set[str]:
        """Named teacher modules that must run even if no key above needs them (e.g. a head's outputs)."""
        return set()

    def features(self, batch: KDBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """(student feature, teacher feature), also recorded in ``shapes``."""
        student = get_feature(batch.student, self.student_key, "student")
        teacher = get_feature(batch.teacher, self.teacher_key, "teacher")
        self.shapes[f"student.{self.student_key}"] = tuple(student.shape)
        self.shapes[f"teacher.{self.teacher_key}"] = tuple(teacher.shape)
        return student, teacher

    def describe(self) -> str:
        parts = [f"{self.name} (weight {self.weight:g})"]
        if self.USES_FEATURE:
            parts.append(f"student '{self.student_key}' / teacher '{self.teacher_key}'")
        parts.append("[" + ", ".join(f"{k}={v}" for k, v in self.opts.items()) + "]")
        return " ".join(parts)

    def forward(self, batch: KDBatch) -> torch.Tensor:
        raise NotImplementedError


def matched_voxel_rows(batch: KDBatch, num_student: int, num_teacher: int, what: str) -> tuple | None:
    """For voxel-level features: None when row i is the same voxel on both sides (shared voxelisation), else
    ``(teacher_rows, student_rows)`` of the voxels present in both."""
    match = batch.teacher_to_student_voxels
    if match is None:
        if num_student != num_teacher:
            raise KDConfigError(
                f"{what}: student has {num_student} voxel rows, teacher {num_teacher}; both use the batch's voxels, "
                "so these must agree"
            )
        return None
    if match.shape[0] != num_teacher:
        raise KDConfigError(f"{what}: the teacher feature has {num_teacher} rows for {match.shape[0]} teacher voxels")
    teacher_rows = torch.nonzero(match >= 0).squeeze(1)
    return teacher_rows, match[teacher_rows]


def require_same_map_shape(student: torch.Tensor, teacher: torch.Tensor, loss_name: str, check_channels: bool) -> None:
    """Map losses compare cell by cell: (B, ·, H, W) must agree (and C too where no adapter sits between)."""
    if student.dim() != 4 or teacher.dim() != 4:
        raise KDConfigError(f"{loss_name} needs (B, C, H, W) maps, got {tuple(student.shape)} / {tuple(teacher.shape)}")
    compared = (0, 1, 2, 3) if check_channels else (0, 2, 3)
    if any(student.shape[d] != teacher.shape[d] for d in compared):
        raise KDConfigError(
            f"{loss_name}: student map {tuple(student.shape)} and teacher map {tuple(teacher.shape)} are not aligned "
            "(use the same grid / strides on both sides)"
        )
