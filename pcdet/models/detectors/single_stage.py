"""Detectors that run their modules in order, then the loss (training) or post-processing (eval): the single-stage
ones, and PointRCNN, whose second stage is one more module."""

from __future__ import annotations

import torch

from .detector3d_template import Detector3DTemplate


class SingleStageDetector(Detector3DTemplate):
    def __init__(self, model_cfg, num_class: int, dataset):
        super().__init__(model_cfg=model_cfg, num_class=num_class, dataset=dataset)
        self.module_list = self.build_networks()

    def forward(self, batch_dict: dict):
        """Training: ``({'loss'}, tb_dict, disp_dict)``; eval: ``(pred_dicts, recall_dict)``."""
        for cur_module in self.module_list:
            batch_dict = cur_module(batch_dict)
        if self.training:
            loss, tb_dict, disp_dict = self.get_training_loss()
            return {"loss": loss}, tb_dict, disp_dict
        return self.post_processing(batch_dict)

    def get_training_loss(self) -> tuple[torch.Tensor, dict, dict]:
        loss_rpn, tb_dict = self.dense_head.get_loss()
        tb_dict = {"loss_rpn": loss_rpn.item(), **tb_dict}
        return loss_rpn, tb_dict, {}
