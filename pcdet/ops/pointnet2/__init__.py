"""PointNet++ ops and modules; ``pointnet2_batch`` holds the batched (B, N, ...) ones, as in OpenPCDet."""
