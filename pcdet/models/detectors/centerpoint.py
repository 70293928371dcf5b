"""CenterPoint (Yin et al., CVPR 2021)."""

from __future__ import annotations

from .single_stage import SingleStageDetector


class CenterPoint(SingleStageDetector):
    """VFE → 3D backbone → HeightCompression → BaseBEVBackbone → CenterHead (as in ``MODEL``). The head decodes
    and runs its NMS itself (``final_box_dicts``); post-processing adds the recall counts."""

    def post_processing(self, batch_dict: dict) -> tuple[list[dict], dict]:
        thresh_list = self.model_cfg.POST_PROCESSING.RECALL_THRESH_LIST
        final_pred_dicts = batch_dict["final_box_dicts"]
        recall_dict: dict = {}
        for index, pred in enumerate(final_pred_dicts):
            recall_dict = self.generate_recall_record(
                box_preds=pred["pred_boxes"],
                recall_dict=recall_dict,
                batch_index=index,
                data_dict=batch_dict,
                thresh_list=thresh_list,
            )
        return final_pred_dicts, recall_dict
