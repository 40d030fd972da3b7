"""Tests for cmpl_ray.models: shapes, no temporal down-sampling, errors, counters.

Kept CPU-cheap (batch 1, 32x32 crops) so the file runs in well under a minute.
"""

import pytest
import torch
from torch import nn

from cmpl_ray.models import MODELS, Bottleneck, Plain3D, ResNet3D, build_model, count_flops, count_macs, count_params

NUM_CLASSES = 7
WIDTHS = (1.0, 0.5, 0.25, 0.125)
# Final feature dim at width 1: basic blocks end at 512 channels, bottlenecks at 2048.
BASE_DIM = {"r10": 512, "r18": 512, "r34": 512, "r50": 2048, "tiny": 128}


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(min(threads, 2))
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("arch", ["r10", "r18", "r34", "r50"])
def test_shapes_keep_time(arch, width):
    model = build_model(arch, NUM_CLASSES, width=width).eval()
    dim = max(1, round(BASE_DIM[arch] * width))
    assert model.feature_dim == dim
    with torch.no_grad():
        for frames in (8, 16):
            x = torch.randn(1, 3, frames, 32, 32)  # (B, C, T, H, W)
            fmap = model.feature_map(x)
            # T is never down-sampled; space shrinks by 32.
            assert fmap.shape == (1, dim, frames, 1, 1)
            assert model.forward_features(x).shape == (1, dim)
            logits = model(x)
            assert logits.shape == (1, NUM_CLASSES)
            assert torch.isfinite(logits).all()


def test_time_kept_at_every_stage():
    model = build_model("r18", NUM_CLASSES, width=0.125).eval()
    x = torch.randn(2, 3, 16, 64, 64)
    expected = {"stem": 16, "res2": 16, "res3": 8, "res4": 4, "res5": 2}
    with torch.no_grad():
        for name, size in expected.items():
            x = getattr(model, name)(x)
            assert x.shape[2:] == (16, size, size), name


def test_r50_matches_table_a4_structure():
    model = build_model("r50", 400)
    assert model.stem[0].kernel_size == (5, 7, 7) and model.stem[0].stride == (1, 2, 2)
    assert model.stem[3].kernel_size == (1, 3, 3) and model.stem[3].stride == (1, 2, 2)
    assert [len(s) for s in (model.res2, model.res3, model.res4, model.res5)] == [3, 4, 6, 3]
    for block in model.modules():
        if isinstance(block, Bottleneck):
            convs = [m for m in block.branch.modules() if isinstance(m, nn.Conv3d)]
            assert [c.kernel_size for c in convs] == [(3, 1, 1), (1, 3, 3), (1, 1, 1)]
            assert all(c.stride[0] == 1 for c in convs)  # no temporal stride
            assert torch.all(block.last_bn.weight == 0)  # zero-init residual branch
    assert model.fc.in_features == 2048 and model.fc.out_features == 400
    # No duplicated BN entries in the checkpoint because of `last_bn`.
    assert not any("last_bn" in k for k in model.state_dict())


def test_basic_block_is_temporal_then_spatial():
    model = build_model("r10", NUM_CLASSES)
    block = model.res3[0]
    convs = [m for m in block.branch.modules() if isinstance(m, nn.Conv3d)]
    assert [c.kernel_size for c in convs] == [(3, 1, 1), (1, 3, 3)]
    assert convs[1].stride == (1, 2, 2)
    assert isinstance(block.shortcut, nn.Sequential)  # 1x1x1 projection on shape change
    assert isinstance(model.res2[0].shortcut, nn.Identity)


def test_tiny_forward_backward():
    model = build_model("tiny", 10)
    x = torch.randn(8, 3, 8, 64, 64)  # (B, C, T, H, W)
    logits = model(x)
    assert logits.shape == (8, 10)
    loss = nn.functional.cross_entropy(logits, torch.randint(0, 10, (8,)))
    loss.backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert model.stem[0].weight.grad.abs().sum() > 0
    assert model.feature_map(x).shape[2] == 8


def test_models_registry_and_factories():
    assert set(MODELS) == {"r10", "r18", "r34", "r50", "tiny", "plain4", "naive", "naive_t"}
    for name, factory in MODELS.items():
        model = factory(3, width=0.125, dropout=0.0)
        assert isinstance(model, Plain3D if name in ("plain4", "naive", "naive_t") else ResNet3D)
        assert model.fc.out_features == 3


def test_plain4_mixes_time_in_every_layer_and_trains():
    """The architecture baseline: 3x3x3 kernels throughout, T/4 and H/16 at the end, gradients reach layer 1."""
    model = build_model("plain4", NUM_CLASSES, width=0.5, dropout=0.0)
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv3d)]
    assert len(convs) == 4 and all(c.kernel_size == (3, 3, 3) for c in convs)
    x = torch.randn(2, 3, 8, 32, 32)  # (B, C, T, H, W)
    assert model.feature_map(x).shape == (2, 64, 2, 2, 2)
    loss = torch.nn.functional.cross_entropy(model(x), torch.tensor([0, 1]))
    loss.backward()
    assert convs[0].weight.grad.abs().sum() > 0


def test_naive_t_pools_time_after_block_two_only():
    """Same convs as ``naive``; the first pool keeps T, the next three halve it (16 frames -> 2)."""
    model = build_model("naive_t", NUM_CLASSES, width=1.0, dropout=0.2)
    pools = [m for m in model.modules() if isinstance(m, torch.nn.MaxPool3d)]
    assert [p.kernel_size for p in pools] == [(1, 2, 2), (2, 2, 2), (2, 2, 2), (2, 2, 2)]
    x = torch.randn(2, 3, 16, 32, 32)
    assert model.feature_map(x).shape == (2, 128, 2, 2, 2)
    assert model.feature_map(torch.randn(2, 3, 4, 32, 32)).shape == (2, 128, 1, 2, 2)  # a short clip ends at 1
    aux = build_model("naive_t", NUM_CLASSES, width=0.25)
    assert [m.out_channels for m in aux.modules() if isinstance(m, torch.nn.Conv3d)] == [4, 8, 16, 32]


def test_naive_floor_is_the_issues_network():
    """4 x (3x3x3 stride-1 conv, BN, ReLU, 1x2x2 max-pool), 16-32-64-128 channels, T kept, H/16 at the end."""
    model = build_model("naive", NUM_CLASSES, width=1.0, dropout=0.3)
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv3d)]
    pools = [m for m in model.modules() if isinstance(m, torch.nn.MaxPool3d)]
    assert [c.out_channels for c in convs] == [16, 32, 64, 128]
    assert all(c.kernel_size == (3, 3, 3) and c.stride == (1, 1, 1) and c.padding == (1, 1, 1) for c in convs)
    assert len(pools) == 4 and all(p.kernel_size == (1, 2, 2) for p in pools)
    x = torch.randn(2, 3, 16, 32, 32)
    assert model.feature_map(x).shape == (2, 128, 16, 2, 2)
    assert model.dropout.p == 0.3 and model.fc.in_features == 128
    loss = torch.nn.functional.cross_entropy(model(x), torch.tensor([0, 1]))
    loss.backward()
    assert convs[0].weight.grad.abs().sum() > 0


def test_unknown_arch_lists_valid_names():
    with pytest.raises(ValueError) as err:
        build_model("r101", NUM_CLASSES)
    msg = str(err.value)
    assert "r101" in msg
    for name in MODELS:
        assert name in msg


@pytest.mark.parametrize("width", [0, -0.5, float("nan"), float("inf")])
def test_bad_width_raises(width):
    with pytest.raises(ValueError, match="width"):
        build_model("r18", NUM_CLASSES, width=width)


def test_very_small_width_clamps_channels_to_one():
    model = build_model("r10", NUM_CLASSES, width=1e-3)
    assert model.stem[0].out_channels == 1 and model.feature_dim == 1
    assert model(torch.randn(1, 3, 4, 32, 32)).shape == (1, NUM_CLASSES)


def test_width_scales_channels():
    assert build_model("r50", NUM_CLASSES, width=0.25).stem[0].out_channels == 16
    assert build_model("r50", NUM_CLASSES, width=0.125).feature_dim == 256
    assert build_model("r18", NUM_CLASSES, width=1 / 3).feature_dim == round(512 / 3)


def test_count_params_and_flops():
    model = build_model("r18", NUM_CLASSES, width=0.25)
    assert count_params(model) == sum(p.numel() for p in model.parameters()) > 0
    f8 = count_flops(model, (3, 8, 64, 64))
    f16 = count_flops(model, (1, 3, 16, 64, 64))
    assert f8 > 0
    # No temporal down-sampling: every conv scales with T, so compute doubles (the fc head doesn't).
    assert f16 / f8 == pytest.approx(2.0, rel=0.01)
    assert count_macs(model, (3, 8, 64, 64)) == f8 // 2
    assert count_flops(model, (2, 3, 8, 64, 64)) == 2 * f8


def test_count_flops_matches_real_run_and_leaves_model_alone():
    from torch.utils.flop_counter import FlopCounterMode

    model = build_model("tiny", 5).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    flops = count_flops(model, (3, 8, 32, 32))
    assert model.training
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k  # no BN running-stat update, no device move
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model.eval()(torch.randn(1, 3, 8, 32, 32))
    assert flops == counter.get_total_flops()


def test_count_flops_bad_shape():
    with pytest.raises(ValueError, match="input_shape"):
        count_flops(build_model("tiny", 5), (8, 32, 32))


def test_r50_reference_size():
    # Table A4 R50 at 400 classes: ~33M params (slow-only R50 with 3x1x1 in every block).
    assert 32e6 < count_params(build_model("r50", 400)) < 34e6
