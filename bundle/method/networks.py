"""The four-output V-Net used by PLGDF.

Architecture (``docs/method_notes.md``, "Network"; after the MC-Net / URPC V-Net):

- Encoder stages of 1, 2, 3, 3, 3 convolutions (3x3x3 conv + BatchNorm + ReLU) at widths
  ``n_filters * (1, 2, 4, 8, 16)``, separated by 2x2x2 stride-2 convolutions (+ BN + ReLU).
- Decoder stages of 3, 3, 2, 1 convolutions at widths ``n_filters * (8, 4, 2, 1)``, each preceded
  by a 2x2x2 stride-2 transposed convolution (+ BN + ReLU) that halves the channels; skips are
  *added*.
- ``Dropout3d(0.5)`` on the bottleneck output and before the final 1x1x1 convolution.
- P1: main head at full resolution. P2, P3, P4: 1x1x1 heads on the decoder stages at 1/2, 1/4
  and 1/8 resolution, each behind its own ``Dropout3d`` (0.3, 0.2, 0.1) that touches only the
  auxiliary head, up-sampled to full size (x2 trilinear, x4 and x8 nearest).

In ``train()`` mode the network returns ``[P1, P2, P3, P4]`` (logits, each ``(B, C, H, W, D)``);
in ``eval()`` mode it returns P1 alone as a tensor, so that MONAI inferers, TorchScript export and
MONAI Label use it unchanged. A TorchScript-compiled network returns P1 in both modes (``torch.jit.script``
compiles only that path, as one return type).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["PLGDFVNet", "count_parameters"]


def _conv_stage(n_convs: int, in_channels: int, out_channels: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(n_convs):
        layers += [
            nn.Conv3d(in_channels if i == 0 else out_channels, out_channels, kernel_size=3, padding=1),
            nn.BatchNorm3d(out_channels),
            nn.ReLU(inplace=True),
        ]
    return nn.Sequential(*layers)


def _down(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv3d(in_channels, out_channels, kernel_size=2, stride=2),
        nn.BatchNorm3d(out_channels),
        nn.ReLU(inplace=True),
    )


def _up(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.ConvTranspose3d(in_channels, out_channels, kernel_size=2, stride=2),
        nn.BatchNorm3d(out_channels),
        nn.ReLU(inplace=True),
    )


class PLGDFVNet(nn.Module):
    """V-Net with one main and three auxiliary (pyramid) outputs.

    Args:
        in_channels: number of input channels. Defaults to 1.
        out_channels: number of classes, background included. Defaults to 2.
        n_filters: base width; stage widths are ``n_filters * (1, 2, 4, 8, 16)``. Defaults to 16.
        dropout: whether the Dropout3d layers are active in training mode. Defaults to True.

    Input spatial sizes must be divisible by 16 (four stride-2 down-samplings).
    """

    aux_dropout = (0.3, 0.2, 0.1)

    def __init__(self, in_channels: int = 1, out_channels: int = 2, n_filters: int = 16, dropout: bool = True):
        super().__init__()
        if in_channels < 1 or out_channels < 2 or n_filters < 1:
            raise ValueError(
                f"need in_channels >= 1, out_channels >= 2 and n_filters >= 1, "
                f"got {in_channels}, {out_channels}, {n_filters}"
            )
        self.in_channels, self.out_channels, self.n_filters = in_channels, out_channels, n_filters
        f = n_filters
        self.enc1, self.down1 = _conv_stage(1, in_channels, f), _down(f, 2 * f)
        self.enc2, self.down2 = _conv_stage(2, 2 * f, 2 * f), _down(2 * f, 4 * f)
        self.enc3, self.down3 = _conv_stage(3, 4 * f, 4 * f), _down(4 * f, 8 * f)
        self.enc4, self.down4 = _conv_stage(3, 8 * f, 8 * f), _down(8 * f, 16 * f)
        self.enc5 = _conv_stage(3, 16 * f, 16 * f)
        self.up5, self.dec6 = _up(16 * f, 8 * f), _conv_stage(3, 8 * f, 8 * f)
        self.up6, self.dec7 = _up(8 * f, 4 * f), _conv_stage(3, 4 * f, 4 * f)
        self.up7, self.dec8 = _up(4 * f, 2 * f), _conv_stage(2, 2 * f, 2 * f)
        self.up8, self.dec9 = _up(2 * f, f), _conv_stage(1, f, f)
        p = 1.0 if dropout else 0.0
        self.bottleneck_dropout = nn.Dropout3d(0.5 * p)
        self.out_dropout = nn.Dropout3d(0.5 * p)
        self.head1 = nn.Conv3d(f, out_channels, kernel_size=1)
        self.head2 = nn.Sequential(nn.Dropout3d(self.aux_dropout[0] * p), nn.Conv3d(2 * f, out_channels, 1))
        self.head3 = nn.Sequential(nn.Dropout3d(self.aux_dropout[1] * p), nn.Conv3d(4 * f, out_channels, 1))
        self.head4 = nn.Sequential(nn.Dropout3d(self.aux_dropout[2] * p), nn.Conv3d(8 * f, out_channels, 1))

    def forward(self, x: torch.Tensor):
        """``x``: ``(B, in_channels, H, W, D)``. Returns ``[P1, P2, P3, P4]`` in training mode, P1 in eval mode."""
        x1 = self.enc1(x)
        x2 = self.enc2(self.down1(x1))
        x3 = self.enc3(self.down2(x2))
        x4 = self.enc4(self.down3(x3))
        x5 = self.bottleneck_dropout(self.enc5(self.down4(x4)))
        x6 = self.dec6(self.up5(x5) + x4)
        x7 = self.dec7(self.up6(x6) + x3)
        x8 = self.dec8(self.up7(x7) + x2)
        x9 = self.dec9(self.up8(x8) + x1)
        p1 = self.head1(self.out_dropout(x9))
        if torch.jit.is_scripting() or not self.training:  # TorchScript (export) keeps the P1 path only
            return p1
        p2 = F.interpolate(self.head2(x8), scale_factor=2.0, mode="trilinear", align_corners=False)
        p3 = F.interpolate(self.head3(x7), scale_factor=4.0, mode="nearest")
        p4 = F.interpolate(self.head4(x6), scale_factor=8.0, mode="nearest")
        return [p1, p2, p3, p4]

    @torch.jit.unused
    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """``nn.Module.load_state_dict`` that first names the differing settings of a checkpoint of another width,
        class count or channel count (``bundle.engine.files.check_state_dict``), whoever loads it: the bundle's
        loaders, MONAI's ``CheckpointLoader``, MONAI Label."""
        own = self.state_dict()
        shapes_differ = any(k in own and tuple(v.shape) != tuple(own[k].shape) for k, v in state_dict.items())
        if shapes_differ or (strict and set(state_dict) != set(own)):
            from bundle.engine.files import check_state_dict

            check_state_dict(state_dict, self, "the checkpoint")
        return super().load_state_dict(state_dict, strict=strict, assign=assign)


def count_parameters(module: nn.Module) -> int:
    """Number of trainable parameters of ``module``."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)
