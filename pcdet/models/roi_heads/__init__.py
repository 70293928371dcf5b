"""Second-stage (RoI) heads, by the NAME used in ``MODEL.ROI_HEAD``."""

from .pointrcnn_head import PointRCNNHead
from .roi_head_template import RoIHeadTemplate

__all__ = {
    "RoIHeadTemplate": RoIHeadTemplate,
    "PointRCNNHead": PointRCNNHead,
}
