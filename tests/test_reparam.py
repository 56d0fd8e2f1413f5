"""Each re-parameterization identity, checked against the modules it replaces (float64)."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from repnext import reparam
from repnext.analysis.equivalence import randomize_batchnorm


def close(a: torch.Tensor, b: torch.Tensor) -> bool:
    return torch.allclose(a, b, rtol=1e-10, atol=1e-10)


def dw(channels, kernel, stride=(1, 1), bias=True, dilation=1):
    padding = tuple(dilation * (k - 1) // 2 for k in kernel)
    return nn.Conv2d(channels, channels, kernel, stride, padding, dilation=dilation, groups=channels, bias=bias)


@pytest.fixture(autouse=True)
def _float64():
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(torch.float32)


def bn(channels, dims=2):
    norm = (nn.BatchNorm2d if dims == 2 else nn.BatchNorm1d)(channels)
    return randomize_batchnorm(norm, seed=channels).eval()


@pytest.mark.parametrize("groups", [1, 4])
def test_fuse_conv_bn(groups):
    conv, norm = nn.Conv2d(8, 12, 3, stride=2, padding=1, groups=groups), bn(12)
    x = torch.randn(2, 8, 9, 11)
    weight, bias = reparam.fuse_conv_bn(conv.weight, conv.bias, norm)
    fused = reparam.conv_from_kernel(weight, bias, stride=2, groups=groups)
    assert close(fused(x), norm(conv(x)))


def test_fuse_bn_conv_and_linear():
    norm, conv, x = bn(6), nn.Conv2d(6, 5, 1), torch.randn(2, 6, 4, 5)
    fused = reparam.conv_from_kernel(*reparam.fuse_bn_conv(norm, conv.weight, conv.bias))
    assert close(fused(x), conv(norm(x)))
    norm1d, linear, v = bn(6, dims=1), nn.Linear(6, 3), torch.randn(4, 6)
    weight, bias = reparam.fuse_bn_linear(norm1d, linear.weight, linear.bias)
    assert close(F.linear(v, weight, bias), linear(norm1d(v)))


def test_bn_to_conv_and_dirac():
    norm, x = bn(5), torch.randn(2, 5, 6, 7)
    weight, bias = reparam.bn_to_conv(norm, kernel_size=3)
    assert close(F.conv2d(x, weight, bias, padding=1, groups=5), norm(x))
    assert close(F.conv2d(x[:, :4], reparam.dirac_kernel(4, 3, groups=2), padding=1, groups=2), x[:, :4])


def test_pad_kernel_and_errors():
    w = torch.randn(3, 1, 1, 3)
    assert reparam.pad_kernel(w, (3, 5)).shape == (3, 1, 3, 5)
    assert close(reparam.pad_kernel(w, (3, 5))[:, :, 1, 1:4], w[:, :, 0])
    with pytest.raises(ValueError, match="centre"):
        reparam.pad_kernel(w, (2, 3))
    with pytest.raises(ValueError, match="even"):
        reparam.same_padding((2, 2))


def test_dilated_kernel_is_dense():
    conv, x = dw(4, (2, 2), dilation=2), torch.randn(2, 4, 8, 9)
    conv.padding = (1, 1)
    dense = reparam.dilate_kernel(conv.weight, (2, 2))
    assert dense.shape[-2:] == (3, 3)
    assert close(F.conv2d(x, dense, conv.bias, padding=1, groups=4), conv(x))


def test_merge_parallel_sizes_and_stride():
    convs = [dw(4, (7, 7), (2, 2)), dw(4, (5, 3), (2, 2)), dw(4, (1, 1), (2, 2), bias=False)]
    x = torch.randn(2, 4, 13, 10)
    weight, bias = reparam.merge_parallel([(c.weight, c.bias) for c in convs])
    fused = reparam.conv_from_kernel(weight, bias, stride=2, groups=4)
    assert close(fused(x), sum(c(x) for c in convs))


def test_merge_chunks():
    convs = [dw(2, (3, 3)), dw(2, (5, 5), bias=False)]
    x = torch.randn(2, 4, 7, 6)
    weight, bias = reparam.merge_chunks([(c.weight, c.bias) for c in convs])
    expected = torch.cat([c(part) for c, part in zip(convs, x.chunk(2, dim=1), strict=True)], dim=1)
    assert close(reparam.conv_from_kernel(weight, bias, groups=4)(x), expected)


def test_merge_copies_with_channel_shuffle():
    convs = [dw(3, (3, 3), (2, 2)), dw(3, (7, 7), (2, 2))]
    x = torch.randn(2, 3, 11, 8)
    weight, bias = reparam.merge_copies([(c.weight, c.bias) for c in convs])
    fused = nn.Sequential(reparam.conv_from_kernel(weight, bias, stride=2, groups=3), nn.ChannelShuffle(3))
    assert close(fused(x), torch.cat([c(x) for c in convs], dim=1))


@pytest.mark.parametrize("size", [(9, 9), (4, 13), (23, 6)])
@pytest.mark.parametrize("first_bias", [False, True])
def test_merge_separable_exact_at_borders(size, first_bias):
    first, second = dw(3, (1, 11), bias=first_bias), dw(3, (11, 1))
    x = torch.randn(2, 3, *size)
    weight, bias, border = reparam.merge_separable((first.weight, first.bias), (second.weight, second.bias))
    assert (border is not None) == first_bias
    fused = reparam.conv_from_kernel(weight, bias, groups=3, border_kernel=border)
    assert close(fused(x), second(first(x)))


def test_border_bias_is_needed():
    first, second = dw(2, (1, 5)), dw(2, (5, 1))
    x = torch.randn(1, 2, 8, 8)
    weight, bias, _ = reparam.merge_separable((first.weight, first.bias), (second.weight, second.bias))
    plain = F.conv2d(x, weight, bias, padding=2, groups=2)
    diff = (plain - second(first(x))).abs()
    assert diff[..., 2:-2, :].max() < 1e-12 < diff.max()


def test_merge_separable_strided_without_bias():
    first, second = dw(3, (1, 3), (1, 2), bias=False), dw(3, (3, 1), (2, 1), bias=False)
    x = torch.randn(2, 3, 9, 12)
    weight, bias, border = reparam.merge_separable((first.weight, None), (second.weight, None))
    assert bias is None and border is None
    assert close(F.conv2d(x, weight, stride=2, padding=1, groups=3), second(first(x)))


def test_merge_separable_rejects_non_separable():
    with pytest.raises(ValueError, match="1xk/kx1"):
        reparam.merge_separable((torch.randn(2, 1, 3, 3), None), (torch.randn(2, 1, 3, 1), None))


def test_fusion_keeps_dtype_and_leaves_source_untouched():
    conv, norm = nn.Conv2d(4, 4, 3, padding=1).float(), bn(4).float()
    before = conv.weight.clone()
    fused = reparam.conv_from_kernel(*reparam.fuse_conv_bn(conv.weight, conv.bias, norm))
    assert fused.weight.dtype == torch.float32 and torch.equal(conv.weight, before)


def test_absorb_activated_shortcut():
    channels, hidden = 3, 12
    dw_conv, pw1, pw2, act = (
        dw(channels, (5, 5)),
        nn.Conv2d(channels, hidden, 1),
        nn.Conv2d(hidden, channels, 1),
        nn.GELU(),
    )
    x = torch.randn(2, channels, 9, 7)
    expected = act(x) + pw2(act(pw1(dw_conv(x))))
    new_dw, new_pw1, new_pw2 = reparam.absorb_activated_shortcut(
        (dw_conv.weight, dw_conv.bias), (pw1.weight, pw1.bias), (pw2.weight, pw2.bias)
    )
    chain = nn.Sequential(
        reparam.conv_from_kernel(*new_dw, groups=channels),
        reparam.conv_from_kernel(*new_pw1),
        act,
        reparam.conv_from_kernel(*new_pw2),
    )
    assert close(chain(x), expected)
    assert new_dw[0].shape == (2 * channels, 1, 5, 5) and new_pw1[0].shape == (channels + hidden, 2 * channels, 1, 1)


# Fuses each saved training-form model in float32 and prints the fused weights' digest, one line per model.
FUSE_SAVED = """import hashlib, sys, timm, torch, repnext
states = torch.load(sys.argv[1])
for name, state in states.items():
    model = timm.create_model(name, num_classes=10).eval()
    model.load_state_dict(state)
    fused = repnext.reparameterize(model).state_dict()
    print(name, hashlib.sha256(b"".join(t.numpy().tobytes() for t in fused.values())).hexdigest())"""


@pytest.mark.xdist_group("other_cpu")  # one worker probes the simulated CPU (other_cpu_env) once
def test_fused_weights_have_the_same_bits_on_another_cpu(tmp_path, other_cpu_env, natively):
    """Fusion is elementwise arithmetic and a few small sums, so the fused float32 weights a fresh clone publishes
    must not depend on the CPU (torch's float32 sqrt did: MKL's vector math rounds its last bit by instruction set)."""
    import os
    import subprocess
    import sys

    import timm

    import repnext  # noqa: F401  registers the variants

    states = {}
    for name in ("repnext_m0", "recnext_m0", "recnext_a0", "recnext_t", "repnext_u3_tiny"):  # every mixer family
        model = randomize_batchnorm(timm.create_model(name, num_classes=10).eval())
        states[name] = {key: value.float() for key, value in model.state_dict().items()}
    torch.save(states, tmp_path / "states.pt")
    simulated = {**os.environ, "OMP_NUM_THREADS": "1", **other_cpu_env}
    command = [sys.executable, "-c", FUSE_SAVED, str(tmp_path / "states.pt")]
    there = subprocess.run(command, env=simulated, check=True, capture_output=True, text=True).stdout
    here = natively(FUSE_SAVED, str(tmp_path / "states.pt"))
    assert len(here.splitlines()) == len(states) and here == there
