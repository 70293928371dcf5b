"""Select and order the per-point features the network sees (``POINT_FEATURE_ENCODING`` in the dataset config)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


class PointFeatureEncoder:
    """``used_feature_list`` picked out of ``src_feature_list`` columns; x, y, z must lead the source list."""

    def __init__(self, config: dict, point_cloud_range: np.ndarray | None = None):
        self.point_encoding_config = config
        self.src_feature_list = list(config.src_feature_list)
        self.used_feature_list = list(config.used_feature_list)
        self.point_cloud_range = point_cloud_range
        if self.src_feature_list[0:3] != ["x", "y", "z"]:
            raise ValueError(f"src_feature_list must start with x, y, z; got {self.src_feature_list}")
        missing = [f for f in self.used_feature_list if f not in self.src_feature_list]
        if missing:
            raise ValueError(f"used_feature_list names {missing}, which are not in src_feature_list")
        self._encoders: dict[str, Callable] = {"absolute_coordinates_encoding": self.absolute_coordinates_encoding}
        if config.encoding_type not in self._encoders:
            raise ValueError(f"unknown encoding_type '{config.encoding_type}' (known: {', '.join(self._encoders)})")
        self._encode = self._encoders[config.encoding_type]

    @property
    def num_point_features(self) -> int:
        return self._encode(points=None)

    def forward(self, data_dict: dict) -> dict:
        """Re-encode ``data_dict['points']`` in place; also sets ``use_lead_xyz`` (whether x, y, z lead)."""
        data_dict["points"], use_lead_xyz = self._encode(data_dict["points"])
        data_dict["use_lead_xyz"] = use_lead_xyz
        return data_dict

    def absolute_coordinates_encoding(self, points: np.ndarray | None = None):
        """x, y, z followed by the other used features in ``used_feature_list`` order.

        With ``points=None`` returns the number of output features.
        """
        extra = [f for f in self.used_feature_list if f not in ("x", "y", "z")]
        if points is None:
            return 3 + len(extra)
        columns = [0, 1, 2] + [self.src_feature_list.index(f) for f in extra]
        return points[:, columns], True
