"""Losses of the cascade: soft Dice (Eq. 1, 6, 7-9, 12), the DAE's reconstruction error (Eq. 5), cross-entropy.

``soft_dice_loss`` is ``1 - mean_k Dice_k`` over the foreground classes ``k >= 1``, with the sums taken over the
whole batch ("batch Dice"): ``Dice_k = (2 sum p_k t_k + eps) / (sum p_k + sum t_k + eps)``. Empty-mask policy: a
class absent from the whole batch and not predicted scores ``Dice = 1`` (``eps / eps``); absent but predicted
scores close to 0 (false positives are penalised); with ``eps = 1e-5`` this matches nnU-Net's choice.

``per_image=True`` takes the sums over each image instead and averages the Dice over the (image, class) pairs
where the class is present, as the challenge averages per-case Dice: a small scar weighs as much as a large one.
An absent class has no Dice gradient worth the name (``eps / (sum p + eps)`` is flat once anything is predicted),
so it is left out; the cross-entropy term of :func:`dice_ce_loss` is what penalises its false positives.

``nested_region_dice_loss`` scores B_Main's four classes (0 background, 1 normal myocardium, 2 edema, 3 scar) as
the nested regions the challenge scores instead: the wall ``{1, 2, 3}``, scar + edema ``{2, 3}`` and scar
``{3}``, each region's probability being the sum of its classes' (nnU-Net's "region-based training"). Confusing
edema with scar then costs nothing in the scar + edema term, as in the metric.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

DICE_EPS = 1e-5


def soft_dice_loss(
    logits: torch.Tensor, target: torch.Tensor, eps: float = DICE_EPS, per_image: bool = False
) -> torch.Tensor:
    """``1 - mean foreground soft Dice`` (batch Dice, or per-image Dice with ``per_image``).

    Args:
        logits: ``(N, K, H, W)``, K >= 2 classes.
        target: ``(N, H, W)`` class indices in ``[0, K)``.

    Returns:
        scalar in ``[0, 1]``.
    """
    probs = torch.softmax(logits.float(), dim=1)
    return dice_loss_from_probs(probs, target, eps, per_image)


def dice_loss_from_probs(
    probs: torch.Tensor, target: torch.Tensor, eps: float = DICE_EPS, per_image: bool = False
) -> torch.Tensor:
    """:func:`soft_dice_loss` on probabilities ``(N, K, H, W)`` instead of logits."""
    onehot = F.one_hot(target.long(), probs.shape[1]).permute(0, 3, 1, 2).to(probs.dtype)
    return _dice_loss_over_channels(probs[:, 1:], onehot[:, 1:], eps, per_image)


def nested_region_dice_loss(
    logits: torch.Tensor, target: torch.Tensor, eps: float = DICE_EPS, per_image: bool = False
) -> torch.Tensor:
    """``1 - mean Dice`` over the nested regions ``{k >= 1}``, ``{k >= 2}``, ..., ``{K - 1}``.

    Args:
        logits: ``(N, K, H, W)``, K >= 2 classes, ordered so that each region is a tail ``{k >= j}``.
        target: ``(N, H, W)`` class indices in ``[0, K)``.

    Returns:
        scalar in ``[0, 1]``; batch or per-image Dice with the same conventions as :func:`soft_dice_loss`.
    """
    probs = torch.softmax(logits.float(), dim=1)
    # tail sums: channel j - 1 holds P(class >= j), j = 1 .. K-1
    regions = probs[:, 1:].flip(1).cumsum(1).flip(1)
    k = probs.shape[1]
    region_idx = torch.arange(1, k, device=target.device).view(1, k - 1, 1, 1)
    truth = (target.long().unsqueeze(1) >= region_idx).to(probs.dtype)  # (N, K-1, H, W)
    return _dice_loss_over_channels(regions, truth, eps, per_image)


def _dice_loss_over_channels(probs: torch.Tensor, truth: torch.Tensor, eps: float, per_image: bool) -> torch.Tensor:
    """``1 - mean Dice`` over every channel of ``(N, C, H, W)`` soft predictions and 0/1 targets."""
    if not per_image:
        dims = (0, 2, 3)
        inter = (probs * truth).sum(dims)
        denom = probs.sum(dims) + truth.sum(dims)
        dice = (2 * inter + eps) / (denom + eps)
        return 1.0 - dice.mean()
    inter = (probs * truth).sum((2, 3))  # (N, C)
    predicted = probs.sum((2, 3))
    present = truth.sum((2, 3))
    dice = (2 * inter + eps) / (predicted + present + eps)
    counted = (present > 0).to(dice.dtype)
    # mean of (1 - Dice) over the counted pairs; 0 when the batch holds background only (no host sync on a GPU)
    return ((1.0 - dice) * counted).sum() / counted.sum().clamp(min=1.0)


def cross_entropy(
    logits: torch.Tensor,
    target: torch.Tensor,
    weight: Optional[torch.Tensor] = None,
    pixel_weights: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Mean pixel-wise cross-entropy, ``logits`` ``(N, K, H, W)``, ``target`` ``(N, H, W)``.

    With class weights ``weight`` ``(K,)`` and/or ``pixel_weights`` ``(N, H, W)`` (positive), the weighted mean
    ``sum w * ce / sum w`` with ``w = pixel_weight * weight[target]``: the loss keeps its scale and the heavier
    pixels take a larger share of it (class weights alone: PyTorch's weighted mean).
    """
    if pixel_weights is None:
        return F.cross_entropy(logits.float(), target.long(), weight=weight)
    ce = F.cross_entropy(logits.float(), target.long(), reduction="none")
    w = pixel_weights.to(ce.dtype)
    if weight is not None:
        w = w * weight.to(ce.dtype)[target.long()]
    return (ce * w).sum() / w.sum()


def border_band(a: torch.Tensor, b: torch.Tensor, radius_px: int) -> torch.Tensor:
    """Pixels within ``radius_px`` (chessboard distance) of both masks ``a`` and ``b``: the band around their
    shared border, on both sides of it, e.g. the endocardial border between the LV blood pool and the wall.

    Args:
        a, b: ``(N, H, W)`` boolean masks.
        radius_px: band half-width in pixels, >= 1.

    Returns:
        ``(N, H, W)`` boolean.
    """
    return _square_dilate(a, int(radius_px)) & _square_dilate(b, int(radius_px))


def _square_dilate(mask: torch.Tensor, radius_px: int) -> torch.Tensor:
    """``(N, H, W)`` boolean masks dilated by a ``(2 r + 1)``-pixel square (chessboard distance ``<= r``)."""
    return F.max_pool2d(mask[:, None].float(), 2 * radius_px + 1, stride=1, padding=radius_px)[:, 0] > 0


def dice_ce_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    ce_weight: float = 1.0,
    per_image: bool = False,
    nested_regions: bool = False,
    pixel_weights: Optional[torch.Tensor] = None,
    class_weights: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """``soft_dice_loss + ce_weight * cross_entropy`` (the paper's Dice, plus cross-entropy when
    ``ce_weight > 0``; cross-entropy steadies early training on small, imbalanced structures). With
    ``nested_regions`` the Dice term is :func:`nested_region_dice_loss` instead; ``pixel_weights`` ``(N, H, W)``
    and ``class_weights`` ``(K,)`` weigh the cross-entropy term only."""
    dice = nested_region_dice_loss if nested_regions else soft_dice_loss
    loss = dice(logits, target, per_image=per_image)
    if ce_weight > 0:
        loss = loss + ce_weight * cross_entropy(logits, target, weight=class_weights, pixel_weights=pixel_weights)
    return loss


def _dilate(mask: torch.Tensor, square: bool) -> torch.Tensor:
    """One dilation step of ``(N, H, W)`` boolean masks by a 3x3 square or a 3x3 cross."""
    if square:
        return _square_dilate(mask, 1)
    p = F.pad(mask[:, None].float(), (1, 1, 1, 1))[:, 0]
    h, w = mask.shape[-2:]
    shifted = torch.stack([p[:, 1:-1, :w], p[:, 1:-1, 2:], p[:, :h, 1:-1], p[:, 2:, 1:-1], p[:, 1:-1, 1:-1]])
    return shifted.amax(0) > 0


def signed_distance_px(mask: torch.Tensor, max_px: int) -> torch.Tensor:
    """Signed distance to the border of ``(N, H, W)`` boolean masks, in pixels, capped at ``max_px``.

    Outside the mask: the number of dilation steps that reach the pixel (1 next to the mask); inside: minus the
    number of erosion steps the pixel survives (0 on the mask's own border pixels). The steps alternate a 3x3
    square and a 3x3 cross, an octagonal approximation of the Euclidean distance (within 8 %). An image whose mask
    is empty is ``max_px`` everywhere; one whose mask fills it, ``-max_px`` inside after the cap.

    Returns:
        ``(N, H, W)`` float32, in ``[-max_px, max_px]``.
    """
    if int(max_px) < 1:
        raise ValueError(f"max_px must be >= 1, got {max_px!r}")
    mask = mask.bool()
    outside = torch.full(mask.shape, float(max_px), device=mask.device)
    inside = torch.zeros(mask.shape, device=mask.device)
    grown, shrunk = mask, mask
    for step in range(1, int(max_px) + 1):
        square = step % 2 == 1
        nxt = _dilate(grown, square)
        outside[nxt & ~grown] = float(step)
        grown = nxt
        shrunk = ~_dilate(~shrunk, square)
        inside[shrunk] = -float(step)
        if bool(grown.all()) and not bool(shrunk.any()):
            break  # every pixel has its distance: more steps would change nothing
    return torch.where(mask, inside, outside)


def boundary_loss(logits: torch.Tensor, distance: torch.Tensor) -> torch.Tensor:
    """Kervadec et al.'s boundary loss for a two-class output: ``mean(p_1 * phi)`` over pixels, ``p_1`` the
    foreground probability and ``phi`` the signed distance to the true border (:func:`signed_distance_px`). A false
    positive ``d`` pixels outside the truth costs ``d`` times what one next to it costs; pixels inside are
    rewarded by their depth. Its minimum is the true mask; it is negative there, so it is added to a Dice term,
    never used alone.

    Args:
        logits: ``(N, 2, H, W)``.
        distance: ``(N, H, W)`` pixels.
    """
    probs = torch.softmax(logits.float(), dim=1)[:, 1]
    return (probs * distance.to(probs.dtype)).mean()


def reconstruction_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Eq. 5: mean squared error ``||D(E(L-ddot)) - L||^2`` between the reconstruction's softmax and the
    one-hot clean label (averaged over pixels and classes)."""
    probs = torch.softmax(logits.float(), dim=1)
    onehot = F.one_hot(target.long(), probs.shape[1]).permute(0, 3, 1, 2).to(probs.dtype)
    return F.mse_loss(probs, onehot)
