"""Rotated IoU (BEV / 3D) and NMS for LiDAR boxes, device-agnostic."""
