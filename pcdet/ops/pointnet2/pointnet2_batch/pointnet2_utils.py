"""Batched PointNet++ ops with OpenPCDet's ``pointnet2_batch`` names, shapes and semantics, device-agnostic.

Each op follows OpenPCDet's CUDA kernel (checked against its source) and is written once in PyTorch, which is what
runs on CUDA; on CPU tensors the three searches (farthest point sampling, ball query, three_nn) run numba loops with
the same arithmetic instead (``cpu_kernels``), since their PyTorch form costs tensor-op overhead or dense distance
matrices there. Both paths return the same indices. Conventions:

- Index outputs are int32, as OpenPCDet's; index inputs may be int32 or int64.
- Squared distances are ``(a - b) * (a - b)`` summed over x, y, z in the input dtype, compared with strict ``<``.
- The searches are not differentiable (as in OpenPCDet); the gathers are, through PyTorch's own autograd
  (``grouping_operation``, ``gather_operation``, ``three_interpolate``; the last one also to its weights, which
  OpenPCDet does not provide).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn

from ....utils.numba_utils import numba_threads
from . import cpu_kernels

# Elements of one (B, queries, points) distance block in the PyTorch searches: bounds their memory (~32 MB float32).
_BLOCK_ELEMENTS = 1 << 23


def _check_points(name: str, points: torch.Tensor) -> None:
    if points.dim() != 3 or points.shape[-1] != 3:
        raise ValueError(f"{name} must be (B, N, 3), got {tuple(points.shape)}")


def _sq_dist(queries: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """(B, m, 3) x (B, n, 3) -> (B, m, n) squared distances, summed x, y, z in that order as the CUDA kernels."""
    total = None
    for a in range(3):
        diff = queries[:, :, a, None] - points[:, None, :, a]
        total = diff * diff if total is None else total + diff * diff
    return total


def _queries_per_block(batch: int, num_points: int) -> int:
    return max(1, _BLOCK_ELEMENTS // max(1, batch * num_points))


def farthest_point_sample(xyz: torch.Tensor, npoint: int) -> torch.Tensor:
    """Iterative farthest point sampling: (B, N, 3) -> (B, npoint) int32 indices.

    Starts from index 0; each step picks the point with the largest squared distance to the chosen set (the lowest
    index on a tie). Once every distinct point is chosen (e.g. ``npoint > N``) all distances are 0 and the remaining
    picks are index 0 — what OpenPCDet's kernel returns too.
    """
    _check_points("xyz", xyz)
    if npoint < 0 or (npoint > 0 and xyz.shape[1] == 0):
        raise ValueError(f"cannot sample {npoint} points from {xyz.shape[1]}")
    if xyz.device.type == "cpu":
        return _fps_cpu(xyz, npoint)
    return _fps_torch(xyz, npoint)


furthest_point_sample = farthest_point_sample  # OpenPCDet's spelling


def _fps_cpu(xyz: torch.Tensor, npoint: int) -> torch.Tensor:
    out = np.zeros((xyz.shape[0], npoint), dtype=np.int32)
    if npoint > 0:
        numba_threads()
        cpu_kernels.farthest_point_sample(xyz.detach().permute(2, 0, 1).contiguous().numpy(), npoint, out)
    return torch.from_numpy(out)


@torch.no_grad()
def _fps_torch(xyz: torch.Tensor, npoint: int) -> torch.Tensor:
    batch, n, _ = xyz.shape
    out = torch.zeros(batch, npoint, dtype=torch.long, device=xyz.device)
    temp = torch.full((batch, n), 1e10, dtype=xyz.dtype, device=xyz.device)
    rows = torch.arange(batch, device=xyz.device)
    last = out[:, 0]
    for j in range(1, npoint):
        diff = xyz - xyz[rows, last].unsqueeze(1)
        sq = diff * diff
        torch.minimum(temp, sq[..., 0] + sq[..., 1] + sq[..., 2], out=temp)
        last = temp.argmax(dim=1)  # the first maximum, as documented for torch.argmax
        out[:, j] = last
    return out.int()


def _radius2(radius: float, dtype: torch.dtype) -> float:
    """``radius * radius`` rounded as the kernel computes it (float32 for float32 points)."""
    np_dtype = np.float32 if dtype != torch.float64 else np.float64
    return float(np_dtype(radius) * np_dtype(radius))


def ball_query(radius: float, nsample: int, xyz: torch.Tensor, new_xyz: torch.Tensor) -> torch.Tensor:
    """Neighbours of each centre within ``radius``: xyz (B, N, 3), new_xyz (B, M, 3) -> (B, M, nsample) int32.

    Row ``m`` holds, in ascending index order, the first ``nsample`` indices ``k`` with
    ``|xyz[k] - new_xyz[m]|^2 < radius^2`` (strict); when fewer are found the rest repeat the first one found, and a
    centre with no point in its ball gets all zeros (OpenPCDet's batch ball query: no empty-ball mask, so such a
    ball groups point 0; an SA module's centres are cloud points, so their balls are never empty).
    """
    _check_points("xyz", xyz)
    _check_points("new_xyz", new_xyz)
    if not radius > 0 or nsample < 1:
        raise ValueError(f"ball_query needs radius > 0 and nsample >= 1, got radius={radius}, nsample={nsample}")
    batch, n, _ = xyz.shape
    if n == 0:
        return torch.zeros(batch, new_xyz.shape[1], nsample, dtype=torch.int32, device=xyz.device)
    radius2 = _radius2(radius, xyz.dtype)
    if xyz.device.type == "cpu":
        # Cells a bit wider than the radius, so rounding cannot put a neighbour two cells away.
        cell = float(radius) * (1 + 1e-3)
        extent = (xyz.amax(dim=1) - xyz.amin(dim=1)).double().max(dim=0).values
        if float(torch.prod(torch.floor(extent / cell) + 1)) < 2.0**62:  # cell keys fit int64
            return _ball_query_cpu(radius2, cell, nsample, xyz, new_xyz)
    return _ball_query_torch(radius2, nsample, xyz, new_xyz)


def _ball_query_cpu(
    radius2: float, cell: float, nsample: int, xyz: torch.Tensor, new_xyz: torch.Tensor
) -> torch.Tensor:
    out = np.zeros((xyz.shape[0], new_xyz.shape[1], nsample), dtype=np.int32)
    numba_threads()
    points = xyz.detach().contiguous().numpy()
    centres = new_xyz.detach().to(xyz.dtype).contiguous().numpy()
    cpu_kernels.ball_query(points, centres, points.dtype.type(radius2), cell, nsample, out)
    return torch.from_numpy(out)


@torch.no_grad()
def _ball_query_torch(radius2: float, nsample: int, xyz: torch.Tensor, new_xyz: torch.Tensor) -> torch.Tensor:
    batch, n, _ = xyz.shape
    m = new_xyz.shape[1]
    new_xyz = new_xyz.to(xyz.dtype)
    out = torch.empty(batch, m, nsample, dtype=torch.int32, device=xyz.device)
    slots = torch.arange(nsample, device=xyz.device)
    point_ids = torch.arange(n, device=xyz.device)
    step = _queries_per_block(batch, n)
    for start in range(0, m, step):
        inside = _sq_dist(new_xyz[:, start : start + step], xyz) < radius2
        rank = inside.cumsum(dim=-1, dtype=torch.int32)  # 1-based rank of each hit in index order
        # Hits ranked 1..nsample go to slot rank-1; everything else to a spare slot that is dropped.
        slot = torch.where(inside & (rank <= nsample), rank - 1, nsample).long()
        found = torch.zeros(*slot.shape[:2], nsample + 1, dtype=torch.long, device=xyz.device)
        found.scatter_(2, slot, point_ids.expand_as(slot))
        count = rank[..., -1:]
        block = torch.where(slots < count, found[..., :nsample], found[..., :1])
        out[:, start : start + block.shape[1]] = block.int()
    return out


def grouping_operation(features: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """features (B, C, N), idx (B, npoint, nsample) -> (B, C, npoint, nsample): ``features[b, :, idx[b, p, s]]``."""
    batch, channels, _ = features.shape
    _, npoint, nsample = idx.shape
    flat = idx.reshape(batch, 1, npoint * nsample).long().expand(batch, channels, npoint * nsample)
    return features.gather(2, flat).view(batch, channels, npoint, nsample)


def gather_operation(features: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """features (B, C, N), idx (B, npoint) -> (B, C, npoint): ``features[b, :, idx[b, p]]``."""
    return grouping_operation(features, idx.unsqueeze(-1)).squeeze(-1)


def three_nn(unknown: torch.Tensor, known: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Three nearest ``known`` (B, M, 3) points of each ``unknown`` (B, N, 3) point -> (dist, idx), each (B, N, 3),
    nearest first (the lower index first on a tie); idx int32.

    ``dist`` is the plain (Euclidean) distance, as OpenPCDet's ``three_nn``: its kernel finds squared distances and
    its Python wrapper returns their square root. With M < 3 the missing neighbours are (inf, 0), as there.
    """
    _check_points("unknown", unknown)
    _check_points("known", known)
    if known.shape[1] == 0:
        raise ValueError("three_nn needs at least one known point")
    if unknown.device.type == "cpu":
        dist2, idx = _three_nn_cpu(unknown, known)
    else:
        dist2, idx = _three_nn_torch(unknown, known)
    return torch.sqrt(dist2), idx


def _three_nn_cpu(unknown: torch.Tensor, known: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    batch, n, _ = unknown.shape
    dist2 = np.empty((batch, n, 3), dtype=np.float64 if unknown.dtype == torch.float64 else np.float32)
    idx = np.empty((batch, n, 3), dtype=np.int32)
    numba_threads()
    queries = unknown.detach().contiguous().numpy().astype(dist2.dtype, copy=False)
    cpu_kernels.three_nn(queries, known.detach().contiguous().numpy().astype(dist2.dtype, copy=False), dist2, idx)
    return torch.from_numpy(dist2), torch.from_numpy(idx)


@torch.no_grad()
def _three_nn_torch(unknown: torch.Tensor, known: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    batch, n, _ = unknown.shape
    known = known.to(unknown.dtype)
    dist2 = torch.empty(batch, n, 3, dtype=unknown.dtype, device=unknown.device)
    idx = torch.empty(batch, n, 3, dtype=torch.int32, device=unknown.device)
    step = _queries_per_block(batch, known.shape[1])
    for start in range(0, n, step):
        d = _sq_dist(unknown[:, start : start + step], known)
        stop = start + d.shape[1]
        # Three passes of argmin (the first minimum) reproduce the kernel's "strict <" tie order exactly.
        for k in range(3):
            nearest = d.argmin(dim=-1, keepdim=True)
            dist2[:, start:stop, k] = d.gather(-1, nearest).squeeze(-1)
            idx[:, start:stop, k] = nearest.squeeze(-1).int()
            d.scatter_(-1, nearest, float("inf"))
    return dist2, idx


def three_interpolate(features: torch.Tensor, idx: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """features (B, C, M), idx and weight (B, N, 3) -> (B, C, N):
    ``sum_k weight[b, n, k] * features[b, :, idx[b, n, k]]``, summed k = 0, 1, 2 as the kernel."""
    # One contiguous (B, C, N) gather per neighbour: products of strided slices of a (B, C, N, 3) gather do not
    # vectorise on CPU (2x slower at PointRCNN's sizes).
    w = weight.to(features.dtype).permute(2, 0, 1).contiguous().unsqueeze(2)  # (3, B, 1, N)
    out = None
    for k in range(3):
        term = gather_operation(features, idx[..., k]) * w[k]
        out = term if out is None else out + term
    return out


class QueryAndGroup(nn.Module):
    """Ball query around each centre, then group coordinates (relative to the centre) and features."""

    def __init__(self, radius: float, nsample: int, use_xyz: bool = True):
        super().__init__()
        self.radius, self.nsample, self.use_xyz = radius, nsample, use_xyz

    def forward(self, xyz: torch.Tensor, new_xyz: torch.Tensor, features: torch.Tensor | None = None) -> torch.Tensor:
        """xyz (B, N, 3), new_xyz (B, npoint, 3), features (B, C, N) -> (B, 3 + C, npoint, nsample) (C without xyz,
        3 without features)."""
        idx = ball_query(self.radius, self.nsample, xyz, new_xyz)
        grouped_xyz = grouping_operation(xyz.transpose(1, 2), idx) - new_xyz.transpose(1, 2).unsqueeze(-1)
        if features is None:
            if not self.use_xyz:
                raise ValueError("QueryAndGroup without features needs use_xyz=True")
            return grouped_xyz
        grouped_features = grouping_operation(features, idx)
        return torch.cat([grouped_xyz, grouped_features], dim=1) if self.use_xyz else grouped_features


class GroupAll(nn.Module):
    """All points as one group (absolute coordinates, as OpenPCDet); ``new_xyz`` is ignored."""

    def __init__(self, use_xyz: bool = True):
        super().__init__()
        self.use_xyz = use_xyz

    def forward(
        self, xyz: torch.Tensor, new_xyz: torch.Tensor | None = None, features: torch.Tensor | None = None
    ) -> torch.Tensor:
        """xyz (B, N, 3), features (B, C, N) -> (B, 3 + C, 1, N)."""
        grouped_xyz = xyz.transpose(1, 2).unsqueeze(2)
        if features is None:
            return grouped_xyz
        grouped_features = features.unsqueeze(2)
        return torch.cat([grouped_xyz, grouped_features], dim=1) if self.use_xyz else grouped_features
