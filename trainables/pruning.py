"""Structural pruning and the compression measures of pruning papers, for any family's network.

Removing a unit (a neuron of a Linear layer, a channel of a Conv2d) rebuilds the layers
physically smaller, never with masks: torch-pruning's dependency graph (Fang et al., DepGraph;
pip `torch-pruning`) traces one forward pass and shrinks every coupled tensor, so one call
resizes the layer's out-rows, its BatchNorm entries, every parallel branch that is added to it
elementwise (a stochastic layer's sigma predictor) and the next layer's in-columns, through a
max-pool and a flatten (one channel -> its H*W inputs of the next Linear). It needs no custom
pruner for a layer made of plain nn.Conv2d / nn.Linear children, provided the traced forward pass
combines the branches (a stochastic layer must be sampling while traced: its mean-only path
leaves the sigma branch out of the graph).

The measures, as Table 1-3 of the SE-SNN paper and Dai et al.'s VIBNet count them:
- `multiplications`: torch.utils.flop_counter.FlopCounterMode counts a product of an (m, k) and a
  (k, n) matrix as 2*m*n*k (a multiply and an add each); the papers count multiplications only,
  so the count is halved. Additions of biases, ReLUs and pools are not counted by either.
- `weight_count`: nonzero entries of the weights of every Conv2d and Linear (biases not counted).
- `feature_map_size`: elements of every Conv2d and Linear output per example, the "space for
  storing hidden feature maps" (pool outputs are views derived from them and not counted).
"""

from __future__ import annotations

from typing import Callable, Iterable

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

MEASURED = (nn.Conv2d, nn.Linear)


def multiplications(model: nn.Module, x: torch.Tensor) -> int:
    """Multiplications of one forward pass of `model` on the batch x (FlopCounterMode's count / 2)."""
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(x)
    total = counter.get_total_flops()
    assert total % 2 == 0, total  # every counted op is a multiply-add pair
    return total // 2


def weight_count(model: nn.Module) -> int:
    """Nonzero weights of every Conv2d and Linear of `model` (biases and norms left out)."""
    return sum(int(torch.count_nonzero(m.weight)) for m in model.modules() if isinstance(m, MEASURED))


def feature_map_size(model: nn.Module, x: torch.Tensor) -> int:
    """Elements of every Conv2d and Linear output on one example (x is a batch of one or more)."""
    sizes = []
    hooks = [m.register_forward_hook(lambda m, i, out: sizes.append(out[0].numel()))
             for m in model.modules() if isinstance(m, MEASURED)]
    try:
        with torch.no_grad():
            model(x[:1])
    finally:
        for h in hooks:
            h.remove()
    return sum(sizes)


def _out_pruner(layer: nn.Module):
    import torch_pruning as tp
    if isinstance(layer, nn.Conv2d):
        return tp.prune_conv_out_channels
    if isinstance(layer, nn.Linear):
        return tp.prune_linear_out_channels
    raise TypeError(f"cannot remove units of a {type(layer).__name__}; allowed: Conv2d, Linear")


def remove_units(model: nn.Module, removals: Iterable[tuple[nn.Module, list[int]]], example: torch.Tensor,
                 trace: Callable[[nn.Module, torch.Tensor], object] | None = None) -> None:
    """Remove, in place, the output units `idxs` of each (layer, idxs), with everything coupled to
    them (module docstring). `layer` is the Conv2d/Linear whose output rows name the units; the
    indices are that layer's before any removal, so units of several layers go in one call.
    `trace(model, example)` is the forward pass traced (default: model(example)); the caller puts
    the model in the mode whose graph couples every branch."""
    import torch_pruning as tp
    removals = [(layer, sorted(int(i) for i in idxs)) for layer, idxs in removals if len(idxs)]
    if not removals:
        return
    graph = tp.DependencyGraph().build_dependency(model, example_inputs=example, forward_fn=trace, verbose=False)
    for layer, idxs in removals:
        width = layer.weight.shape[0]
        if len(set(idxs)) != len(idxs) or idxs[0] < 0 or idxs[-1] >= width or len(idxs) >= width:
            raise ValueError(f"cannot remove units {idxs} of a layer of {width}: each once, and one must stay")
        graph.get_pruning_group(layer, _out_pruner(layer), idxs=idxs).prune()


def inactive_units(peaks: torch.Tensor, keep: int = 1) -> list[int]:
    """Units whose largest pre-activation over the data is <= 0, i.e. whose ReLU never fires:
    they pass exact zeros on, so removing them changes no output. At least `keep` units stay (the
    ones with the highest peaks), so a layer never vanishes."""
    dead = [int(i) for i in torch.nonzero(peaks <= 0).flatten()]
    spare = len(peaks) - keep
    if len(dead) <= spare:
        return dead
    order = sorted(dead, key=lambda i: (-float(peaks[i]), i))  # highest peak first: the kept ones
    return sorted(order[len(dead) - spare:])


def least_important(scores: list[torch.Tensor], k: int, keep: int = 1) -> list[list[int]]:
    """The k units of highest score over all layers (a score per unit of each layer, comparable
    across layers), never more than leave `keep` units in a layer; per layer, the indices chosen.
    Ties go to the earlier layer and the lower index, so the order is deterministic."""
    ranked = sorted(((-float(s), li, j) for li, layer in enumerate(scores) for j, s in enumerate(layer)))
    left = [len(s) for s in scores]
    chosen: list[list[int]] = [[] for _ in scores]
    for _, li, j in ranked:
        if sum(map(len, chosen)) == k:
            break
        if left[li] > keep:
            chosen[li].append(j)
            left[li] -= 1
    return [sorted(c) for c in chosen]
