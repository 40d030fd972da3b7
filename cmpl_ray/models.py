"""3D-ResNets used by CMPL (Xu et al., CVPR 2022, Appendix D, Table A4).

The paper inflates a 2D ResNet into a "slow-only" style 3D network:

* ``conv1`` is 5x7x7 with stride (1, 2, 2), followed by a 1x3x3 max-pool with
  stride (1, 2, 2);
* every residual block starts with a temporal 3x1x1 conv and otherwise keeps
  2D-style (1xkxk) kernels, so the model is cheap but still mixes time;
* there is **no temporal down-sampling anywhere**, to keep long-range
  temporal fidelity (T frames in -> T steps in the res5 feature map).

Depth and width of the primary network are shrunk to get the auxiliary
network (e.g. R50 x1/4), so every variant is built from the same generator
with a ``width`` multiplier applied to the stem and all stages.

Basic blocks (R10/R18/R34) are not given in the paper; we keep the paper's
"temporal conv first, then spatial conv" factorisation instead of a full
3x3x3 kernel: ``(3x1x1, C) -> (1x3x3, C, spatial stride)``, with a 1x1x1
projection shortcut when the shape changes.  Bottlenecks follow Table A4:
``(3x1x1, C) -> (1x3x3, C, spatial stride) -> (1x1x1, 4C)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import nn

__all__ = [
    "ResNet3D",
    "BasicBlock",
    "Bottleneck",
    "MODELS",
    "build_model",
    "count_params",
    "count_flops",
    "count_macs",
    "r10",
    "r18",
    "r34",
    "r50",
    "tiny",
    "Plain3D",
    "plain4",
    "naive",
    "naive_t",
]


def _scale(channels: int, width: float) -> int:
    """Width-multiplied channel count, never below 1 (e.g. R50 x1/8 stem -> 8)."""
    return max(1, int(round(channels * width)))


def _check_args(width: float, num_classes: int) -> None:
    if not (isinstance(width, (int, float)) and math.isfinite(width) and width > 0):
        raise ValueError(f"width must be a finite number > 0 (channels = round(c * width) >= 1), got width={width!r}")
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes!r}")


def _conv_bn(cin: int, cout: int, kernel: Sequence[int], stride: Sequence[int] = (1, 1, 1)) -> nn.Sequential:
    """Conv3d (no bias, BN follows) + BN with 'same' padding along each axis."""
    pad = tuple(k // 2 for k in kernel)
    return nn.Sequential(nn.Conv3d(cin, cout, tuple(kernel), tuple(stride), pad, bias=False), nn.BatchNorm3d(cout))


class _Residual(nn.Module):
    """Shared residual logic: ``relu(branch(x) + shortcut(x))``.

    The last BN of ``branch`` is exposed as ``last_bn`` so that it can be
    zero-initialised: each block then starts as identity, which makes deep
    nets train stably from scratch on small labelled sets (Goyal et al. 2017).
    """

    def __init__(self, branch: nn.Sequential, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.branch = branch
        # Projection only when the identity cannot be added (channels or H/W change).
        self.shortcut = (
            _conv_bn(cin, cout, (1, 1, 1), (1, stride, stride)) if stride != 1 or cin != cout else nn.Identity()
        )
        self.relu = nn.ReLU(inplace=True)

    @property
    def last_bn(self) -> nn.BatchNorm3d:
        # A property (not an attribute) so the BN is not registered twice in state_dict.
        return self.branch[-1][1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, Cin, T, H, W) -> (B, Cout, T, H/s, W/s)
        return self.relu(self.branch(x) + self.shortcut(x))


class BasicBlock(_Residual):
    """(3x1x1, C) -> (1x3x3, C, stride (1,s,s)); see module docstring for why."""

    expansion = 1

    def __init__(self, cin: int, planes: int, cout: int, stride: int = 1) -> None:
        branch = nn.Sequential(
            nn.Sequential(*_conv_bn(cin, planes, (3, 1, 1)), nn.ReLU(inplace=True)),
            _conv_bn(planes, cout, (1, 3, 3), (1, stride, stride)),
        )
        super().__init__(branch, cin, cout, stride)


class Bottleneck(_Residual):
    """Table A4 block: (3x1x1, C) -> (1x3x3, C, stride (1,s,s)) -> (1x1x1, 4C)."""

    expansion = 4

    def __init__(self, cin: int, planes: int, cout: int, stride: int = 1) -> None:
        branch = nn.Sequential(
            nn.Sequential(*_conv_bn(cin, planes, (3, 1, 1)), nn.ReLU(inplace=True)),
            nn.Sequential(*_conv_bn(planes, planes, (1, 3, 3), (1, stride, stride)), nn.ReLU(inplace=True)),
            _conv_bn(planes, cout, (1, 1, 1)),
        )
        super().__init__(branch, cin, cout, stride)


class ResNet3D(nn.Module):
    """Slow-only 3D-ResNet without temporal down-sampling (Table A4).

    Input ``(B, 3, T, H, W)`` float clips; output ``(B, num_classes)`` logits.
    Spatial size shrinks by 32 overall (stem 2, pool 2, res3-5 2 each); T is kept.
    """

    def __init__(
        self,
        block: type[_Residual],
        layers: Sequence[int],
        num_classes: int,
        width: float = 1.0,
        dropout: float = 0.5,
        base_channels: int = 64,
        stem_kernel: Sequence[int] = (5, 7, 7),
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        _check_args(width, num_classes)
        self.width = float(width)
        stem_ch = _scale(base_channels, width)
        self.stem = nn.Sequential(
            *_conv_bn(in_channels, stem_ch, stem_kernel, (1, 2, 2)),
            nn.ReLU(inplace=True),
            nn.MaxPool3d((1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1)),
        )
        cin, stages = stem_ch, []
        for i, (n_blocks, stride) in enumerate(zip(layers, (1, 2, 2, 2))):  # res2..res5
            planes = _scale(base_channels * 2**i, width)
            cout = _scale(base_channels * 2**i * block.expansion, width)
            blocks = []
            for j in range(n_blocks):
                blocks.append(block(cin, planes, cout, stride if j == 0 else 1))
                cin = cout
            stages.append(nn.Sequential(*blocks))
        self.res2, self.res3, self.res4, self.res5 = stages
        self.feature_dim = cin
        self.pool = nn.AdaptiveAvgPool3d(1)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(cin, num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv3d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm3d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        for m in self.modules():
            if isinstance(m, _Residual):
                nn.init.zeros_(m.last_bn.weight)  # block starts as identity
        # Small head init: near-uniform initial predictions, so early pseudo-labels are not overconfident.
        nn.init.normal_(self.fc.weight, std=0.01)
        nn.init.zeros_(self.fc.bias)

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        """res5 output before pooling: (B, 3, T, H, W) -> (B, D, T, H/32, W/32)."""
        x = self.stem(x)  # (B, C0, T, H/4, W/4)
        x = self.res2(x)  # (B, C2, T, H/4, W/4)
        x = self.res3(x)  # (B, C3, T, H/8, W/8)
        x = self.res4(x)  # (B, C4, T, H/16, W/16)
        return self.res5(x)  # (B, D, T, H/32, W/32)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Globally (T, H, W) average-pooled features: (B, 3, T, H, W) -> (B, D)."""
        return self.pool(self.feature_map(x)).flatten(1)  # (B, D)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits: (B, 3, T, H, W) -> (B, num_classes)."""
        return self.fc(self.dropout(self.forward_features(x)))  # (B, num_classes)


def r10(num_classes: int, width: float = 1.0, dropout: float = 0.5) -> ResNet3D:
    """3D-ResNet10: basic blocks [1, 1, 1, 1]."""
    return ResNet3D(BasicBlock, (1, 1, 1, 1), num_classes, width, dropout)


def r18(num_classes: int, width: float = 1.0, dropout: float = 0.5) -> ResNet3D:
    """3D-ResNet18: basic blocks [2, 2, 2, 2]."""
    return ResNet3D(BasicBlock, (2, 2, 2, 2), num_classes, width, dropout)


def r34(num_classes: int, width: float = 1.0, dropout: float = 0.5) -> ResNet3D:
    """3D-ResNet34: basic blocks [3, 4, 6, 3]."""
    return ResNet3D(BasicBlock, (3, 4, 6, 3), num_classes, width, dropout)


def r50(num_classes: int, width: float = 1.0, dropout: float = 0.5) -> ResNet3D:
    """3D-ResNet50 (Table A4): bottlenecks [3, 4, 6, 3]; width=0.25 is the default auxiliary net."""
    return ResNet3D(Bottleneck, (3, 4, 6, 3), num_classes, width, dropout)


def tiny(num_classes: int, width: float = 1.0, dropout: float = 0.5) -> ResNet3D:
    """CPU/test-sized member of the family: R10 layout, 16 base channels, 3x5x5 stem.

    Keeps every structural property (temporal-first blocks, no temporal
    down-sampling, /32 spatial) so code paths exercised in tests match the
    real models, at a small fraction of the cost.
    """
    return ResNet3D(BasicBlock, (1, 1, 1, 1), num_classes, width, dropout, base_channels=16, stem_kernel=(3, 5, 5))


class _FramePool(nn.MaxPool3d):
    """Max-pool whose temporal kernel shrinks to the frames left, so a short clip (4 frames through three 2x2x2
    pools) ends at one frame instead of raising; at the frame counts the presets use it is a plain MaxPool3d."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kt, kh, kw = self.kernel_size  # Plain3D always passes (t, 2, 2)
        if x.shape[2] >= kt:
            return super().forward(x)
        return nn.functional.max_pool3d(x, (x.shape[2], kh, kw))


class Plain3D(nn.Module):
    """A plain stack of 3x3x3 conv-BN-ReLU layers (C3D style), the architecture baseline for ``tiny``.

    Why it is here: an outside audit found that a 4-layer 3x3x3 CNN through the same loop beat the tiny
    ResNet on one synthetic set and lost on another, so the recipe study compares the two
    (docs/recipe-study.md). Unlike the ResNets, every layer mixes time (3x3x3) and the last two halve T.
    Input ``(B, 3, T, H, W)``; output ``(B, num_classes)``.
    """

    def __init__(
        self,
        num_classes: int,
        width: float = 1.0,
        dropout: float = 0.5,
        channels: Sequence[int] = (16, 32, 64, 128),
        t_strides: Sequence[int] = (1, 1, 2, 2),
        pool: bool = False,
    ) -> None:
        """``pool``: down-sample with a 1x2x2 max-pool after each stride-1 conv (``naive``) instead of a
        strided conv (``plain4``); ``t_strides`` then apply to the pool."""
        super().__init__()
        _check_args(width, num_classes)
        self.width = float(width)
        layers, cin = [], 3
        for c, st in zip(channels, t_strides):
            cout = _scale(c, width)
            if pool:
                layers += [*_conv_bn(cin, cout, (3, 3, 3)), nn.ReLU(inplace=True), _FramePool((st, 2, 2))]
            else:
                layers += [*_conv_bn(cin, cout, (3, 3, 3), (st, 2, 2)), nn.ReLU(inplace=True)]
            cin = cout
        self.stem = nn.Sequential(*layers[:3])  # first conv-BN-ReLU (the ResNets' ``stem`` name)
        self.body = nn.Sequential(*layers[3:])
        self.feature_dim = cin
        self.pool = nn.AdaptiveAvgPool3d(1)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(cin, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv3d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        nn.init.normal_(self.fc.weight, std=0.01)
        nn.init.zeros_(self.fc.bias)

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, T, H, W) -> (B, D, T / prod(t_strides), H/16, W/16)."""
        return self.body(self.stem(x))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, T, H, W) -> (B, D)."""
        return self.pool(self.feature_map(x)).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits: (B, 3, T, H, W) -> (B, num_classes)."""
        return self.fc(self.dropout(self.forward_features(x)))


def plain4(num_classes: int, width: float = 1.0, dropout: float = 0.5) -> Plain3D:
    """4 layers of 3x3x3 conv (16-32-64-128 channels x width), spatial stride 2 each, temporal stride 2 in the
    last two: about the cost of ``tiny`` at 16x56x56."""
    return Plain3D(num_classes, width, dropout)


def naive(num_classes: int, width: float = 1.0, dropout: float = 0.5) -> Plain3D:
    """The few-label floor: 4 x (3x3x3 conv, BN, ReLU, 1x2x2 max-pool), 16-32-64-128 channels x width, no
    temporal down-sampling, global average pool, linear.

    Why it is here: an untuned network of this kind, trained supervised on 10 labeled videos per class,
    beat the tiny ResNet recipe by 30 points on a held-out set; every few-label comparison reports it as the
    floor a semi-supervised result must clear (docs/fewlabel-floor.md)."""
    return Plain3D(num_classes, width, dropout, t_strides=(1, 1, 1, 1), pool=True)


def naive_t(num_classes: int, width: float = 1.0, dropout: float = 0.5) -> Plain3D:
    """``naive`` with 2x2x2 max-pools after blocks 2-4 (16 input frames reach the head as 2).

    Why: ``naive`` keeps all 16 frames through every block, and its training step costs 1.4x this one on
    2 CPU threads (191 against 133 ms at 8 x 16 x 56 x 56, ``scripts/model_stats.py --step-batch 8``). The
    first two blocks still see every frame, so blinking and speed cues are resolved before time is pooled."""
    return Plain3D(num_classes, width, dropout, t_strides=(1, 2, 2, 2), pool=True)


MODELS: dict[str, Callable[..., nn.Module]] = {
    "r10": r10,
    "r18": r18,
    "r34": r34,
    "r50": r50,
    "tiny": tiny,
    "plain4": plain4,
    "naive": naive,
    "naive_t": naive_t,
}


def build_model(arch: str, num_classes: int, width: float = 1.0, dropout: float = 0.5) -> nn.Module:
    """Build a model by name; raises ValueError listing valid names for an unknown ``arch``."""
    try:
        factory = MODELS[arch]
    except (KeyError, TypeError):
        raise ValueError(f"unknown arch {arch!r}; valid archs: {', '.join(sorted(MODELS))}") from None
    return factory(num_classes, width=width, dropout=dropout)


def count_params(model: nn.Module) -> int:
    """Total number of parameters (trainable or not; BN running stats are buffers, not counted)."""
    return sum(p.numel() for p in model.parameters())


def count_flops(model: nn.Module, input_shape: Sequence[int]) -> int:
    """FLOPs of one forward pass, as counted by ``torch.utils.flop_counter.FlopCounterMode``.

    ``input_shape`` is ``(C, T, H, W)`` (batch 1 is assumed) or ``(B, C, T, H, W)``.
    FlopCounterMode counts 2 FLOPs per multiply-accumulate of convs/linears and
    ignores BN/ReLU/pooling; papers (incl. CMPL's "#FLOPs") usually report
    multiply-accumulates, i.e. ``count_flops(...) // 2`` -- see ``count_macs``.

    The pass runs on the ``meta`` device with meta copies of the weights, so
    no real compute or memory is spent and ``model`` is left untouched.
    """
    from torch.func import functional_call
    from torch.utils.flop_counter import FlopCounterMode

    shape = tuple(int(s) for s in input_shape)
    if len(shape) == 4:
        shape = (1, *shape)
    if len(shape) != 5:
        raise ValueError(f"input_shape must be (C, T, H, W) or (B, C, T, H, W), got {tuple(input_shape)}")
    state = {k: torch.empty_like(v, device="meta") for k, v in [*model.named_parameters(), *model.named_buffers()]}
    was_training = model.training
    model.eval()  # eval BN: no running-stat updates
    try:
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            functional_call(model, state, (torch.empty(shape, device="meta"),))
    finally:
        model.train(was_training)
    return int(counter.get_total_flops())


def count_macs(model: nn.Module, input_shape: Sequence[int]) -> int:
    """Multiply-accumulates (what papers call "FLOPs"): ``count_flops // 2``."""
    return count_flops(model, input_shape) // 2
