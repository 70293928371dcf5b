"""PointPillars (Lang et al., CVPR 2019)."""

from __future__ import annotations

from .single_stage import SingleStageDetector


class PointPillar(SingleStageDetector):
    """PillarVFE → PointPillarScatter → BaseBEVBackbone → AnchorHeadSingle (as configured in ``MODEL``)."""
