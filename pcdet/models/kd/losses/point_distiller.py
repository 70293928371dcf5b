"""PointDistiller (Zhang, Dong, Tai, Ma — CVPR 2023): local distillation on a kNN graph + reweighted learning.

Definition. Pick N query nodes by a teacher-side importance s; give each its K nearest neighbours among the candidate
nodes in the TEACHER's feature space; the student reuses those indices. Edge (i, j) carries concat(f_j, f_i)
("identity") or concat(f_i - f_j, f_i) ("sub"); each side's edge tensor (2C, N, K) goes through its own adapter
(1×1 conv → BN → ReLU) to a common width A; optionally max-pooled over K. Loss: mean over all outputs of
φ_i · (γ_T − γ_S)², φ = N · softmax(s / τ) over the queries (reweighted learning, RL) or φ = 1; or, in the "norm"
form, sqrt(Σ φ_i (γ_T − γ_S)²) (the official setting without RL, weight 5e-4).

Computation. The conv on a concatenation is a sum of two projections, W [f_j; f_i] = W_a f_j + W_b f_i, so every node
is projected once to A channels and only A-wide values are gathered (never the (N, K, 2C) edge tensor). The BN batch
statistics over the N·K edges follow from per-node sums (how often a node is a neighbour, and the sum of each
query's neighbour projections via ``embedding_bag``), and BN folds into the projections, so the edge output is
relu(a'_i + b'_j). Edges of queries whose weight φ_i is exactly zero (most of them at τ = 0.01 on point counts)
contribute exactly nothing to the loss or its gradient and are never formed; they still count in the BN
statistics and the mean. Without pooling, the loss over the remaining edges is ``edge_loss.edge_loss``, which on a
CPU walks the edges in a numba kernel instead of materialising (R, K, A) responses. The result equals the naive
definition up to float rounding (tests/test_kd_losses.py, tests/test_kd_cpu_paths.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..adapters import Adapter, batch_norm_stats_update
from ..diagnostics import effective_count, inside_boxes_bev, response_stats, weighted_share
from ..edge_loss import edge_loss, neighbour_sum, response_loss
from ..errors import KDConfigError
from ..knn import knn_indices
from .base import KDBatch, KDLoss, get_feature, matched_voxel_rows

# (first-half weight W_a, second-half weight W_b) of the edge conv → (weight on the centre f_i, on the neighbour f_j).
EDGE_MODES = {
    "identity": lambda w_a, w_b: (w_b, w_a),  # concat(f_j, f_i)
    "sub": lambda w_a, w_b: (w_a + w_b, -w_a),  # concat(f_i - f_j, f_i) = W_a f_i - W_a f_j + W_b f_i
}

NORMALIZERS = {
    "none": lambda s: s,
    "max": lambda s: s / s.abs().max().clamp_min(1e-12),
    "zscore": lambda s: (s - s.mean()) / s.std(unbiased=False).clamp_min(1e-12),
}


def _point_counts(teacher: torch.Tensor, counts: torch.Tensor | None) -> torch.Tensor:
    if counts is None:
        raise KDConfigError("PointDistiller: IMPORTANCE voxel_num_points needs voxel-level features")
    return counts.float()


# Teacher-side importance of each node: (teacher node features, voxel point counts or None) → (M,) scores.
IMPORTANCE_SIGNALS = {
    "voxel_num_points": _point_counts,
    "feature_max": lambda teacher, counts: teacher.max(dim=1).values,
    "random": lambda teacher, counts: torch.rand(teacher.shape[0], device=teacher.device),
}


def _map_nodes(feature_map: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) → (B·H·W, C), cells of sample 0 first."""
    return feature_map.flatten(2).transpose(1, 2).flatten(0, 1)


@dataclass
class Graph:
    """Query nodes, their neighbours (indices into the node list) and their loss weights φ."""

    queries: torch.Tensor  # (N,)
    neighbours: torch.Tensor  # (N, K)
    weights: torch.Tensor  # (N,)


def build_graph(
    teacher_nodes: torch.Tensor,
    node_batch: torch.Tensor,
    scores: torch.Tensor,
    num_nodes: int,
    k: int,
    per_sample: bool,
    candidates_all: bool,
    tau: float | None,
    normalize: str = "none",
    max_chunk_bytes: int = 64 * 2**20,
) -> Graph:
    """Select queries by ``scores`` (highest first, ties by node order) and connect each to its ``k`` nearest
    candidates in teacher feature space.

    ``per_sample``: one graph per sample (``num_nodes`` queries each, neighbours from the same sample); otherwise one
    graph over the whole batch (samples mixed, as the official PointPillars code). ``candidates_all``: neighbours
    among all nodes of the graph, else among its queries. ``k`` shrinks to the smallest graph's candidate count.
    ``tau``: RL temperature, φ = n · softmax(normalize(s) / τ) per graph; None: φ = 1.
    """
    if per_sample:
        groups = [torch.nonzero(node_batch == b).squeeze(1) for b in torch.unique(node_batch).tolist()]
    else:
        groups = [torch.arange(teacher_nodes.shape[0], device=teacher_nodes.device)]
    groups = [g for g in groups if g.numel() > 0]
    if not groups:
        raise KDConfigError("PointDistiller: the batch has no nodes to distil")
    queries, candidates = [], []
    for nodes in groups:
        order = torch.sort(scores[nodes], descending=True, stable=True).indices[:num_nodes]
        queries.append(nodes[order])
        candidates.append(nodes if candidates_all else nodes[order])
    k = min(k, *(c.numel() for c in candidates))
    neighbours, weights = [], []
    teacher_nodes = teacher_nodes.detach()
    for q, c in zip(queries, candidates):
        local = knn_indices(teacher_nodes[q], teacher_nodes[c], k, max_chunk_bytes=max_chunk_bytes)
        neighbours.append(c[local])
        if tau is None:
            weights.append(torch.ones(q.numel(), device=teacher_nodes.device))
        else:
            s = NORMALIZERS[normalize](scores[q].float())
            weights.append(q.numel() * torch.softmax(s / tau, dim=0))
    return Graph(torch.cat(queries), torch.cat(neighbours), torch.cat(weights))


def folded_projections(
    adapter: Adapter, nodes: torch.Tensor, graph: Graph, edge: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(a', b')`` with relu(a'_i + b'_j) = adapter(edge feature of query i and neighbour j), BN included.

    a' is (N, A) for the queries, b' is (M, A) for all nodes. In training the BN uses (and advances its running
    statistics with) the statistics over all N·K edges, as it would on the materialised (A, N, K) tensor.
    """
    conv, bn = adapter.conv, adapter.bn
    channels = nodes.shape[1]
    weight = conv.weight.view(conv.out_channels, 2 * channels)
    w_centre, w_neighbour = EDGE_MODES[edge](weight[:, :channels], weight[:, channels:])
    a = nodes[graph.queries] @ w_centre.t()
    b = nodes @ w_neighbour.t()
    if bn.training:
        num_queries, k = graph.neighbours.shape
        count = num_queries * k
        # Edge mean and variance from node sums, on values shifted by rough means (a's over the queries, b's over
        # the edges): the shifted data's E[x²] − E[x]² has no cancellation left, so float32 matches the materialised
        # edges as float64 did, at half the cost. Autocast stays off so half precision never enters.
        with torch.autocast(device_type=a.device.type, enabled=False):
            a32, b32 = a.float(), b.float()
            uses = torch.bincount(graph.neighbours.reshape(-1), minlength=nodes.shape[0]).to(b32.dtype)
            a_shift, b_shift = a32.mean(0), (uses @ b32) / count
            a_c, b_c = a32 - a_shift, b32 - b_shift
            sums = neighbour_sum(b_c, graph.neighbours)  # (N, A): Σ_k b_j per query
            shifted_mean = (k * a_c.sum(0) + uses @ b_c) / count
            shifted_sq = (k * a_c.pow(2).sum(0) + 2 * (a_c * sums).sum(0) + uses @ b_c.pow(2)) / count
            mean = a_shift + b_shift + shifted_mean
            var = (shifted_sq - shifted_mean.pow(2)).clamp_min(0)
        batch_norm_stats_update(bn, mean.detach(), var.detach(), count)
        mean, var = mean.to(a.dtype), var.to(a.dtype)
    else:
        mean, var = bn.running_mean, bn.running_var
    scale = bn.weight * torch.rsqrt(var + bn.eps)
    return a * scale + (bn.bias - mean * scale), b * scale


def edge_responses(a: torch.Tensor, b: torch.Tensor, neighbours: torch.Tensor, pool: str) -> torch.Tensor:
    """Adapter outputs for the given queries: (R, K, A) without pooling, (R, A) max-pooled over K.

    max_k relu(a_i + b_j) = relu(a_i + max_k b_j) (relu is monotone), so pooling needs no edge tensor either.
    """
    if pool == "max":
        return F.relu(a + F.embedding_bag(neighbours, b, mode="max"))
    return F.relu(a.unsqueeze(1) + b[neighbours])


def point_distiller_loss(
    teacher_nodes: torch.Tensor,
    student_nodes: torch.Tensor,
    graph: Graph,
    teacher_adapter: Adapter,
    student_adapter: Adapter,
    edge: str = "identity",
    pool: str = "none",
    form: str = "mse",
    stats: dict | None = None,
) -> torch.Tensor:
    """The PointDistiller loss for node features ``(M, C_t)`` / ``(M, C_s)`` (row m is the same node on both sides).

    ``form`` "mse": Σ φ_i (γ_T − γ_S)² / (number of outputs); "norm": sqrt(Σ φ_i (γ_T − γ_S)²). ``stats``, when
    given, receives the adapters' output statistics (see diagnostics.response_stats) over the weighted queries.
    """
    a_t, b_t = folded_projections(teacher_adapter, teacher_nodes.detach(), graph, edge)
    a_s, b_s = folded_projections(student_adapter, student_nodes, graph, edge)
    num_queries, k = graph.neighbours.shape
    outputs = num_queries * a_t.shape[1] * (1 if pool == "max" else k)
    rows = torch.nonzero(graph.weights > 0).squeeze(1)
    neighbours, weights = graph.neighbours[rows], graph.weights[rows]
    if pool == "none" and stats is None:  # the diagnostics read the responses, so only they materialise them
        return edge_loss(a_t[rows], b_t, a_s[rows], b_s, neighbours, weights, form, outputs)
    teacher_out = edge_responses(a_t[rows], b_t, neighbours, pool)
    student_out = edge_responses(a_s[rows], b_s, neighbours, pool)
    if stats is not None:
        stats.update(response_stats("teacher_adapter", teacher_out))
        stats.update(response_stats("student_adapter", student_out))
    return response_loss(teacher_out, student_out, weights, form, outputs)


class PointDistiller(KDLoss):
    """Registry entry ``PointDistiller``: reads voxel-level ``(V, C)`` (e.g. ``pillar_features``), point-level
    ``(N, C)`` (PointRCNN's ``point_features``, with ``point_coords``) or BEV ``(B, C, H, W)`` features of both
    models. Options (defaults = the paper's PointPillars setting): see OPTIONS."""

    OPTIONS = {
        "NUM_NODES": 6000,
        "K": 128,
        "ADAPTER_CHANNELS": 32,
        "EDGE": "identity",
        "POOL": "none",
        "IMPORTANCE": "voxel_num_points",
        "GRAPH": "batch",
        "CANDIDATES": "all",
        "RL": True,
        "TAU": 0.01,
        "NORMALIZE": "none",
        "LOSS_FORM": "mse",
        "TEACHER_ADAPTER": "trainable",
        "KNN_CHUNK_MB": 64,
    }
    CHOICES = {
        "EDGE": tuple(EDGE_MODES),
        "POOL": ("none", "max"),
        "IMPORTANCE": tuple(IMPORTANCE_SIGNALS),
        "GRAPH": ("batch", "sample"),
        "CANDIDATES": ("all", "queries"),
        "NORMALIZE": tuple(NORMALIZERS),
        "LOSS_FORM": ("mse", "norm"),
        # trainable: both adapters learn (the paper); frozen: the teacher's stays at its random initialisation, a
        # fixed target the two sides cannot agree to shrink (BN still normalises it with batch statistics).
        "TEACHER_ADAPTER": ("trainable", "frozen"),
    }

    def __init__(self, loss_cfg: dict, student_model: nn.Module, teacher_model: nn.Module):
        super().__init__(loss_cfg, student_model, teacher_model)
        if self.opts["RL"] and self.opts["IMPORTANCE"] == "random":
            raise KDConfigError("PointDistiller: RL weights queries by their importance; IMPORTANCE random has none")
        width = int(self.opts["ADAPTER_CHANNELS"])
        self.teacher_adapter = Adapter(2 * self.channels(teacher_model, "teacher"), width)
        self.student_adapter = Adapter(2 * self.channels(student_model, "student"), width)
        if self.opts["TEACHER_ADAPTER"] == "frozen":
            self.teacher_adapter.requires_grad_(False)
        self._map_geometry = getattr(getattr(student_model, "dataset", None), "point_cloud_range", None)

    def _nodes(self, batch: KDBatch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(teacher nodes, student nodes, node batch index, voxel point counts or None), rows aligned; the rows
        chosen from the teacher's voxels are kept in ``self._teacher_rows`` (None: all) for the diagnostics."""
        self._teacher_rows = None
        student, teacher = self.features(batch)
        if teacher.dim() == 4:
            if student.dim() != 4 or student.shape[0] != teacher.shape[0] or student.shape[2:] != teacher.shape[2:]:
                raise KDConfigError(
                    f"PointDistiller: BEV maps must share (B, H, W): student {tuple(student.shape)}, "
                    f"teacher {tuple(teacher.shape)}"
                )
            bsz, _, height, width = teacher.shape
            node_batch = torch.arange(bsz, device=teacher.device).repeat_interleave(height * width)
            return _map_nodes(teacher), _map_nodes(student), node_batch, None
        if "voxel_coords" not in batch.teacher and "point_coords" in batch.teacher:
            return self._point_nodes(batch, teacher, student)
        coords = get_feature(batch.teacher, "voxel_coords", "teacher")
        counts = get_feature(batch.teacher, "voxel_num_points", "teacher")
        if teacher.dim() != 2 or teacher.shape[0] != coords.shape[0]:
            raise KDConfigError(
                f"PointDistiller: teacher '{self.teacher_key}' {tuple(teacher.shape)} is neither a (V, C) voxel "
                f"feature aligned with voxel_coords {tuple(coords.shape)} nor a (B, C, H, W) map"
            )
        rows = matched_voxel_rows(batch, student.shape[0], teacher.shape[0], "PointDistiller")
        if rows is None:
            return teacher, student, coords[:, 0].long(), counts
        teacher_rows, student_rows = rows
        self._teacher_rows = teacher_rows
        return teacher[teacher_rows], student[student_rows], coords[teacher_rows, 0].long(), counts[teacher_rows]

    def _point_nodes(self, batch: KDBatch, teacher: torch.Tensor, student: torch.Tensor):
        """Point-level features of point-based detectors (PointRCNN's ``point_features``): both models see the
        batch's points, so row i is the same point on both sides; a point has no point count to rank by."""
        if self.opts["IMPORTANCE"] == "voxel_num_points":
            raise KDConfigError("PointDistiller on point features: IMPORTANCE must be feature_max or random")
        coords = get_feature(batch.teacher, "point_coords", "teacher")
        if teacher.dim() != 2 or teacher.shape[0] != coords.shape[0] or student.shape[0] != teacher.shape[0]:
            raise KDConfigError(
                f"PointDistiller: point features must be (N, C) rows of the same N points (point_coords "
                f"{tuple(coords.shape)}): student {tuple(student.shape)}, teacher {tuple(teacher.shape)}"
            )
        return teacher, student, coords[:, 0].long(), None

    def forward(self, batch: KDBatch) -> torch.Tensor:
        teacher, student, node_batch, counts = self._nodes(batch)
        scores = IMPORTANCE_SIGNALS[self.opts["IMPORTANCE"]](teacher.detach(), counts)
        graph = build_graph(
            teacher,
            node_batch,
            scores,
            num_nodes=int(self.opts["NUM_NODES"]),
            k=int(self.opts["K"]),
            per_sample=self.opts["GRAPH"] == "sample",
            candidates_all=self.opts["CANDIDATES"] == "all",
            tau=float(self.opts["TAU"]) if self.opts["RL"] else None,
            normalize=self.opts["NORMALIZE"],
            max_chunk_bytes=int(self.opts["KNN_CHUNK_MB"] * 2**20),
        )
        self.shapes["teacher nodes"] = tuple(teacher.shape)
        self.shapes["student nodes"] = tuple(student.shape)
        self.shapes["edges (N, K, A)"] = (*graph.neighbours.shape, self.student_adapter.out_channels)
        stats = {} if self.diagnose else None
        loss = point_distiller_loss(
            teacher,
            student,
            graph,
            self.teacher_adapter,
            self.student_adapter,
            edge=self.opts["EDGE"],
            pool=self.opts["POOL"],
            form=self.opts["LOSS_FORM"],
            stats=stats,
        )
        if stats is not None:
            stats.update(self._selection_stats(batch, teacher, node_batch, graph))
        self.parts = stats or {}
        return loss

    def _node_positions(self, batch: KDBatch, teacher: torch.Tensor) -> torch.Tensor | None:
        """(M, 2) BEV positions in metres: a voxel's point centroid, a map cell's centre; None if unknown."""
        feature = batch.teacher[self.teacher_key]
        if feature.dim() == 2 and "voxels" not in batch.teacher and "point_coords" in batch.teacher:
            return batch.teacher["point_coords"][:, 1:3]  # point-level nodes: the points themselves
        if feature.dim() == 2:  # voxel-level nodes (``teacher`` is always (M, C), for maps too)
            voxels = batch.teacher["voxels"]
            counts = batch.teacher["voxel_num_points"].clamp_min(1).to(voxels.dtype)
            centroid = voxels[:, :, :2].sum(1) / counts[:, None]
            return centroid if self._teacher_rows is None else centroid[self._teacher_rows]
        if self._map_geometry is None:
            return None
        x_min, y_min, _, x_max, y_max, _ = (float(v) for v in self._map_geometry)
        height, width = feature.shape[2:]
        ys, xs = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
        cell = torch.stack(
            [(xs + 0.5) * (x_max - x_min) / width + x_min, (ys + 0.5) * (y_max - y_min) / height + y_min]
        )
        return cell.reshape(2, -1).t().repeat(feature.shape[0], 1).to(teacher.device)

    def _selection_stats(self, batch: KDBatch, teacher: torch.Tensor, node_batch: torch.Tensor, graph: Graph) -> dict:
        """Which nodes the queries and their RL weights pick: objects or background, near or far."""
        stats = {
            "rl_effective_queries": effective_count(graph.weights),
            "queries": float(graph.queries.numel()),
        }
        positions = self._node_positions(batch, teacher)
        if positions is None or "gt_boxes" not in batch.student:
            return stats
        foreground = inside_boxes_bev(positions, node_batch, batch.student["gt_boxes"])
        distance = positions.norm(dim=1)
        query_fg, query_dist = foreground[graph.queries], distance[graph.queries]
        stats.update(
            {
                "node_fg_share": float(foreground.float().mean()),
                "query_fg_share": float(query_fg.float().mean()),
                "rl_fg_weight_share": weighted_share(graph.weights, query_fg),
                "query_mean_range_m": float(query_dist.mean()),
                "rl_mean_range_m": float((graph.weights * query_dist).sum() / graph.weights.sum().clamp_min(1e-12)),
            }
        )
        return stats
