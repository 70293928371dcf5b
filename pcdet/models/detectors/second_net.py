"""SECOND (Yan et al., Sensors 2018)."""

from __future__ import annotations

from .single_stage import SingleStageDetector


class SECONDNet(SingleStageDetector):
    """MeanVFE → VoxelBackBone8x → HeightCompression → BaseBEVBackbone → AnchorHeadSingle (as in ``MODEL``)."""
