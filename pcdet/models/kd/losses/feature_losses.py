"""Feature-map baselines: FitNet, Attention Transfer, Similarity-Preserving, attention-guided KD (Zhang & Ma)."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..adapters import Adapter
from ..errors import KDConfigError
from .base import KDBatch, KDLoss, matched_voxel_rows, require_same_map_shape


class FitNet(KDLoss):
    """Romero et al., "FitNets" (ICLR 2015): a student adapter to the teacher's width, then MSE to the teacher.

    Works on (B, C, H, W) maps (cells aligned) and on (V, C) voxel features (voxels matched by coordinate when the
    two models voxelise differently).
    """

    OPTIONS = {"ADAPTER_NORM": False, "ADAPTER_RELU": False}

    def __init__(self, loss_cfg: dict, student_model: nn.Module, teacher_model: nn.Module):
        super().__init__(loss_cfg, student_model, teacher_model)
        self.adapter = Adapter(
            self.channels(student_model, "student"),
            self.channels(teacher_model, "teacher"),
            norm=bool(self.opts["ADAPTER_NORM"]),
            relu=bool(self.opts["ADAPTER_RELU"]),
        )

    def forward(self, batch: KDBatch) -> torch.Tensor:
        student, teacher = self.features(batch)
        if teacher.dim() == 4:
            require_same_map_shape(student, teacher, self.name, check_channels=False)
            return F.mse_loss(self.adapter(student), teacher)
        rows = matched_voxel_rows(batch, student.shape[0], teacher.shape[0], self.name)
        if rows is not None:
            teacher, student = teacher[rows[0]], student[rows[1]]
        return F.mse_loss(self.adapter.forward_nodes(student), teacher)


def spatial_attention(feature_map: torch.Tensor, p: float) -> torch.Tensor:
    """(B, C, H, W) → (B, H·W): mean over channels of |F|^p, L2-normalised per sample."""
    return F.normalize(feature_map.abs().pow(p).mean(dim=1).flatten(1), dim=1)


class AttentionTransfer(KDLoss):
    """Zagoruyko & Komodakis (ICLR 2017): match normalised spatial attention maps Q = mean_c |F|^p (p = 2).

    Loss = mean over batch and cells of (Q_S/||Q_S|| − Q_T/||Q_T||)², the form of the authors' code (their paper
    writes β/2 times the distance; with β = 1000, WEIGHT 500). Channels may differ; (B, H, W) must agree.
    """

    OPTIONS = {"P": 2.0}

    def forward(self, batch: KDBatch) -> torch.Tensor:
        student, teacher = self.features(batch)
        require_same_map_shape(student, teacher, self.name, check_channels=False)
        p = float(self.opts["P"])
        return (spatial_attention(student, p) - spatial_attention(teacher, p)).pow(2).mean()


def batch_similarity(feature: torch.Tensor) -> torch.Tensor:
    """(B, ...) → (B, B) Gram matrix of the flattened samples, each row L2-normalised."""
    flat = feature.flatten(1)
    return F.normalize(flat @ flat.t(), dim=1)


class SimilarityPreserving(KDLoss):
    """Tung & Mori (ICCV 2019): the student's batch similarity matrix should match the teacher's.

    Loss = ||G_S − G_T||_F² / B². Any widths and map sizes; with a batch of one the loss is identically zero.
    """

    def forward(self, batch: KDBatch) -> torch.Tensor:
        student, teacher = self.features(batch)
        if student.shape[0] != teacher.shape[0] or student.dim() != 4 or teacher.dim() != 4:
            raise KDConfigError(
                f"{self.name} needs (B, C, H, W) maps with the same batch size, got {tuple(student.shape)} / "
                f"{tuple(teacher.shape)}"
            )
        bsz = student.shape[0]
        return (batch_similarity(student) - batch_similarity(teacher)).pow(2).sum() / (bsz * bsz)


class AttentionGuidedKD(KDLoss):
    """Zhang & Ma (ICLR 2021), "Improve object detection with feature-based knowledge distillation": attention-
    guided distillation (the non-local relation part is not included).

    Student features first go through an adapter to the teacher's width (S'). Per model, spatial attention
    G_s = mean_c |F| and channel attention G_c = mean_hw |F|, turned into maps P_s = HW·softmax(G_s / T),
    P_c = C·softmax(G_c / T). Masks M_s, M_c are the same maps of (G_teacher + G_student), without gradient.
    Feature loss: mean over the batch of sqrt(Σ_chw (T − S')² M_s M_c); attention loss: mean over the batch of
    Σ |P_student − P_teacher| over the spatial and the channel map (L1 distances, on the same per-sample scale).
    Total = FEATURE_WEIGHT · feature + ATTENTION_WEIGHT · attention (the paper's α and γ).
    """

    OPTIONS = {"TEMPERATURE": 0.5, "FEATURE_WEIGHT": 1.0, "ATTENTION_WEIGHT": 1.0}

    def __init__(self, loss_cfg: dict, student_model: nn.Module, teacher_model: nn.Module):
        super().__init__(loss_cfg, student_model, teacher_model)
        self.adapter = Adapter(
            self.channels(student_model, "student"), self.channels(teacher_model, "teacher"), norm=False, relu=False
        )

    @staticmethod
    def _attention(feature_map: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        magnitude = feature_map.abs()
        return magnitude.mean(dim=1).flatten(1), magnitude.mean(dim=(2, 3))  # (B, HW), (B, C)

    @staticmethod
    def _to_map(attention: torch.Tensor, temperature: float) -> torch.Tensor:
        return attention.shape[1] * torch.softmax(attention / temperature, dim=1)

    def forward(self, batch: KDBatch) -> torch.Tensor:
        student, teacher = self.features(batch)
        require_same_map_shape(student, teacher, self.name, check_channels=False)
        student = self.adapter(student)
        temperature = float(self.opts["TEMPERATURE"])
        spatial_t, channel_t = self._attention(teacher)
        spatial_s, channel_s = self._attention(student)
        with torch.no_grad():
            mask_spatial = self._to_map(spatial_t + spatial_s, temperature)
            mask_channel = self._to_map(channel_t + channel_s, temperature)
        mask = mask_channel[:, :, None] * mask_spatial[:, None, :]  # (B, C, HW)
        feature = torch.linalg.vector_norm((teacher - student).flatten(2) * mask.sqrt(), dim=(1, 2)).mean()
        attention = (
            (self._to_map(spatial_s, temperature) - self._to_map(spatial_t, temperature)).abs().sum(1)
            + (self._to_map(channel_s, temperature) - self._to_map(channel_t, temperature)).abs().sum(1)
        ).mean()
        self.parts = {"feature": feature.item(), "attention": attention.item()}
        return float(self.opts["FEATURE_WEIGHT"]) * feature + float(self.opts["ATTENTION_WEIGHT"]) * attention
