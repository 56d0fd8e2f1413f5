"""The re-parameterization identities added for the tutorial, checked against the modules they replace (float64)."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from repnext import reparam
from repnext.distributed import runtime


@pytest.fixture(autouse=True)
def _float64_one_thread():
    torch.set_default_dtype(torch.float64)
    with runtime(1):  # tiny tensors: extra threads only wait for each other on a busy machine
        yield
    torch.set_default_dtype(torch.float32)


def close(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and torch.allclose(a, b, rtol=1e-10, atol=1e-10)


def kernel(conv: nn.Conv2d) -> tuple[torch.Tensor, torch.Tensor | None]:
    return conv.weight, conv.bias


@pytest.mark.parametrize("groups", [1, 2])
@pytest.mark.parametrize("stride", [1, 2])
def test_fuse_1x1_kxk_unpadded(groups, stride):
    first, second = nn.Conv2d(4, 6, 1, groups=groups), nn.Conv2d(6, 8, 3, stride, groups=groups)
    x = torch.randn(2, 4, 9, 10)
    weight, bias = reparam.fuse_1x1_kxk(kernel(first), kernel(second), groups)
    assert weight.shape == (8, 4 // groups, 3, 3)
    assert close(F.conv2d(x, weight, bias, stride, groups=groups), second(first(x)))


def test_fuse_1x1_kxk_padded_is_exact_without_first_bias_and_inside_otherwise():
    first, second = nn.Conv2d(3, 5, 1), nn.Conv2d(5, 4, 3, padding=1)
    x = torch.randn(2, 3, 7, 8)
    weight, bias = reparam.fuse_1x1_kxk((first.weight, None), kernel(second))
    assert torch.equal(bias, second.bias)
    assert close(F.conv2d(x, weight, bias, padding=1), second(F.conv2d(x, first.weight)))
    weight, bias = reparam.fuse_1x1_kxk(kernel(first), kernel(second))
    diff = (F.conv2d(x, weight, bias, padding=1) - second(first(x))).abs()
    assert diff[..., 1:-1, 1:-1].max() < 1e-12 < diff.max()  # the first bias is missing only in the padding


@pytest.mark.parametrize("groups", [1, 2])
def test_fuse_kxk_1x1_padded_and_strided(groups):
    first, second = nn.Conv2d(4, 6, (3, 5), 2, (1, 2), groups=groups), nn.Conv2d(6, 2, 1, groups=groups)
    x = torch.randn(2, 4, 9, 11)
    weight, bias = reparam.fuse_kxk_1x1(kernel(first), kernel(second), groups)
    assert weight.shape == (2, 4 // groups, 3, 5)
    assert close(F.conv2d(x, weight, bias, 2, (1, 2), groups=groups), second(first(x)))
    weight, bias = reparam.fuse_kxk_1x1((first.weight, None), (second.weight, None), groups)
    assert bias is None


def test_sequential_fusions_reject_wrong_shapes():
    with pytest.raises(ValueError, match="first conv must be 1x1"):
        reparam.fuse_1x1_kxk((torch.randn(4, 4, 3, 3), None), (torch.randn(4, 4, 3, 3), None))
    with pytest.raises(ValueError, match="second conv must be 1x1"):
        reparam.fuse_kxk_1x1((torch.randn(4, 4, 3, 3), None), (torch.randn(4, 4, 3, 3), None))
    with pytest.raises(ValueError, match="gives 6 channels but the second, with 2 groups, expects 8"):
        reparam.fuse_kxk_1x1((torch.randn(6, 2, 3, 3), None), (torch.randn(4, 4, 1, 1), None), groups=2)
    with pytest.raises(ValueError, match="5 output channels do not split into 2 groups"):
        reparam.fuse_1x1_kxk((torch.randn(6, 2, 1, 1), None), (torch.randn(5, 3, 3, 3), None), groups=2)


@pytest.mark.parametrize(("stride", "padding"), [(1, 1), (2, 1), (2, 0)])
def test_avg_pool_kernel_depthwise_and_dense(stride, padding):
    pool, x = nn.AvgPool2d(3, stride, padding), torch.randn(2, 4, 8, 9)
    depthwise = reparam.avg_pool_kernel(4, 3, groups=4)
    assert depthwise.shape == (4, 1, 3, 3)
    assert close(F.conv2d(x, depthwise, stride=stride, padding=padding, groups=4), pool(x))
    dense = reparam.avg_pool_kernel(4, 3, like=x)
    assert dense.shape == (4, 4, 3, 3) and dense.dtype == x.dtype
    assert close(F.conv2d(x, dense, stride=stride, padding=padding), pool(x))


def test_avg_pool_kernel_needs_padding_counted():
    pool, x = nn.AvgPool2d(3, 1, 1, count_include_pad=False), torch.randn(1, 2, 5, 5)
    conv = F.conv2d(x, reparam.avg_pool_kernel(2, 3, groups=2), padding=1, groups=2)
    diff = (conv - pool(x)).abs()
    assert diff[..., 1:-1, 1:-1].max() < 1e-12 < diff.max()


def test_linear_and_1x1_conv_both_ways():
    linear, x = nn.Linear(6, 3), torch.randn(2, 6, 4, 5)
    on_pixels = linear(x.movedim(1, -1)).movedim(-1, 1)
    assert close(F.conv2d(x, *reparam.linear_to_conv(linear.weight, linear.bias)), on_pixels)
    conv = nn.Conv2d(6, 4, 1, groups=2)
    weight, bias = reparam.conv_to_linear(conv.weight, conv.bias, groups=2)
    assert weight.shape == (4, 6) and torch.count_nonzero(weight[:2, 3:]) == 0
    rebuilt = reparam.linear_from_weight(weight, bias)
    assert close(rebuilt(x.movedim(1, -1)).movedim(-1, 1), conv(x))
    assert reparam.linear_from_weight(weight, None).bias is None
    with pytest.raises(ValueError, match="only a 1x1 conv"):
        reparam.conv_to_linear(torch.randn(4, 6, 3, 3), None)
