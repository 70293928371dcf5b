"""Eval-time PillarVFE with one PFN layer as a single numba pass over the real points of each pillar.

The training formulation builds the decorated ``(V, P, 10)`` tensor, a ``(V, P, C)`` linear output, a contiguous
copy for the batch-norm, ReLU and the max over the ``P`` slots: most of that is padding (a KITTI pillar holds ~6 of
its 32 slots) and memory traffic. In eval the batch-norm is an affine map, so it folds into the linear weights and
a bias; ReLU and adding a per-channel bias are monotonic, so both can follow the max. What remains per pillar is the
max over its real points of ``W' f`` (``f``: the same decoration, computed point by point), compared with 0 when the
pillar has padded slots (a zeroed slot contributes ``W' 0 = 0``), plus the bias, then ReLU. Equal to the training
formulation up to float32 round-off (the folded weights and the order of the sums).
"""

from __future__ import annotations

import numpy as np
import torch

from ....utils.numba_utils import njit_cached


@njit_cached
def _pillar_max(
    voxels: np.ndarray,
    num_points: np.ndarray,
    coords: np.ndarray,
    weight_t: np.ndarray,
    bias: np.ndarray,
    geometry: np.ndarray,
    use_absolute_xyz: bool,
    with_distance: bool,
    out: np.ndarray,
) -> None:
    """``out[v] = relu(max(max over real points of weight_t.T @ f, 0 if padded) + bias)``; ``geometry`` is
    (voxel size x, y, z, centre offset x, y, z), float32."""
    num_pillars, max_points, _ = voxels.shape
    num_in, channels = weight_t.shape
    feature = np.empty(num_in, dtype=np.float32)
    acc = np.empty(channels, dtype=np.float32)
    best = np.empty(channels, dtype=np.float32)
    for v in range(num_pillars):
        n = num_points[v]
        count = np.float32(n)
        mean_x, mean_y, mean_z = np.float32(0), np.float32(0), np.float32(0)
        for k in range(n):
            mean_x += voxels[v, k, 0]
            mean_y += voxels[v, k, 1]
            mean_z += voxels[v, k, 2]
        mean_x, mean_y, mean_z = mean_x / count, mean_y / count, mean_z / count
        centre_x = np.float32(coords[v, 3]) * geometry[0] + geometry[3]
        centre_y = np.float32(coords[v, 2]) * geometry[1] + geometry[4]
        centre_z = np.float32(coords[v, 1]) * geometry[2] + geometry[5]
        for c in range(channels):
            best[c] = np.float32(0) if n < max_points else -np.inf
        for k in range(n):
            x, y, z = voxels[v, k, 0], voxels[v, k, 1], voxels[v, k, 2]
            j = 0
            start = 0 if use_absolute_xyz else 3
            for f in range(start, voxels.shape[2]):
                feature[j] = voxels[v, k, f]
                j += 1
            feature[j], feature[j + 1], feature[j + 2] = x - mean_x, y - mean_y, z - mean_z
            feature[j + 3], feature[j + 4], feature[j + 5] = x - centre_x, y - centre_y, z - centre_z
            if with_distance:
                feature[j + 6] = np.sqrt(x * x + y * y + z * z)
            for c in range(channels):
                acc[c] = np.float32(0)
            for i in range(num_in):
                fi = feature[i]
                for c in range(channels):
                    acc[c] += fi * weight_t[i, c]
            for c in range(channels):
                if acc[c] > best[c]:
                    best[c] = acc[c]
        for c in range(channels):
            value = best[c] + bias[c]
            out[v, c] = value if value > 0 else np.float32(0)


def pillar_pfn_fused(
    voxels: torch.Tensor,
    voxel_num_points: torch.Tensor,
    coords: torch.Tensor,
    weight_t: torch.Tensor,
    bias: torch.Tensor,
    geometry: tuple[float, ...],
    use_absolute_xyz: bool,
    with_distance: bool,
) -> torch.Tensor:
    """``pillar_features (V, C)`` from CPU float32 ``voxels (V, P, F)``; ``weight_t (10 or 11, C)`` and ``bias (C)``
    are the PFN's linear weights with the batch-norm folded in (transposed: channels contiguous)."""
    out = torch.empty((voxels.shape[0], weight_t.shape[1]), dtype=torch.float32)
    _pillar_max(
        voxels.contiguous().numpy(),
        voxel_num_points.contiguous().numpy(),
        coords.contiguous().numpy(),
        weight_t.detach().numpy(),
        bias.detach().numpy(),
        np.asarray(geometry, dtype=np.float32),
        use_absolute_xyz,
        with_distance,
        out.numpy(),
    )
    return out
