"""PointRCNN (Shi et al., CVPR 2019)."""

from __future__ import annotations

import torch

from .single_stage import SingleStageDetector


class PointRCNN(SingleStageDetector):
    """PointNet2MSG -> PointHeadBox (segmentation + proposals) -> PointRCNNHead (RoI refinement), as in ``MODEL``.

    Both stages are modules of the list, so the forward is the single-stage one; only the loss has two parts."""

    def get_training_loss(self) -> tuple[torch.Tensor, dict, dict]:
        loss_point, tb_dict = self.point_head.get_loss()
        loss_rcnn, tb_dict = self.roi_head.get_loss(tb_dict)
        return loss_point + loss_rcnn, tb_dict, {}
