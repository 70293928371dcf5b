"""CenterPoint's heatmap machinery: gaussian targets, per-object regression targets, decoding and circle NMS.

Conventions (OpenPCDet's): a feature map of a head is ``(C, H, W)`` with ``H = ny``, ``W = nx`` cells of
``voxel_size · stride`` metres; a continuous cell coordinate is ``(x − range_min) / (voxel_size · stride)``, so
a cell index plus the regressed offset is that coordinate again (no half-cell shift).
"""

from __future__ import annotations

import numpy as np
import torch


def gaussian_radius(height: torch.Tensor, width: torch.Tensor, min_overlap: float = 0.5) -> torch.Tensor:
    """CornerNet's radius: the smallest of three corner shifts (both corners inwards, both outwards, one each)
    that keep the IoU with the true box at ``min_overlap``, each the positive root of a quadratic
    ``a r² − b r + c = 0`` (``height``, ``width`` in cells, any shape).

    Kept as CenterNet/CenterPoint (and OpenPCDet) compute it, root ``(b + √(b² − 4ac)) / 2`` without dividing by
    ``a``: trained CenterPoint models expect these (larger) gaussians, so the training targets stay the same.
    """
    total, area = height + width, height * width
    quadratics = (
        (1.0, total, area * (1 - min_overlap) / (1 + min_overlap)),
        (4.0, 2 * total, (1 - min_overlap) * area),
        (4.0 * min_overlap, -2 * min_overlap * total, (min_overlap - 1) * area),
    )
    roots = [(b + torch.sqrt(b**2 - 4 * a * c)) / 2 for a, b, c in quadratics]
    return torch.min(torch.min(roots[0], roots[1]), roots[2])


def gaussian_kernel(radius: int) -> np.ndarray:
    """``(2r + 1, 2r + 1)`` float64 kernel ``exp(−(dx² + dy²) / 2σ²)``, ``σ = (2r + 1) / 6``; values below
    float64 eps (relative to the peak 1) are set to 0, as CenterNet does."""
    sigma = (2 * radius + 1) / 6
    offsets = np.arange(-radius, radius + 1, dtype=np.float64)
    kernel = np.exp(-(offsets[None, :] ** 2 + offsets[:, None] ** 2) / (2 * sigma * sigma))
    kernel[kernel < np.finfo(np.float64).eps * kernel.max()] = 0
    return kernel


def draw_gaussian_to_heatmap(heatmap: torch.Tensor, center, radius: int) -> torch.Tensor:
    """In place: ``heatmap (H, W)`` becomes its element-wise max with a gaussian of ``radius`` cells around the
    cell ``(int(x), int(y))`` of ``center``, clipped at the map borders. Returns ``heatmap``."""
    x, y = int(center[0]), int(center[1])
    radius = int(radius)
    height, width = heatmap.shape
    left, right = min(x, radius), min(width - x, radius + 1)
    top, bottom = min(y, radius), min(height - y, radius + 1)
    if left + right <= 0 or top + bottom <= 0:
        return heatmap
    kernel = gaussian_kernel(radius)[radius - top : radius + bottom, radius - left : radius + right]
    window = heatmap[y - top : y + bottom, x - left : x + right]
    torch.maximum(window, torch.from_numpy(kernel).to(heatmap), out=window)
    return heatmap


def assign_center_targets(
    gt_boxes: torch.Tensor,
    num_classes: int,
    feature_map_size,
    point_cloud_range,
    voxel_size,
    feature_map_stride: int,
    num_max_objs: int = 500,
    gaussian_overlap: float = 0.1,
    min_radius: int = 2,
) -> dict:
    """Targets of one head for one sample.

    ``gt_boxes (G, 7 + E + 1)``: ``x, y, z, dx, dy, dz, heading``, E extra columns (velocities), and the class
    1-based *within the head*; ``feature_map_size`` is ``(W, H)``. Returns ``heatmap (C, H, W)``, ``target_boxes
    (K, 8 + E)`` = ``(offset x, offset y, z, log dx, log dy, log dz, cos, sin, extras…)``, ``inds (K)`` (flat cell
    ``y · W + x``) and ``mask (K)`` (1 for a real object), K = ``num_max_objs``. Objects past K, with a
    non-positive size, or whose centre cell falls off the map get no target.
    """
    width, height = int(feature_map_size[0]), int(feature_map_size[1])
    heatmap = gt_boxes.new_zeros((num_classes, height, width))
    target_boxes = gt_boxes.new_zeros((num_max_objs, gt_boxes.shape[-1]))
    inds = gt_boxes.new_zeros(num_max_objs, dtype=torch.long)
    mask = gt_boxes.new_zeros(num_max_objs, dtype=torch.long)

    cell_x = float(voxel_size[0]) * feature_map_stride
    cell_y = float(voxel_size[1]) * feature_map_stride
    # Centres are clamped inside the map (half a cell from the far border, so int() stays a valid index).
    coord_x = ((gt_boxes[:, 0] - float(point_cloud_range[0])) / cell_x).clamp(min=0, max=width - 0.5)
    coord_y = ((gt_boxes[:, 1] - float(point_cloud_range[1])) / cell_y).clamp(min=0, max=height - 0.5)
    center = torch.stack((coord_x, coord_y), dim=-1)
    center_int = center.int()
    size_x, size_y = gt_boxes[:, 3] / cell_x, gt_boxes[:, 4] / cell_y
    radius = gaussian_radius(size_x, size_y, min_overlap=gaussian_overlap).int().clamp_min(min_radius)

    for k in range(min(num_max_objs, gt_boxes.shape[0])):
        if size_x[k] <= 0 or size_y[k] <= 0:
            continue
        cx, cy = int(center_int[k, 0]), int(center_int[k, 1])
        if not (0 <= cx < width and 0 <= cy < height):
            continue
        class_id = int(gt_boxes[k, -1]) - 1
        draw_gaussian_to_heatmap(heatmap[class_id], center[k], int(radius[k]))
        inds[k] = cy * width + cx
        mask[k] = 1
        target_boxes[k, 0:2] = center[k] - center_int[k].to(center.dtype)
        target_boxes[k, 2] = gt_boxes[k, 2]
        target_boxes[k, 3:6] = gt_boxes[k, 3:6].log()
        target_boxes[k, 6] = torch.cos(gt_boxes[k, 6])
        target_boxes[k, 7] = torch.sin(gt_boxes[k, 6])
        target_boxes[k, 8:] = gt_boxes[k, 7:-1]
    return {"heatmap": heatmap, "target_boxes": target_boxes, "inds": inds, "mask": mask}


def gather_at(feature: torch.Tensor, inds: torch.Tensor) -> torch.Tensor:
    """``feature (B, C, H, W)`` at flat cells ``inds (B, K)`` → ``(B, K, C)``."""
    batch, channels = feature.shape[:2]
    flat = feature.reshape(batch, channels, -1)
    return flat.gather(2, inds[:, None, :].expand(-1, channels, -1)).permute(0, 2, 1)


def decode_bbox_from_heatmap(
    heatmap: torch.Tensor,
    rot_cos: torch.Tensor,
    rot_sin: torch.Tensor,
    center: torch.Tensor,
    center_z: torch.Tensor,
    dim: torch.Tensor,
    point_cloud_range,
    voxel_size,
    feature_map_stride: int,
    vel: torch.Tensor | None = None,
    K: int = 100,
    score_thresh: float | None = None,
    post_center_limit_range: torch.Tensor | None = None,
) -> list[dict]:
    """The ``K`` highest cells of ``heatmap (B, C, H, W)`` (probabilities) over all classes, as boxes.

    Maps: ``rot_cos``/``rot_sin``/``center_z`` ``(B, 1, H, W)``, ``center (B, 2, H, W)`` (cell offsets), ``dim (B,
    3, H, W)`` in metres (already exponentiated), ``vel (B, 2, H, W)``. Per sample: ``pred_boxes (M, 7 [+2])``,
    ``pred_scores (M)``, ``pred_labels (M)`` 0-based within the head, keeping boxes whose centre lies in
    ``post_center_limit_range`` and whose score exceeds ``score_thresh``.
    """
    batch, num_class, height, width = heatmap.shape
    k = min(K, num_class * height * width)
    scores, flat = torch.topk(heatmap.reshape(batch, -1), k)
    labels = torch.div(flat, height * width, rounding_mode="floor")
    cells = flat % (height * width)
    ys = torch.div(cells, width, rounding_mode="floor").to(heatmap.dtype)
    xs = (cells % width).to(heatmap.dtype)

    offset = gather_at(center, cells)
    xs = (xs + offset[..., 0]) * feature_map_stride * float(voxel_size[0]) + float(point_cloud_range[0])
    ys = (ys + offset[..., 1]) * feature_map_stride * float(voxel_size[1]) + float(point_cloud_range[1])
    angle = torch.atan2(gather_at(rot_sin, cells), gather_at(rot_cos, cells))
    parts = [xs[..., None], ys[..., None], gather_at(center_z, cells), gather_at(dim, cells), angle]
    if vel is not None:
        parts.append(gather_at(vel, cells))
    boxes = torch.cat(parts, dim=-1)

    keep = torch.ones_like(scores, dtype=torch.bool)
    if post_center_limit_range is not None:
        limit = torch.as_tensor(post_center_limit_range, dtype=boxes.dtype, device=boxes.device)
        keep &= ((boxes[..., :3] >= limit[:3]) & (boxes[..., :3] <= limit[3:])).all(dim=-1)
    if score_thresh is not None:
        keep &= scores > score_thresh
    return [
        {"pred_boxes": boxes[b, keep[b]], "pred_scores": scores[b, keep[b]], "pred_labels": labels[b, keep[b]]}
        for b in range(batch)
    ]


def circle_nms(
    centers: torch.Tensor, scores: torch.Tensor, dist_sq_thresh: float, post_max_size: int | None = None
) -> torch.Tensor:
    """Greedy NMS on BEV centre distance, highest score first: a box is dropped when its squared centre distance
    to a kept box is at most ``dist_sq_thresh`` (CenterPoint compares its per-task "min_radius" values with the
    squared distance, so they are m², e.g. 4 for cars). ``centers (N, 2)``. Returns the kept indices in
    descending score order, at most ``post_max_size``."""
    order = torch.sort(scores, descending=True, stable=True)[1]
    if order.numel() == 0:
        return order
    pts = centers[order, 0:2].detach().double()
    close = (((pts[:, None, :] - pts[None, :, :]) ** 2).sum(-1) <= dist_sq_thresh).cpu().numpy()
    removed = np.zeros(order.numel(), dtype=bool)
    kept = []
    for i in range(order.numel()):
        if removed[i]:
            continue
        kept.append(i)
        if post_max_size is not None and len(kept) >= post_max_size:
            break
        removed |= close[i]
    return order[torch.as_tensor(kept, dtype=torch.long, device=order.device)]
