"""The nuScenes detectors on the synthetic nuScenes set through the real data pipeline (NuScenesDataset with the
model config's DATA_CONFIG, on a smaller range): a training step, then eval forward → prediction dicts → the
devkit's evaluation. Checks that what the models read and write fits what the data side gives and expects."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _nuscenes_models import load_cfg

from pcdet.models import build_network, load_data_to_gpu, model_fn_decorator

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    pytest.importorskip("nuscenes")
    from pcdet.datasets.nuscenes.synthetic_batch import prepare_synthetic_nuscenes

    return prepare_synthetic_nuscenes(tmp_path_factory.mktemp("synthetic_nuscenes"))


@pytest.mark.parametrize(
    "name, pcr",
    [
        ("cbgs_pp_multihead.yaml", [-12.8, -12.8, -5.0, 12.8, 12.8, 3.0]),  # 128 x 128 pillars, 32 x 32 head
        ("cbgs_voxel0075_res3d_centerpoint.yaml", [-9.6, -9.6, -5.0, 9.6, 9.6, 3.0]),  # 256 x 256 x 40, 32 x 32
    ],
)
def test_train_step_and_devkit_evaluation(root, tmp_path, name, pcr):
    from pcdet.datasets.nuscenes.synthetic_batch import synthetic_nuscenes_dataset

    cfg = load_cfg(name)
    cfg.DATA_CONFIG.POINT_CLOUD_RANGE = pcr
    if "POST_PROCESSING" in cfg.MODEL.DENSE_HEAD:
        cfg.MODEL.DENSE_HEAD.POST_PROCESSING.POST_CENTER_LIMIT_RANGE = [-12, -12, -10, 12, 12, 10]
    else:  # the untrained anchor head scores every anchor 0.01: let its boxes through to the devkit
        cfg.MODEL.POST_PROCESSING.SCORE_THRESH = 0.0
    train_set = synthetic_nuscenes_dataset(root, cfg.DATA_CONFIG, cfg.CLASS_NAMES, training=True)
    torch.manual_seed(0)
    model = build_network(cfg.MODEL, len(cfg.CLASS_NAMES), train_set)
    model.train()
    batch = train_set.collate_batch([train_set[i] for i in range(2)])
    assert batch["gt_boxes"].shape[2] == 10 and batch["voxels"].shape[2] == 5
    loss, tb_dict, _ = model_fn_decorator()(model, batch)
    assert torch.isfinite(loss) and tb_dict["rpn_loss"] > 0
    loss.backward()

    test_set = synthetic_nuscenes_dataset(root, cfg.DATA_CONFIG, cfg.CLASS_NAMES, training=False)
    model.eval()
    batch = test_set.collate_batch([test_set[i] for i in range(len(test_set))])
    with torch.no_grad():
        preds, recall = model(load_data_to_gpu(batch, device="cpu"))
    assert recall["gt"] > 0
    annos = test_set.generate_prediction_dicts(batch, preds, cfg.CLASS_NAMES)
    assert all(a["boxes_lidar"].shape[1] == 9 for a in annos)  # velocities travel to the devkit
    _, result = test_set.evaluation(annos, cfg.CLASS_NAMES, output_path=tmp_path)
    assert 0.0 <= result["mAP"] <= 1.0 and np.isfinite(result["NDS"])
