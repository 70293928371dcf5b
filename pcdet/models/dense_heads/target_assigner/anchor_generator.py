"""Dense anchors on the BEV feature map, one set per anchor config (class)."""

from __future__ import annotations

import numpy as np
import torch


class AnchorGenerator:
    """Each config entry gives ``anchor_sizes`` (l, w, h), ``anchor_rotations``, ``anchor_bottom_heights`` and
    ``align_center``. Without ``align_center`` the first/last anchor sits on the range border (stride
    ``(max - min) / (n - 1)``); with it anchors sit at cell centres (stride ``(max - min) / n``, offset half a cell).
    """

    def __init__(self, anchor_range, anchor_generator_config):
        self.anchor_range = [float(v) for v in np.asarray(anchor_range, dtype=np.float32)]
        self.anchor_sizes = [cfg["anchor_sizes"] for cfg in anchor_generator_config]
        self.anchor_rotations = [cfg["anchor_rotations"] for cfg in anchor_generator_config]
        self.anchor_heights = [cfg["anchor_bottom_heights"] for cfg in anchor_generator_config]
        self.align_center = [cfg.get("align_center", False) for cfg in anchor_generator_config]
        assert len(self.anchor_sizes) == len(self.anchor_rotations) == len(self.anchor_heights)
        self.num_of_anchor_sets = len(self.anchor_sizes)

    def _axis_centres(self, lo: float, hi: float, n: int, align_center: bool) -> torch.Tensor:
        # The range arrives as float32 (the dataset's array): take the span in float32 as OpenPCDet does, so the
        # anchor centres match its float32 round-off, then divide in float64.
        span = float(np.float32(hi) - np.float32(lo))
        if align_center:
            stride = span / n
            offset = stride / 2
        else:
            stride = span / (n - 1)
            offset = 0.0
        # arange with a small slack on the end, so the last centre is not lost to round-off.
        return torch.arange(lo + offset, hi + 1e-5, step=stride, dtype=torch.float32)

    def generate_anchors(self, grid_sizes) -> tuple[list[torch.Tensor], list[int]]:
        """``grid_sizes``: one ``(nx, ny)`` per anchor set. Returns, per set, anchors of shape
        ``(nz, ny, nx, num_sizes, num_rotations, 7)`` as ``(x, y, z_centre, l, w, h, rot)``, and the number of
        anchors per location."""
        all_anchors, num_anchors_per_location = [], []
        for grid_size, sizes, rotations, heights, align_center in zip(
            grid_sizes, self.anchor_sizes, self.anchor_rotations, self.anchor_heights, self.align_center
        ):
            num_anchors_per_location.append(len(rotations) * len(sizes) * len(heights))
            xs = self._axis_centres(self.anchor_range[0], self.anchor_range[3], int(grid_size[0]), align_center)
            ys = self._axis_centres(self.anchor_range[1], self.anchor_range[4], int(grid_size[1]), align_center)
            zs = xs.new_tensor(heights)
            size = xs.new_tensor(sizes).view(-1, 3)
            rot = xs.new_tensor(rotations).view(-1)
            nz, ny, nx, ns, nr = len(zs), len(ys), len(xs), size.shape[0], rot.shape[0]
            # Layout (z, y, x, size, rotation, 7): x varies fastest among the locations, rotation fastest overall.
            grid_z, grid_y, grid_x = torch.meshgrid(zs, ys, xs, indexing="ij")
            centres = torch.stack((grid_x, grid_y, grid_z), dim=-1)[:, :, :, None, None, :].expand(
                nz, ny, nx, ns, nr, 3
            )
            dims = size[None, None, None, :, None, :].expand(nz, ny, nx, ns, nr, 3)
            angles = rot[None, None, None, None, :, None].expand(nz, ny, nx, ns, nr, 1)
            anchors = torch.cat((centres, dims, angles), dim=-1).contiguous()
            # The configs give the bottom height: move z to the box centre.
            anchors[..., 2] += anchors[..., 5] / 2
            all_anchors.append(anchors)
        return all_anchors, num_anchors_per_location
