"""Hand-written layers: functional ``*_forward`` / ``*_backward`` pairs and thin classes.

See ``base.py`` for the layer contract (returned caches, returned gradients).
"""
from .activations import ReLU, ScaledTanh, relu_backward, relu_forward, scaled_tanh_backward, scaled_tanh_forward
from .base import Layer, Residual, Sequential
from .conv import (Conv2d, ConvTranspose2d, conv2d_backward, conv2d_forward, conv2d_naive,
                   conv_transpose2d_backward, conv_transpose2d_forward)
from .normalization import (BatchNorm2d, ConditionalInstanceNorm2d, InstanceNorm2d, batch_norm_backward,
                            batch_norm_forward, conditional_instance_norm_backward,
                            conditional_instance_norm_forward, instance_norm_backward,
                            instance_norm_forward)
from .padding import pad2d, pad2d_backward
from .pooling import (AvgPool2d, MaxPool2d, avgpool2d_backward, avgpool2d_forward,
                      maxpool2d_backward, maxpool2d_forward)
from .resampling import Upsample, upsample_nearest2d_backward, upsample_nearest2d_forward
from .upconv import upconv2d_backward, upconv2d_forward, upconv2d_naive
