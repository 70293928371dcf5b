"""KITTI object evaluation (official devkit semantics) on CPU; see docs/EVALUATION.md.

Entry points: ``eval.get_official_eval_result``, ``eval.get_coco_eval_result``, ``kitti_common.get_label_annos`` and the
``evaluate`` command line module.
"""
