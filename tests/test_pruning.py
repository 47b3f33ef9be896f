"""trainables/pruning.py: the compression measures against hand counts, the unit choices against
hand-made scores, and torch-pruning's surgery against networks built by hand from sliced weights."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from trainables import pruning

pytestmark = pytest.mark.usefixtures("one_thread")


def test_multiplications_halve_the_flop_counter_to_the_hand_count():
    """FlopCounterMode counts 2*m*n*k per matrix product; a linear layer on a batch of 3 makes
    3 * 7 * 5 multiplications, a 3x3 conv 2 -> 4 channels on 6x6 (no padding, 4x4 out) makes
    4*4 positions * 4 channels * 2*3*3 per output, and a padded one 6*6 positions."""
    assert pruning.multiplications(nn.Linear(7, 5), torch.zeros(3, 7)) == 3 * 7 * 5
    assert pruning.multiplications(nn.Linear(7, 5, bias=False), torch.zeros(3, 7)) == 3 * 7 * 5
    assert pruning.multiplications(nn.Conv2d(2, 4, 3), torch.zeros(1, 2, 6, 6)) == 4 * 4 * 4 * 2 * 3 * 3
    assert pruning.multiplications(nn.Conv2d(2, 4, 3, padding=1), torch.zeros(1, 2, 6, 6)) == 6 * 6 * 4 * 2 * 3 * 3
    net = nn.Sequential(nn.Conv2d(1, 3, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(3 * 4 * 4, 10))
    assert pruning.multiplications(net, torch.zeros(1, 1, 12, 12)) == 8 * 8 * 3 * 25 + 48 * 10  # pools and ReLUs: none


def test_weights_count_nonzero_conv_and_linear_weights_only():
    net = nn.Sequential(nn.Conv2d(2, 3, 3), nn.BatchNorm2d(3), nn.Flatten(), nn.Linear(12, 4))
    assert pruning.weight_count(net) == 2 * 3 * 9 + 12 * 4  # biases and BatchNorm left out
    with torch.no_grad():
        net[3].weight[0, :5] = 0
    assert pruning.weight_count(net) == 2 * 3 * 9 + 12 * 4 - 5


def test_feature_maps_count_every_conv_and_linear_output_of_one_example():
    net = nn.Sequential(nn.Conv2d(1, 3, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(48, 7), nn.Linear(7, 2))
    assert pruning.feature_map_size(net, torch.zeros(5, 1, 12, 12)) == 3 * 8 * 8 + 7 + 2
    assert not net[0]._forward_hooks  # the counting hooks are gone


def test_inactive_units_are_those_whose_peak_is_not_positive_and_one_always_stays():
    assert pruning.inactive_units(torch.tensor([0.5, 0.0, -2.0, 1e-9, -1e-9])) == [1, 2, 4]
    assert pruning.inactive_units(torch.tensor([-3.0, -1.0, -2.0])) == [0, 2]  # the highest peak stays
    assert pruning.inactive_units(torch.tensor([-3.0, -1.0, -2.0]), keep=2) == [0]
    assert pruning.inactive_units(torch.tensor([1.0, 2.0])) == []


def test_least_important_takes_the_highest_scores_over_all_layers_leaving_one_per_layer():
    scores = [torch.tensor([0.1, 3.0, -1.0]), torch.tensor([2.5, 2.9]), torch.tensor([5.0])]
    assert pruning.least_important(scores, 1) == [[1], [], []]  # the lone unit of layer 3 must stay
    assert pruning.least_important(scores, 2) == [[1], [1], []]
    assert pruning.least_important(scores, 3) == [[0, 1], [1], []]  # layer 2 keeps its 2.5: 0.1 is next
    assert pruning.least_important(scores, 4) == [[0, 1], [1], []]  # nothing else may go
    assert pruning.least_important(scores, 99) == [[0, 1], [1], []]
    tied = [torch.tensor([1.0, 1.0]), torch.tensor([1.0, 1.0])]
    assert pruning.least_important(tied, 2) == [[0], [0]]  # earlier layer, lower index first


def _net(bn: bool) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(2, 5, 3), *([nn.BatchNorm2d(5)] if bn else []), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Flatten(), nn.Linear(5 * 2 * 2, 6), nn.ReLU(), nn.Linear(6, 3)).double()


@pytest.mark.parametrize("bn", [False, True])
def test_removing_units_equals_a_network_built_from_the_kept_rows_and_columns(bn):
    """The independent construction: new layers of the kept widths, weights sliced by hand
    (a removed channel takes its 2x2 block of the flattened inputs with it)."""
    net = _net(bn)
    if bn:
        with torch.no_grad():
            net[1].running_mean.normal_()
            net[1].running_var.uniform_(0.5, 2.0)
            net[1].weight.normal_()
    net.eval()
    x = torch.randn(4, 2, 6, 6, dtype=torch.float64)
    conv, fc1, fc2 = net[0], net[-3], net[-1]
    keep_c, keep_f = [0, 2, 3], [1, 2, 4, 5]
    cols = [c * 4 + p for c in keep_c for p in range(4)]
    small = nn.Sequential(nn.Conv2d(2, 3, 3), *([nn.BatchNorm2d(3)] if bn else []), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Flatten(), nn.Linear(12, 4), nn.ReLU(), nn.Linear(4, 3)).double().eval()
    with torch.no_grad():
        small[0].weight.copy_(conv.weight[keep_c]), small[0].bias.copy_(conv.bias[keep_c])
        if bn:
            for name in ("weight", "bias", "running_mean", "running_var"):
                getattr(small[1], name).copy_(getattr(net[1], name)[keep_c])
        small[-3].weight.copy_(fc1.weight[keep_f][:, cols]), small[-3].bias.copy_(fc1.bias[keep_f])
        small[-1].weight.copy_(fc2.weight[:, keep_f]), small[-1].bias.copy_(fc2.bias)
        want = small(x)
    pruning.remove_units(net, [(conv, [1, 4]), (fc1, [0, 3])], x)
    assert (conv.weight.shape, fc1.weight.shape, fc2.weight.shape) == ((3, 2, 3, 3), (4, 12), (3, 4))
    assert all(type(m) is type(s) for m, s in zip(net, small))  # the layers themselves, smaller: no masks
    with torch.no_grad():
        torch.testing.assert_close(net(x), want, rtol=0, atol=1e-12)


def test_a_removal_that_would_empty_a_layer_or_repeats_a_unit_is_refused():
    net = _net(False)
    x = torch.zeros(1, 2, 6, 6, dtype=torch.float64)
    with pytest.raises(ValueError, match="one must stay"):
        pruning.remove_units(net, [(net[0], [0, 1, 2, 3, 4])], x)
    with pytest.raises(ValueError, match="each once"):
        pruning.remove_units(net, [(net[0], [1, 1])], x)
    assert net[0].weight.shape[0] == 5
