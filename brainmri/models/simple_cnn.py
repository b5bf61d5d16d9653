"""The plain "simple CNN" baseline of the seed experiments, registered with timm.

Conv-MaxPool stacks followed by two hidden dense layers. Registered as timm models so
that checkpoints of it save and load with timm's own Hub functions like any other model.
"""

from __future__ import annotations

import torch
from timm.models import register_model
from torch import nn

_ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid}

# Convolutions per pooled stage; with the 3 dense layers these make 7 and 10 weight layers.
_DEPTHS = {7: (1, 1, 1, 1), 10: (2, 2, 2, 1)}

_DEFAULT_CFG = {
    "input_size": (3, 128, 128),
    "interpolation": "bilinear",
    "crop_pct": 1.0,
    "crop_mode": "center",
    "mean": (0.5, 0.5, 0.5),
    "std": (0.5, 0.5, 0.5),
    "num_classes": 4,
    "first_conv": "features.0.conv",
    "classifier": "head.fc",
    "fixed_input_size": False,
}


class ConvBlock(nn.Module):
    """Conv -> BatchNorm -> activation."""

    def __init__(self, in_chs: int, out_chs: int, kernel_size: int, padding: bool, act: str):
        super().__init__()
        self.conv = nn.Conv2d(in_chs, out_chs, kernel_size, padding=kernel_size // 2 if padding else 0)
        self.bn = nn.BatchNorm2d(out_chs)
        self.act = _ACTIVATIONS[act]()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


class DenseHead(nn.Module):
    """Two hidden dense layers and the classifier, after pooling to a fixed 4x4 grid."""

    def __init__(self, in_chs: int, hidden: int, num_classes: int, act: str, drop_rate: float):
        super().__init__()
        # Pooling to 4x4 keeps the dense layers' size independent of the input size.
        self.pool = nn.AdaptiveAvgPool2d(4)
        self.hidden = nn.Sequential(
            nn.Flatten(),
            nn.Linear(in_chs * 16, hidden),
            _ACTIVATIONS[act](),
            nn.Dropout(drop_rate),
            nn.Linear(hidden, hidden // 2),
            _ACTIVATIONS[act](),
            nn.Dropout(drop_rate),
        )
        self.fc = nn.Linear(hidden // 2, num_classes) if num_classes else nn.Identity()

    def forward(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.hidden(self.pool(x))
        return x if pre_logits else self.fc(x)


class SimpleCNN(nn.Module):
    """Conv-MaxPool stages then two hidden dense layers.

    Args:
        depth: 7 or 10 weight layers in all (convolutions plus the three dense layers).
        kernel_size: convolution kernel size.
        padding: "same" padding when True, none when False.
        act: "relu", "tanh" or "sigmoid".
        width: channels of the first stage; doubled at each later stage.
    """

    def __init__(
        self,
        depth: int = 7,
        num_classes: int = 4,
        in_chans: int = 3,
        kernel_size: int = 3,
        padding: bool = True,
        act: str = "relu",
        width: int = 16,
        hidden: int = 128,
        drop_rate: float = 0.3,
    ):  # no **kwargs: a misspelt model_args key in the registry fails here rather than building the default
        super().__init__()
        if depth not in _DEPTHS:
            raise ValueError(f"depth must be one of {sorted(_DEPTHS)}, got {depth}")
        if act not in _ACTIVATIONS:
            raise ValueError(f"act must be one of {sorted(_ACTIVATIONS)}, got {act!r}")
        self.num_classes = num_classes
        layers: list[nn.Module] = []
        chs = in_chans
        for stage, n_convs in enumerate(_DEPTHS[depth]):
            out_chs = width * 2**stage
            for _ in range(n_convs):
                layers.append(ConvBlock(chs, out_chs, kernel_size, padding, act))
                chs = out_chs
            layers.append(nn.MaxPool2d(2))
        self.features = nn.Sequential(*layers)
        self.num_features = self.head_hidden_size = chs
        self.head = DenseHead(chs, hidden, num_classes, act, drop_rate)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)  # (B, C, H/16, W/16)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return self.head(x, pre_logits=pre_logits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def get_classifier(self) -> nn.Module:
        return self.head.fc

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        self.num_classes = num_classes
        self.head.fc = nn.Linear(self.head.fc.in_features, num_classes) if num_classes else nn.Identity()


def _create(variant: str, depth: int, pretrained: bool, **kwargs) -> SimpleCNN:
    from timm.models import build_model_with_cfg

    # There are no ImageNet weights for this baseline: pretrained only means "load the
    # file or Hub repo named in pretrained_cfg", which is how local-dir:/hf-hub: loading works.
    return build_model_with_cfg(
        SimpleCNN,
        variant,
        pretrained,
        pretrained_cfg=kwargs.pop("pretrained_cfg", None) or dict(_DEFAULT_CFG),
        depth=depth,
        feature_cfg=dict(flatten_sequential=True),
        **kwargs,
    )


@register_model
def simple_cnn_7(pretrained: bool = False, **kwargs) -> SimpleCNN:
    """Four Conv-MaxPool stages and three dense layers: 7 weight layers."""
    return _create("simple_cnn_7", 7, pretrained, **kwargs)


@register_model
def simple_cnn_10(pretrained: bool = False, **kwargs) -> SimpleCNN:
    """Seven convolutions in four pooled stages and three dense layers: 10 weight layers."""
    return _create("simple_cnn_10", 10, pretrained, **kwargs)
