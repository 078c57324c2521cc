"""Deep supervision of a decoder (nnU-Net's practice; not in the paper): a training-only wrapper.

B_Main's decoder (:class:`myops.networks.Decoder`) produces one map per resolution level, finest last; only the
finest reaches the network's head. :class:`DeepSupervision` adds a 1 x 1 head to each of the ``levels`` next
coarser outputs, so that those levels are trained against the labels at their own resolution. The heads live in
the wrapper, not in the network: the exported module (``wrapper.net``) is the engine's network, unchanged in
architecture, size and inference cost. :func:`deep_supervision_loss` combines the losses with nnU-Net's weights
``2**-i`` for the output at ``1 / 2**i`` resolution, normalised to sum to 1.
"""

from __future__ import annotations

from typing import Any, Callable, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from myops.networks import Decoder


class DeepSupervision(nn.Module):
    """``net`` with 1 x 1 heads on the ``levels`` coarser outputs of its ``decoder``.

    Args:
        net: the network being trained (its forward is unchanged).
        decoder: the decoder inside ``net`` whose block outputs are supervised.
        out_channels: classes of each head (those of the network's own head).
        levels: how many of the decoder's coarser outputs get a head, 1 .. (decoder levels - 1); the output at
            ``1 / 2**i`` resolution for ``i = 1 .. levels``.

    ``forward(x)`` -> ``(net(x), aux)``, ``aux[i - 1]`` the logits ``(N, out_channels, H / 2**i, W / 2**i)``.
    """

    def __init__(self, net: nn.Module, decoder: Decoder, out_channels: int, levels: int) -> None:
        super().__init__()
        blocks = list(decoder.blocks)  # coarsest first; blocks[-1] makes the full-resolution map
        if isinstance(levels, bool) or not isinstance(levels, int) or not 1 <= levels <= len(blocks) - 1:
            raise ValueError(f"deep supervision levels must be an integer in [1, {len(blocks) - 1}], got {levels!r}")
        self.net = net
        self.levels = levels
        # blocks[-1 - i] makes the map at 1 / 2**i resolution
        supervised = [blocks[-1 - i] for i in range(1, levels + 1)]
        self.heads = nn.ModuleList(nn.Conv2d(_out_channels(b), out_channels, 1) for b in supervised)
        self._captured: List[Optional[torch.Tensor]] = [None] * levels
        self._hooks = [block.register_forward_hook(self._capture(i)) for i, block in enumerate(supervised)]

    def release(self) -> nn.Module:
        """``net`` without this wrapper's hooks (the module a stage exports and returns); the wrapper is done."""
        for handle in self._hooks:
            handle.remove()
        self._hooks = []
        self._captured = [None] * self.levels  # maps a bare forward of ``net`` left here are let go too
        return self.net

    def _capture(self, i: int) -> Callable[..., None]:
        def hook(_module: nn.Module, _inputs: Any, output: torch.Tensor) -> None:
            self._captured[i] = output

        return hook

    def forward(self, x: torch.Tensor) -> Tuple[Any, List[torch.Tensor]]:
        if not self._hooks:
            raise RuntimeError("deep supervision: the wrapper was released")
        self._captured = [None] * self.levels
        out = self.net(x)
        if any(t is None for t in self._captured):
            raise RuntimeError("deep supervision: a supervised decoder block did not run")
        aux = [head(t) for head, t in zip(self.heads, self._captured)]
        self._captured = [None] * self.levels  # no reference to this batch's graph outlives the step
        return out, aux


def _out_channels(block: nn.Module) -> int:
    convs = [m for m in block.modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise ValueError("deep supervision: a decoder block without a convolution")
    return int(convs[-1].out_channels)


def downsample_labels(target: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Class indices ``(N, H, W)`` taken by nearest neighbour at ``size`` ``(h, w)`` -> ``(N, h, w)``, long.

    Centre-aligned (``nearest-exact``, as nnU-Net's order-0 resize): coarse pixel ``j`` of a factor ``f`` takes
    full pixel ``floor((j + 0.5) f)``, the one nearest the centre of the ``f`` pixels it pools; plain ``nearest``
    would take ``j f``, (f - 1) / 2 pixels off (1.5 px at 1/4)."""
    return F.interpolate(target[:, None].float(), size=tuple(size), mode="nearest-exact")[:, 0].round().long()


def deep_supervision_weights(levels: int) -> List[float]:
    """nnU-Net's weights of the outputs at ``1, 1/2, .., 1/2**levels`` resolution: ``2**-i``, summing to 1."""
    raw = [2.0**-i for i in range(levels + 1)]
    total = sum(raw)
    return [w / total for w in raw]


def deep_supervision_loss(
    full: torch.Tensor,
    aux: Sequence[torch.Tensor],
    target: torch.Tensor,
    loss: Callable[[torch.Tensor, torch.Tensor, Optional[torch.Tensor]], torch.Tensor],
    pixel_weights: Optional[torch.Tensor] = None,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """The weighted loss over the full-resolution logits and the coarser ones.

    Args:
        full: logits ``(N, K, H, W)``.
        aux: logits ``(N, K, H / 2**i, W / 2**i)`` for ``i = 1 .. len(aux)``.
        target: class indices ``(N, H, W)``.
        loss: ``loss(logits, target, pixel_weights)`` -> scalar, the loss of one resolution.
        pixel_weights: ``(N, H, W)`` or None; taken by nearest neighbour like the labels.

    Returns:
        ``(combined, full_loss)``: the weighted mean (:func:`deep_supervision_weights`) and the full-resolution
        term alone (for the log, comparable with a run without deep supervision).
    """
    weights = deep_supervision_weights(len(aux))
    full_loss = loss(full, target, pixel_weights)
    combined = weights[0] * full_loss
    for w, logits in zip(weights[1:], aux):
        size = logits.shape[-2:]
        pw = None
        if pixel_weights is not None:
            pw = F.interpolate(pixel_weights[:, None].float(), size=tuple(size), mode="nearest-exact")[:, 0]
        combined = combined + w * loss(logits, downsample_labels(target, size), pw)
    return combined, full_loss
