"""Hand-written CUDA kernels for the GPU path, one ``*.cu`` source per family.

Each kernel source starts with what it computes, its index decomposition, its launch
shape and the name of its NumPy reference; ``launch.py`` holds the launchers, named like
their CPU twins with ``_gpu`` appended and with the same signatures. Importing this
package never imports CuPy (the launchers do, on first use). See docs/kernels.md.
"""
from .launch import (SOURCES, avgpool2d_backward_gpu, avgpool2d_forward_gpu,
                     batch_norm_backward_gpu, batch_norm_forward_gpu, col2im_add_gpu,
                     content_loss_gpu, im2col_gpu, instance_norm_backward_gpu,
                     instance_norm_forward_gpu, maxpool2d_backward_gpu, maxpool2d_forward_gpu,
                     pad2d_backward_gpu, pad2d_gpu, padded_rows_cl_gpu, relu_backward_gpu, relu_forward_gpu,
                     style_loss_gpu, tv_loss_gpu, upsample_nearest2d_backward_gpu,
                     upsample_nearest2d_forward_gpu)

__all__ = [
    "SOURCES", "avgpool2d_backward_gpu", "avgpool2d_forward_gpu", "batch_norm_backward_gpu",
    "batch_norm_forward_gpu", "col2im_add_gpu", "content_loss_gpu", "im2col_gpu",
    "instance_norm_backward_gpu", "instance_norm_forward_gpu", "maxpool2d_backward_gpu",
    "maxpool2d_forward_gpu", "pad2d_backward_gpu", "pad2d_gpu", "padded_rows_cl_gpu", "relu_backward_gpu",
    "relu_forward_gpu", "style_loss_gpu", "tv_loss_gpu", "upsample_nearest2d_backward_gpu",
    "upsample_nearest2d_forward_gpu",
]
