"""Response (logit) distillation: on a dense anchor head (soft class targets + regression to the teacher's boxes)
and on a CenterHead (soft heatmaps + regression maps where the teacher sees objects)."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import KDConfigError
from .base import KDBatch, KDLoss, get_feature


def _head_outputs(model: nn.Module, head: str, side: str) -> dict:
    module = getattr(model, head, None)
    if module is None or not hasattr(module, "forward_ret_dict"):
        raise KDConfigError(f"ResponseKD: the {side} has no head '{head}' with a forward_ret_dict")
    return module.forward_ret_dict


def soft_bce(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Per-element BCE between sigmoid(student / T) and the soft target sigmoid(teacher / T)."""
    target = torch.sigmoid(teacher_logits / temperature)
    return F.binary_cross_entropy_with_logits(student_logits / temperature, target, reduction="none")


def soft_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Per-element KL(teacher ‖ student) of the Bernoulli distributions = BCE − teacher entropy (0 when equal)."""
    target = torch.sigmoid(teacher_logits / temperature)
    entropy = F.binary_cross_entropy_with_logits(teacher_logits / temperature, target, reduction="none")
    return soft_bce(student_logits, teacher_logits, temperature) - entropy


CLASS_LOSSES = {"bce": soft_bce, "kl": soft_kl}


class ResponseKD(KDLoss):
    """Dense-head response KD. Class term: T² · mean over anchors and classes of the soft BCE/KL at temperature T.
    Box term: smooth-L1 (heading by sin of the difference, as the detection loss) between student and teacher box
    outputs, each anchor weighted by the teacher's confidence max_c sigmoid(teacher logit), normalised by the sum of
    the weights. Total = CLS_WEIGHT · class + BOX_WEIGHT · box.

    SOURCE "head" reads the raw outputs ``<HEAD>.forward_ret_dict[CLS_KEY / BOX_KEY]`` (anchor-encoded boxes;
    written in training and eval alike — the robust default); SOURCE "batch_dict" reads ``batch_dict[CLS_KEY /
    BOX_KEY]`` (e.g. batch_cls_preds / batch_box_preds, decoded boxes), which AnchorHeadSingle writes during training
    only with predict_boxes_when_training. Both models must share the anchor layout.
    """

    USES_FEATURE = False
    OPTIONS = {
        "SOURCE": "head",
        "HEAD": "dense_head",
        "CLS_KEY": "cls_preds",
        "BOX_KEY": "box_preds",
        "TEMPERATURE": 1.0,
        "CLS_LOSS": "bce",
        "CLS_WEIGHT": 1.0,
        "BOX_WEIGHT": 1.0,
        "BOX_BETA": 1.0 / 9.0,
        "HEADING_INDEX": 6,
    }
    CHOICES = {"SOURCE": ("head", "batch_dict"), "CLS_LOSS": tuple(CLASS_LOSSES)}

    def __init__(self, loss_cfg: dict, student_model: nn.Module, teacher_model: nn.Module):
        super().__init__(loss_cfg, student_model, teacher_model)
        self.num_class = int(teacher_model.num_class)
        if int(student_model.num_class) != self.num_class:
            raise KDConfigError(
                f"ResponseKD: student predicts {student_model.num_class} classes, teacher {self.num_class}"
            )
        head = getattr(teacher_model, self.opts["HEAD"], None)
        coder = getattr(head, "box_coder", None)
        if coder is None:
            raise KDConfigError(f"ResponseKD: the teacher has no head '{self.opts['HEAD']}' with a box_coder")
        self.code_size = int(coder.code_size)

    def teacher_keys(self) -> set[str]:
        return {self.opts["CLS_KEY"], self.opts["BOX_KEY"]} if self.opts["SOURCE"] == "batch_dict" else set()

    def teacher_modules(self) -> set[str]:
        return {self.opts["HEAD"]} if self.opts["SOURCE"] == "head" else set()

    def _outputs(self, batch_dict: dict, model: nn.Module, side: str) -> tuple[torch.Tensor, torch.Tensor]:
        source = _head_outputs(model, self.opts["HEAD"], side) if self.opts["SOURCE"] == "head" else batch_dict
        cls = get_feature(source, self.opts["CLS_KEY"], side)
        box = get_feature(source, self.opts["BOX_KEY"], side)
        self.shapes[f"{side}.{self.opts['CLS_KEY']}"] = tuple(cls.shape)
        self.shapes[f"{side}.{self.opts['BOX_KEY']}"] = tuple(box.shape)
        bsz = cls.shape[0]
        return cls.reshape(bsz, -1, self.num_class), box.reshape(bsz, -1, self.code_size)

    def forward(self, batch: KDBatch) -> torch.Tensor:
        cls_s, box_s = self._outputs(batch.student, batch.student_model, "student")
        cls_t, box_t = self._outputs(batch.teacher, batch.teacher_model, "teacher")
        if cls_s.shape != cls_t.shape or box_s.shape != box_t.shape:
            raise KDConfigError(
                f"ResponseKD: student outputs {tuple(cls_s.shape)}/{tuple(box_s.shape)} and teacher outputs "
                f"{tuple(cls_t.shape)}/{tuple(box_t.shape)} differ (the anchor layouts must be the same)"
            )
        cls_t, box_t = cls_t.detach(), box_t.detach()
        temperature = float(self.opts["TEMPERATURE"])
        cls_loss = CLASS_LOSSES[self.opts["CLS_LOSS"]](cls_s, cls_t, temperature).mean() * temperature**2

        heading = int(self.opts["HEADING_INDEX"])
        diff = box_s - box_t
        # sin(a − b) instead of a − b: the same heading up to the period does not count as an error.
        diff = torch.cat(
            [diff[..., :heading], torch.sin(diff[..., heading : heading + 1]), diff[..., heading + 1 :]], dim=-1
        )
        per_anchor = F.smooth_l1_loss(diff, torch.zeros_like(diff), beta=float(self.opts["BOX_BETA"]), reduction="none")
        confidence = torch.sigmoid(cls_t).max(dim=-1).values
        box_loss = (per_anchor.sum(-1) * confidence).sum() / confidence.sum().clamp_min(1e-6)
        self.parts = {"cls": cls_loss.item(), "box": box_loss.item()}
        return float(self.opts["CLS_WEIGHT"]) * cls_loss + float(self.opts["BOX_WEIGHT"]) * box_loss


def _center_head_outputs(batch_dict: dict, key: str, side: str) -> list[dict]:
    outputs = get_feature(batch_dict, key, side)
    if not isinstance(outputs, (list, tuple)) or not all(isinstance(o, dict) and "hm" in o for o in outputs):
        raise KDConfigError(
            f"CenterHeatmapKD: the {side}'s '{key}' is not a CenterHead output (per task a dict with 'hm')"
        )
    return list(outputs)


class CenterHeatmapKD(KDLoss):
    """Response KD on a CenterHead, from ``batch_dict[KEY]`` (per task a dict of raw ``(B, C, H, W)`` maps, the
    heatmap as logits under ``hm``). Per task: heatmap term T² · mean over cells and classes of the soft BCE/KL at
    temperature T; regression term: L1 between the student's and the teacher's ``REG_KEYS`` maps, each cell weighted
    by the teacher's max heatmap probability, normalised by the weights' sum. Summed over tasks:
    CLS_WEIGHT · heatmap + REG_WEIGHT · regression. Student and teacher need the same tasks and map size.
    """

    USES_FEATURE = False
    OPTIONS = {
        "KEY": "center_head_preds",
        "TEMPERATURE": 1.0,
        "CLS_LOSS": "bce",
        "CLS_WEIGHT": 1.0,
        "REG_WEIGHT": 1.0,
        "REG_KEYS": ["center", "center_z", "dim", "rot", "vel"],
    }
    CHOICES = {"CLS_LOSS": tuple(CLASS_LOSSES)}

    def teacher_keys(self) -> set[str]:
        return {self.opts["KEY"]}

    def forward(self, batch: KDBatch) -> torch.Tensor:
        student = _center_head_outputs(batch.student, self.opts["KEY"], "student")
        teacher = _center_head_outputs(batch.teacher, self.opts["KEY"], "teacher")
        if len(student) != len(teacher):
            raise KDConfigError(f"CenterHeatmapKD: the student has {len(student)} tasks, the teacher {len(teacher)}")
        temperature = float(self.opts["TEMPERATURE"])
        cls_loss = reg_loss = 0.0
        for task, (s, t) in enumerate(zip(student, teacher)):
            if s["hm"].shape != t["hm"].shape:
                raise KDConfigError(
                    f"CenterHeatmapKD: task {task} heatmaps differ, student {tuple(s['hm'].shape)} vs teacher "
                    f"{tuple(t['hm'].shape)} (same classes per task and the same feature map size are needed)"
                )
            self.shapes[f"task{task}.hm"] = tuple(s["hm"].shape)
            t_hm = t["hm"].detach()
            cls_loss = cls_loss + CLASS_LOSSES[self.opts["CLS_LOSS"]](s["hm"], t_hm, temperature).mean()
            if float(self.opts["REG_WEIGHT"]) != 0:
                weight = torch.sigmoid(t_hm).max(dim=1, keepdim=True).values
                diff = sum((s[k] - t[k].detach()).abs().sum(dim=1, keepdim=True) for k in self.opts["REG_KEYS"])
                reg_loss = reg_loss + (diff * weight).sum() / weight.sum().clamp_min(1e-6)
        cls_loss = cls_loss * temperature**2
        self.parts = {name: float(torch.as_tensor(v).detach()) for name, v in (("cls", cls_loss), ("reg", reg_loss))}
        return float(self.opts["CLS_WEIGHT"]) * cls_loss + float(self.opts["REG_WEIGHT"]) * reg_loss
