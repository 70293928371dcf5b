"""Synthetic KITTI-format LiDAR data (the project's embedded default data set); see docs/SYNTHETIC.md."""

GENERATOR_VERSION = "1.0"
