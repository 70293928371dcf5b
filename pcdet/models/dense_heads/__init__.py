"""Dense (BEV) detection heads, by the NAME used in ``MODEL.DENSE_HEAD``."""

from .anchor_head_multi import AnchorHeadMulti
from .anchor_head_single import AnchorHeadSingle
from .anchor_head_template import AnchorHeadTemplate
from .center_head import CenterHead
from .point_head_box import PointHeadBox

__all__ = {
    "AnchorHeadTemplate": AnchorHeadTemplate,
    "AnchorHeadSingle": AnchorHeadSingle,
    "AnchorHeadMulti": AnchorHeadMulti,
    "CenterHead": CenterHead,
    "PointHeadBox": PointHeadBox,
}
