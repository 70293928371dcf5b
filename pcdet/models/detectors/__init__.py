"""Detectors, by the NAME used in ``MODEL.NAME``."""

from .centerpoint import CenterPoint
from .detector3d_template import Detector3DTemplate
from .detector3d_template import StateDictMismatchError as StateDictMismatchError
from .detector3d_template import describe_state_dict_mismatch as describe_state_dict_mismatch
from .detector3d_template import load_state_dict_strict as load_state_dict_strict
from .point_rcnn import PointRCNN
from .pointpillar import PointPillar
from .second_net import SECONDNet

__all__ = {
    "Detector3DTemplate": Detector3DTemplate,
    "PointPillar": PointPillar,
    "SECONDNet": SECONDNet,
    "CenterPoint": CenterPoint,
    "PointRCNN": PointRCNN,
}


def build_detector(model_cfg, num_class: int, dataset) -> Detector3DTemplate:
    if model_cfg.NAME not in __all__:
        raise KeyError(f"MODEL.NAME {model_cfg.NAME!r} is unknown; available: {sorted(__all__)}")
    return __all__[model_cfg.NAME](model_cfg=model_cfg, num_class=num_class, dataset=dataset)
