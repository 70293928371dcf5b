"""Batched PointNet++ ops (``pointnet2_utils``) and set-abstraction / feature-propagation layers
(``pointnet2_modules``) under OpenPCDet's names, in PyTorch with numba CPU kernels: no compiled extension."""
