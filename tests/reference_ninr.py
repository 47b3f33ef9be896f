"""A slow reference of noise injection nodes, written from the poster's definition.

A NIN is one extra input unit eps ~ N(0, sigma^2) per example, wired into a layer's
pre-activations by learnable weights: h_j = sum_i W_ji a_i + b_j + w_j * eps. For a convolution
the NIN is one value per example and pixel, weighted per output channel. Here every layer is
written out with explicit loops over examples, units and pixels (no hooks, no broadcasting
tricks), and the noise values are given, so the fast path can be fed the same ones.
"""

from __future__ import annotations

import torch
from torch import nn


def linear_with_nin(layer: nn.Linear, a: torch.Tensor, w: torch.Tensor | None, eps: torch.Tensor | None):
    """h[b, j] = sum_i W[j, i] a[b, i] + bias[j] + w[j] * eps[b], one example and unit at a time."""
    out = torch.zeros(a.shape[0], layer.out_features, dtype=torch.float64)
    W = layer.weight.detach().double()
    bias = layer.bias.detach().double() if layer.bias is not None else torch.zeros(layer.out_features, dtype=torch.float64)
    for b in range(a.shape[0]):
        for j in range(layer.out_features):
            h = float((W[j] * a[b].double()).sum()) + float(bias[j])
            if w is not None:
                h += float(w[j]) * float(eps[b])
            out[b, j] = h
    return out


def conv_with_nin(layer: nn.Conv2d, a: torch.Tensor, w: torch.Tensor | None, eps: torch.Tensor | None):
    """The convolution (PyTorch's, in float64), then + w[c] * eps[b, y, x] pixel by pixel."""
    h = torch.nn.functional.conv2d(a.double(), layer.weight.detach().double(),
                                   None if layer.bias is None else layer.bias.detach().double(),
                                   layer.stride, layer.padding)
    if w is not None:
        for b in range(h.shape[0]):
            for c in range(h.shape[1]):
                for y in range(h.shape[2]):
                    for x in range(h.shape[3]):
                        h[b, c, y, x] += float(w[c]) * float(eps[b, 0, y, x])
    return h


def forward(net: nn.Sequential, x: torch.Tensor, niws: dict[int, torch.Tensor], eps: dict[int, torch.Tensor]):
    """The network layer by layer; `niws[i]` and `eps[i]` feed the i-th Linear/Conv2d (0-based)."""
    a, k = x.double(), 0
    for module in net:
        if isinstance(module, nn.Linear):
            a = linear_with_nin(module, a, niws.get(k), eps.get(k))
            k += 1
        elif isinstance(module, nn.Conv2d):
            a = conv_with_nin(module, a, niws.get(k), eps.get(k))
            k += 1
        elif isinstance(module, nn.Flatten):
            a = a.reshape(a.shape[0], -1)
        elif isinstance(module, nn.ReLU):
            a = torch.clamp(a, min=0)
        elif isinstance(module, nn.MaxPool2d):
            a = torch.nn.functional.max_pool2d(a, module.kernel_size)
        else:
            raise TypeError(f"reference has no {type(module).__name__}")
    return a
