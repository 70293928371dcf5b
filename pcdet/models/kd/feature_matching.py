"""When teacher and student voxelise differently: the teacher's own voxels of the batch's points, and which student
voxel sits at each teacher voxel (matched by position, never by row index)."""

from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace

import numpy as np
import torch

from ...utils.spconv_utils import spconv_pytorch  # noqa: F401  (installs the CPU shim before spconv's utils load)

# isort: split
from spconv.pytorch.utils import PointToVoxel


@dataclass(frozen=True)
class VoxelGrid:
    """A model's voxelisation: ``transform_points_to_voxels`` of its DATA_PROCESSOR plus the point-cloud range."""

    voxel_size: tuple[float, float, float]
    point_cloud_range: tuple[float, float, float, float, float, float]
    max_points_per_voxel: int
    max_voxels: tuple[tuple[str, int], ...]  # (("train", n), ("test", m))
    _generators: dict = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def from_data_config(cls, data_cfg: dict) -> VoxelGrid | None:
        """None for a config without voxelisation (point-based detectors)."""
        for proc in data_cfg.get("DATA_PROCESSOR", []):
            if proc.get("NAME") == "transform_points_to_voxels":
                return cls(
                    voxel_size=tuple(float(v) for v in proc["VOXEL_SIZE"]),
                    point_cloud_range=tuple(float(v) for v in data_cfg["POINT_CLOUD_RANGE"]),
                    max_points_per_voxel=int(proc["MAX_POINTS_PER_VOXEL"]),
                    max_voxels=tuple(sorted((k, int(v)) for k, v in proc["MAX_NUMBER_OF_VOXELS"].items())),
                )
        return None

    @property
    def grid_size(self) -> np.ndarray:
        """(nx, ny, nz), as the data processor computes it."""
        pc_range = np.asarray(self.point_cloud_range, np.float32)
        extent = pc_range[3:6] - pc_range[:3]
        return np.round(extent / np.asarray(self.voxel_size, np.float32)).astype(np.int64)

    def network_geometry(self, class_names: list, point_feature_encoder, depth_downsample_factor=None):
        """What ``build_network`` reads from a dataset, for a model that voxelises on this grid."""
        return SimpleNamespace(
            class_names=list(class_names),
            point_feature_encoder=point_feature_encoder,
            point_cloud_range=np.asarray(self.point_cloud_range, dtype=np.float32),
            voxel_size=list(self.voxel_size),
            grid_size=self.grid_size,
            depth_downsample_factor=depth_downsample_factor,
        )

    def voxelize(self, points: torch.Tensor, batch_size: int, training: bool) -> dict[str, torch.Tensor]:
        """The batch's ``points (N, 1 + C) [b, x, y, z, ...]`` → ``voxels``, ``voxel_coords (V, 4) [b, z, y, x]``,
        ``voxel_num_points``, per sample in the order the data processor uses, on the points' device."""
        mode = "train" if training else "test"
        key = (points.device, points.shape[1] - 1, mode)
        if key not in self._generators:
            self._generators[key] = PointToVoxel(
                vsize_xyz=list(self.voxel_size),
                coors_range_xyz=list(self.point_cloud_range),
                num_point_features=points.shape[1] - 1,
                max_num_voxels=dict(self.max_voxels)[mode],
                max_num_points_per_voxel=self.max_points_per_voxel,
                device=points.device,
            )
        generator = self._generators[key]
        voxels, coords, counts = [], [], []
        for b in range(batch_size):
            sample = points[points[:, 0].long() == b, 1:].contiguous()
            vox, zyx, num = generator(sample)
            voxels.append(vox.clone())  # the generator reuses its buffers on the next call
            coords.append(torch.cat([torch.full_like(zyx[:, :1], b), zyx], dim=1).long())
            counts.append(num.long())
        return {"voxels": torch.cat(voxels), "voxel_coords": torch.cat(coords), "voxel_num_points": torch.cat(counts)}


def _cell_keys(coords: torch.Tensor, grid_size: np.ndarray) -> torch.Tensor:
    nx, ny, nz = (int(v) for v in grid_size)
    return ((coords[:, 0] * nz + coords[:, 1]) * ny + coords[:, 2]) * nx + coords[:, 3]


def match_voxels(
    teacher_coords: torch.Tensor, teacher_grid: VoxelGrid, student_coords: torch.Tensor, student_grid: VoxelGrid
) -> torch.Tensor:
    """``(V_t,)``: index of the student voxel that contains each teacher voxel's centre, -1 where the student has
    no voxel there (empty cell, dropped by its voxel cap, or outside its range). Coordinates are [b, z, y, x]."""
    t_size = torch.tensor(teacher_grid.voxel_size, dtype=torch.float64, device=teacher_coords.device)
    t_min = torch.tensor(teacher_grid.point_cloud_range[:3], dtype=torch.float64, device=teacher_coords.device)
    s_size = torch.tensor(student_grid.voxel_size, dtype=torch.float64, device=teacher_coords.device)
    s_min = torch.tensor(student_grid.point_cloud_range[:3], dtype=torch.float64, device=teacher_coords.device)
    xyz_index = teacher_coords[:, [3, 2, 1]].double()
    centres = (xyz_index + 0.5) * t_size + t_min
    s_xyz = torch.floor((centres - s_min) / s_size).long()
    s_grid = torch.as_tensor(student_grid.grid_size, device=teacher_coords.device)
    inside = ((s_xyz >= 0) & (s_xyz < s_grid)).all(dim=1)
    query = torch.cat([teacher_coords[:, :1].long(), s_xyz.flip(1)], dim=1)  # [b, z, y, x]
    query_keys = _cell_keys(query.clamp_min(0), student_grid.grid_size)
    student_keys = _cell_keys(student_coords.long(), student_grid.grid_size)
    if student_keys.numel() == 0:
        return torch.full_like(query_keys, -1)
    sorted_keys, order = torch.sort(student_keys)
    pos = torch.searchsorted(sorted_keys, query_keys).clamp_max(len(sorted_keys) - 1)
    found = inside & (sorted_keys[pos] == query_keys)
    return torch.where(found, order[pos], torch.full_like(pos, -1))
