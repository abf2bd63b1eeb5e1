"""Encoders and split BatchNorm."""
import pytest
import torch
from torch import nn

from cmacc.models import SplitBatchNorm, build_encoder


@pytest.mark.parametrize("shape", [(8, 3, 5), (12, 4, 2, 3, 3)])
def test_split_bn_equals_per_group_batchnorm(shape):
    torch.manual_seed(0)
    s = 4
    x = torch.randn(*shape) * 3 + 1
    sbn = SplitBatchNorm(shape[1], num_splits=s)
    with torch.no_grad():
        sbn.weight.uniform_(0.5, 1.5)
        sbn.bias.uniform_(-1, 1)
    y = sbn(x)
    for j in range(s):  # group j = samples j, j+s, ...
        g = x[j::s]
        dims = [0] + list(range(2, x.dim()))
        mu, var = g.mean(dims, keepdim=True), g.var(dims, unbiased=False, keepdim=True)
        view = [1, -1] + [1] * (x.dim() - 2)
        ref = (g - mu) / torch.sqrt(var + sbn.eps) * sbn.weight.view(view) + sbn.bias.view(view)
        torch.testing.assert_close(y[j::s], ref, rtol=1e-5, atol=1e-5)
    # running stats: mean over groups of the per-group updates
    group_means = torch.stack([x[j::s].mean([0] + list(range(2, x.dim()))) for j in range(s)])
    torch.testing.assert_close(sbn.running_mean, 0.1 * group_means.mean(0), rtol=1e-5, atol=1e-6)


def test_split_bn_one_split_and_eval_are_plain_batchnorm():
    x = torch.randn(6, 5, 7)
    bn, sbn = nn.BatchNorm1d(5), SplitBatchNorm(5, num_splits=1)
    torch.testing.assert_close(sbn(x), bn(x))
    sbn3 = SplitBatchNorm(5, num_splits=3)
    sbn3(x)
    sbn3.eval()
    ref = nn.BatchNorm1d(5).eval()
    ref.load_state_dict(sbn3.state_dict())
    torch.testing.assert_close(sbn3(x), ref(x))
    with pytest.raises(ValueError, match="does not split"):
        SplitBatchNorm(5, num_splits=4).train()(x)


@pytest.mark.parametrize("arch", ["tiny", "r10"])
def test_encoder_shapes_and_normalisation(arch):
    v = build_encoder("video", arch, d=128, bn_splits=2)
    a = build_encoder("audio", arch, d=128, bn_splits=2, with_fc=False)
    qv = v(torch.randn(4, 3, 8, 32, 32))
    qa = a(torch.randn(4, 80, 32))
    assert qv.shape == qa.shape == (4, 128)
    torch.testing.assert_close(qv.norm(dim=1), torch.ones(4))
    torch.testing.assert_close(qa.norm(dim=1), torch.ones(4))
    assert v.fc is not None and a.fc is None
    assert v.eval().features(torch.randn(2, 3, 8, 32, 32)).shape == (2, v.backbone.out_dim)


def test_r18_matches_hara_parameter_count():
    """3D-ResNet-18 of Hara et al. has 33.2M parameters in its backbone."""
    v = build_encoder("video", "r18", with_fc=False)
    n = sum(p.numel() for p in v.backbone.parameters())
    assert 33.1e6 < n < 33.3e6, n


def test_encoder_rejects_wrong_layout():
    with pytest.raises(ValueError, match="80 x T"):
        build_encoder("audio", "tiny")(torch.randn(2, 64, 32))
    with pytest.raises(ValueError, match="B x C x T x H x W"):
        build_encoder("video", "tiny")(torch.randn(2, 3, 32, 32))
    with pytest.raises(ValueError, match="unknown video encoder"):
        build_encoder("video", "r50")


def test_conv3d_stays_fp32_under_cpu_bf16_autocast():
    """oneDNN's bf16 conv3d gives wrong weight gradients on AVX512-BF16 CPUs (resnet3d.Conv3d):
    under CPU bf16 autocast the video encoder's convolutions run in fp32, equal to fp32 ones."""
    from cmacc.models.resnet3d import Conv3d
    torch.manual_seed(0)
    conv = Conv3d(32, 32, 3, 1, 1, bias=False)
    x = torch.randn(32, 32, 2, 4, 4)
    ref = torch.nn.functional.conv3d(x, conv.weight, None, 1, 1)
    g_ref, = torch.autograd.grad((ref * ref).sum(), conv.weight)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = conv(x)
    assert y.dtype == torch.float32
    g, = torch.autograd.grad((y * y).sum(), conv.weight)
    torch.testing.assert_close(y, ref, rtol=0, atol=0)
    torch.testing.assert_close(g, g_ref, rtol=1e-6, atol=1e-5)
    with torch.autocast("cpu", dtype=torch.float16):  # other precisions are plain nn.Conv3d
        assert conv(x).dtype == torch.float16
