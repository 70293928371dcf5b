"""Point pooling inside 3D RoIs (PointRCNN's second stage), in PyTorch: the same code on CPU and CUDA."""
