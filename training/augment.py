"""Augmentation on batched tensors, suited to 2D short-axis cardiac MR, and random shape corruption of masks.

Spatial augmentation resamples a *context* window (sampled once per slice by the engine's
:func:`myops.preprocessing.sample_windows`, larger than the network input) into the network input window through
one random affine per sample: rotation by any angle (the heart's orientation in a short-axis slice varies with
the patient and the planning), isotropic scale, flips (mirror images are plausible anatomy up to the RV side,
which the networks do not segment) and a translation (the localiser's error). Images are resampled bilinearly
and label maps with nearest neighbour, through the same grid, so they stay aligned.

Misregistration (optional, ``augment.misregistration_mm``): the three sequences are acquired in separate breath
holds, so even after the challenge's alignment the bSSFP and T2 slices can sit a few millimetres off the LGE
slice. Each non-reference sequence of each sample is moved by its own translation, drawn uniformly in a disc, in
the context window before the common affine; the LGE channel and the labels (drawn on the LGE grid) stay put.

Elastic deformation (optional, ``augment.elastic_prob``): a smooth random displacement field, added to the affine
sampling grid of the images and labels alike (the heart's shape varies between patients more than an affine
captures).

Image quality (optional, ``augment.blur_prob`` and ``augment.lowres_prob``), per sample and sequence: Gaussian
blur and simulated low resolution, as scanners and protocols differ.

Intensity augmentation acts per sample and per sequence (bSSFP, LGE and T2 vary independently between
scanners): gamma, scale, shift and mild Gaussian noise, on the z-scored intensities.

Shape corruption (:func:`corrupt_masks`) produces the noisy labels L-ddot of Eq. 5 for the DAE and the perturbed
masks M used to cut the PRSN's candidate regions: erosion/dilation, blobs added or removed at the border, holes,
smooth elastic warps, deletion of a wedge, and softened edges.

All tensors are ``(N, C, H, W)``; random numbers come from an explicit ``torch.Generator`` so runs repeat and
resume exactly.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Optional, Tuple

import torch
import torch.nn.functional as F


def _uniform(n: int, low: float, high: float, gen: torch.Generator) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, generator=gen, dtype=torch.float64)


def _uniform_disc(shape: Tuple[int, ...], radius: float, gen: torch.Generator) -> Tuple[torch.Tensor, torch.Tensor]:
    """Points ``(x, y)`` uniform in a disc of ``radius`` (float64, each of ``shape``); draws the radii, then the
    angles, from ``gen``."""
    r = radius * torch.sqrt(torch.rand(shape, generator=gen, dtype=torch.float64))
    phi = 2 * math.pi * torch.rand(shape, generator=gen, dtype=torch.float64)
    return r * torch.cos(phi), r * torch.sin(phi)


def random_affines(
    n: int,
    out_size: int,
    context_size: int,
    gen: torch.Generator,
    *,
    rotation_deg: float = 0.0,
    scale: float = 0.0,
    flip_prob: float = 0.0,
    shift_px: float = 0.0,
) -> torch.Tensor:
    """Random affine matrices ``theta`` ``(n, 2, 3)`` for :func:`torch.nn.functional.affine_grid`.

    An output pixel at offset ``p`` (pixels, from the output centre; x then y) reads the context pixel at offset
    ``A p + t`` from the context centre, where ``A = R(angle) * s * diag(flip_x, flip_y)`` and ``t`` is drawn
    uniformly in a disc of radius ``shift_px`` (pixels of the context window). Both windows share the pixel
    spacing, so with ``A = I, t = 0`` the output is the central ``out_size`` square of the context.

    Args:
        n: number of matrices.
        out_size: side of the output window (px).
        context_size: side of the context window (px).
        gen: random generator.
        rotation_deg: angles drawn uniformly in ``[-rotation_deg, rotation_deg]``.
        scale: ``s`` drawn uniformly in ``[1 - scale, 1 + scale]``.
        flip_prob: probability of mirroring along each axis.
        shift_px: radius of the translation disc, px.
    """
    angle = torch.deg2rad(_uniform(n, -rotation_deg, rotation_deg, gen))
    s = _uniform(n, 1.0 - scale, 1.0 + scale, gen)
    fx = torch.where(torch.rand(n, generator=gen, dtype=torch.float64) < flip_prob, -1.0, 1.0)
    fy = torch.where(torch.rand(n, generator=gen, dtype=torch.float64) < flip_prob, -1.0, 1.0)
    tx, ty = _uniform_disc((n,), shift_px, gen)
    cos, sin = torch.cos(angle) * s, torch.sin(angle) * s
    k = (out_size - 1) / (context_size - 1)
    theta = torch.zeros(n, 2, 3, dtype=torch.float64)
    theta[:, 0, 0] = cos * fx * k
    theta[:, 0, 1] = -sin * fy * k
    theta[:, 1, 0] = sin * fx * k
    theta[:, 1, 1] = cos * fy * k
    theta[:, 0, 2] = tx * 2.0 / (context_size - 1)
    theta[:, 1, 2] = ty * 2.0 / (context_size - 1)
    return theta.float()


def identity_affines(n: int, out_size: int, context_size: int) -> torch.Tensor:
    """Affines that take the central ``out_size`` square of the context (no augmentation)."""
    k = (out_size - 1) / (context_size - 1)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = k
    theta[:, 1, 1] = k
    return theta


def channel_offsets(n: int, channels: int, gen: torch.Generator, radius_px: float, reference: int = 1) -> torch.Tensor:
    """Random per-channel translations ``(n, channels, 2)`` (x, y; context px), uniform in a disc of ``radius_px``.

    The ``reference`` channel (LGE, whose grid carries the labels) gets ``(0, 0)``. Draws ``2 * n * channels``
    numbers from ``gen``.
    """
    offsets = torch.stack(_uniform_disc((n, channels), radius_px, gen), dim=-1)
    offsets[:, reference] = 0.0
    return offsets.float()


def elastic_displacements(
    n: int,
    out_size: int,
    context_size: int,
    gen: torch.Generator,
    *,
    prob: float,
    magnitude_px: float,
    grid_points: int = 5,
) -> Optional[torch.Tensor]:
    """Smooth random displacement fields for :func:`warp_batch`: ``(n, out, out, 2)`` (x, y), in the sampling
    grid's normalised units, or ``None`` when ``prob`` is 0 (then nothing is drawn, so older runs repeat exactly).

    Each sample is deformed with probability ``prob``: a ``grid_points`` x ``grid_points`` lattice of Gaussian
    vectors (standard deviation ``magnitude_px / 2`` context pixels per axis) is upsampled bicubically to the
    output window, so the deformation is smooth at the scale of the heart (a 128 px window and 5 points: about
    30 px between control points) and most pixels move by less than ``magnitude_px``. Images and labels read
    through the same displaced grid, so they stay aligned. Draws ``n * (2 * grid_points**2 + 1)`` numbers.

    Args:
        n: samples.
        out_size: side of the output window (px).
        context_size: side of the context window the grid samples (px; same spacing as the output).
        gen: random generator.
        prob: probability of deforming a sample, in ``[0, 1]``.
        magnitude_px: scale of the displacement (context px).
        grid_points: control points per side (>= 2).
    """
    if prob <= 0:
        return None
    coarse = torch.randn((n, 2, grid_points, grid_points), generator=gen) * (magnitude_px / 2.0)
    apply = (torch.rand(n, generator=gen) < prob).float()
    coarse = coarse * apply[:, None, None, None]
    field = F.interpolate(coarse, size=(out_size, out_size), mode="bicubic", align_corners=True)
    return (field * (2.0 / (context_size - 1))).permute(0, 2, 3, 1).contiguous()


def _gaussian_kernels(sigma: torch.Tensor, radius: int) -> torch.Tensor:
    """Normalised 1D Gaussian kernels ``(P, 2 * radius + 1)`` for standard deviations ``sigma`` ``(P,)`` (px)."""
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k = torch.exp(-0.5 * (x[None, :] / sigma[:, None].clamp_min(1e-3)) ** 2)
    return k / k.sum(dim=1, keepdim=True)


def augment_resolution(
    images: torch.Tensor, gen: torch.Generator, params: Mapping[str, Any], groups: Optional[torch.Tensor] = None
) -> torch.Tensor:
    """Per sample and per sequence, image quality as it varies between scanners and protocols: Gaussian blur and
    simulated low resolution (downsampled bilinearly, then upsampled back).

    - ``blur_prob``, ``blur_sigma_px`` ``[low, high]``: blur with a standard deviation drawn in that range (px);
    - ``lowres_prob``, ``lowres_factor`` ``[low, high]``: the plane is resampled to ``factor`` times its side
      (``factor`` drawn in that range, < 1) and back.

    Both probabilities default to 0, and then nothing is drawn (older runs repeat exactly).

    Args:
        images: ``(N, C, H, W)``.
        gen: random generator.
        params: the ``augment`` config section.
        groups: ``(C,)`` int64, the draw each channel uses (channels of one sequence at several slices share
            it: a 2.5D sample's neighbour slices come from the same acquisition); default one draw per channel.

    Returns:
        ``(N, C, H, W)``.
    """
    blur_p = float(params.get("blur_prob", 0.0))
    low_p = float(params.get("lowres_prob", 0.0))
    if blur_p <= 0 and low_p <= 0:
        return images
    n, c, h, w = images.shape
    if groups is None:
        groups = torch.arange(c)
    g = int(groups.max()) + 1
    out = images
    if blur_p > 0:
        lo, hi = (float(v) for v in params["blur_sigma_px"])
        sigma = (lo + (hi - lo) * torch.rand((n, g), generator=gen))[:, groups]
        apply = (torch.rand((n, g), generator=gen) < blur_p)[:, groups]
        if bool(apply.any()):
            radius = max(1, math.ceil(3 * hi))
            kernels = _gaussian_kernels(sigma.reshape(-1), radius).to(images.device)  # (N*C, K)
            planes = out.reshape(1, n * c, h, w)
            planes = F.pad(planes, (radius, radius, radius, radius), mode="replicate")
            planes = F.conv2d(planes, kernels[:, None, None, :], groups=n * c)
            planes = F.conv2d(planes, kernels[:, None, :, None], groups=n * c)
            blurred = planes.reshape(n, c, h, w)
            out = torch.where(apply[:, :, None, None].to(images.device), blurred, out)
    if low_p > 0:
        lo, hi = (float(v) for v in params["lowres_factor"])
        factor = (lo + (hi - lo) * torch.rand((n, g), generator=gen))[:, groups]
        apply = (torch.rand((n, g), generator=gen) < low_p)[:, groups]
        if bool(apply.any()):
            out = out.clone()
            for i, j in torch.nonzero(apply, as_tuple=False).tolist():
                f = float(factor[i, j])
                size = (max(2, round(h * f)), max(2, round(w * f)))
                small = F.interpolate(out[i : i + 1, j : j + 1], size=size, mode="bilinear", align_corners=False)
                out[i, j] = F.interpolate(small, size=(h, w), mode="bilinear", align_corners=False)[0, 0]
    return out


def warp_batch(
    images: torch.Tensor,
    labels: Optional[torch.Tensor],
    theta: torch.Tensor,
    out_size: int,
    channel_shift_px: Optional[torch.Tensor] = None,
    displacement: Optional[torch.Tensor] = None,
) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Resample context windows through ``theta``: images bilinear, labels nearest (outside: 0).

    Args:
        images: ``(N, C, S_ctx, S_ctx)`` float.
        labels: ``(N, S_ctx, S_ctx)`` integer class or label-value map, or ``None``.
        theta: ``(N, 2, 3)`` from :func:`random_affines`.
        out_size: output side (px).
        channel_shift_px: optional ``(N, C, 2)`` extra translation (x, y; context px) per image channel, from
            :func:`channel_offsets` (simulated misregistration); the labels follow ``theta`` alone.
        displacement: optional ``(N, out, out, 2)`` smooth deformation added to the sampling grid of the images
            and the labels alike (:func:`elastic_displacements`).

    Returns:
        ``(N, C, out, out)`` images and ``(N, out, out)`` labels (same dtype as given).
    """
    n = images.shape[0]
    grid = F.affine_grid(theta.to(images.device), [n, 1, out_size, out_size], align_corners=True)
    if displacement is not None:
        grid = grid + displacement.to(grid.device)
    if channel_shift_px is None:
        out = F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
    else:
        context = images.shape[-1]
        planes = []
        for c in range(images.shape[1]):
            moved = theta.clone()
            moved[:, :, 2] += channel_shift_px[:, c] * (2.0 / (context - 1))
            grid_c = F.affine_grid(moved.to(images.device), [n, 1, out_size, out_size], align_corners=True)
            if displacement is not None:
                grid_c = grid_c + displacement.to(grid_c.device)
            planes.append(
                F.grid_sample(images[:, c : c + 1], grid_c, mode="bilinear", padding_mode="zeros", align_corners=True)
            )
        out = torch.cat(planes, dim=1)
    out_labels = None
    if labels is not None:
        lab = F.grid_sample(labels[:, None].float(), grid, mode="nearest", padding_mode="zeros", align_corners=True)
        out_labels = lab[:, 0].round().to(labels.dtype)
    return out, out_labels


def augment_intensity(images: torch.Tensor, gen: torch.Generator, params: Mapping[str, Any]) -> torch.Tensor:
    """Per sample and per sequence: gamma, scale, shift, then Gaussian noise, on z-scored intensities.

    Gamma acts on the intensities rescaled to ``[0, 1]`` by each image's own min and max and is mapped back, so
    the contrast changes but the range does not. Each transform is applied with probability
    ``params["intensity_prob"]`` (drawn per sample and sequence).

    Args:
        images: ``(N, C, H, W)``.
        gen: random generator.
        params: the ``augment`` config section.
    """
    n, c = images.shape[:2]
    shape = (n, c, 1, 1)
    p = float(params["intensity_prob"])

    def draw(low: float, high: float, neutral: float) -> torch.Tensor:
        values = low + (high - low) * torch.rand(shape, generator=gen)
        apply = torch.rand(shape, generator=gen) < p
        return torch.where(apply, values, torch.full(shape, neutral)).to(images.device)

    g = float(params["gamma"])
    gamma = torch.exp(draw(-g, g, 0.0))
    lo = images.amin(dim=(2, 3), keepdim=True)
    hi = images.amax(dim=(2, 3), keepdim=True)
    span = (hi - lo).clamp_min(1e-6)
    out = ((images - lo) / span).clamp(0, 1) ** gamma * span + lo
    sc = float(params["intensity_scale"])
    sh = float(params["intensity_shift"])
    out = out * draw(1.0 - sc, 1.0 + sc, 1.0) + draw(-sh, sh, 0.0)
    std = draw(0.0, float(params["noise_std"]), 0.0)
    noise = torch.randn(images.shape, generator=gen).to(images.device)
    return out + noise * std


# -------------------------------------------------------------------------------------------------------------
# Shape corruption (Eq. 5 noise, perturbed candidate masks)
# -------------------------------------------------------------------------------------------------------------
def dilate(mask: torch.Tensor, radius: int) -> torch.Tensor:
    """Binary dilation of ``(N, 1, H, W)`` masks by a square of side ``2 * radius + 1``."""
    if radius <= 0:
        return mask
    return F.max_pool2d(mask, 2 * radius + 1, stride=1, padding=radius)


def erode(mask: torch.Tensor, radius: int) -> torch.Tensor:
    """Binary erosion of ``(N, 1, H, W)`` masks by a square of side ``2 * radius + 1``."""
    if radius <= 0:
        return mask
    return 1.0 - dilate(1.0 - mask, radius)


def _pick_pixel(weights: torch.Tensor, gen: torch.Generator) -> Tuple[int, int]:
    """A random (row, col) with probability proportional to ``weights`` ``(H, W)`` (uniform if all zero)."""
    flat = weights.reshape(-1).double() + 1e-12
    index = int(torch.multinomial(flat, 1, generator=gen))
    return index // weights.shape[1], index % weights.shape[1]


def _ellipse(shape: Tuple[int, int], center: Tuple[int, int], radii: Tuple[float, float], angle: float):
    h, w = shape
    yy = torch.arange(h, dtype=torch.float32)[:, None] - center[0]
    xx = torch.arange(w, dtype=torch.float32)[None, :] - center[1]
    c, s = math.cos(angle), math.sin(angle)
    u = (c * xx + s * yy) / max(radii[0], 0.5)
    v = (-s * xx + c * yy) / max(radii[1], 0.5)
    return (u * u + v * v) <= 1.0


def smooth_warp(mask: torch.Tensor, max_px: float, gen: torch.Generator, soft: bool = False) -> torch.Tensor:
    """Warp ``(N, C, H, W)`` maps with a smooth random displacement field (up to about ``max_px`` pixels)."""
    n, _, h, w = mask.shape
    coarse = torch.randn((n, 2, 5, 5), generator=gen) * (max_px / 2.0)
    disp = F.interpolate(coarse, size=(h, w), mode="bicubic", align_corners=True).permute(0, 2, 3, 1)
    base = F.affine_grid(torch.eye(2, 3).expand(n, 2, 3), [n, 1, h, w], align_corners=True)
    scale = torch.tensor([2.0 / max(w - 1, 1), 2.0 / max(h - 1, 1)])
    grid = (base + disp * scale).to(mask.device)
    mode = "bilinear" if soft else "nearest"
    return F.grid_sample(mask, grid, mode=mode, padding_mode="border", align_corners=True)


def corrupt_masks(mask: torch.Tensor, gen: torch.Generator, noise: Mapping[str, Any]) -> torch.Tensor:
    """Random shape corruption of binary masks (the noisy labels of Eq. 5, or perturbed candidate masks).

    Each corruption is applied per sample with its probability from ``noise`` (missing keys disable it):

    - ``morph_prob``, ``morph_max_px``: erosion or dilation by 1..max px;
    - ``blob_prob``, ``max_blobs``, ``blob_radius_px``: up to ``max_blobs`` ellipses centred on the mask border,
      each added or cut out;
    - ``hole_prob``: one or two small ellipses cut out of the mask's interior;
    - ``warp_prob``, ``warp_px``: smooth elastic warp;
    - ``delete_prob``: a wedge (30-110 degrees, from the mask centroid) deleted.

    Args:
        mask: ``(N, 1, H, W)`` binary float masks.
        gen: random generator.
        noise: probabilities and sizes (see the ``dae.noise`` config section).

    Returns:
        ``(N, 1, H, W)`` binary float masks.
    """
    out = mask.clone()
    n, _, h, w = mask.shape

    def happens(key: str) -> bool:
        return float(torch.rand(1, generator=gen)) < float(noise.get(key, 0.0))

    for i in range(n):
        m = out[i : i + 1]
        if happens("morph_prob"):
            r = int(torch.randint(1, int(noise.get("morph_max_px", 2)) + 1, (1,), generator=gen))
            m = dilate(m, r) if float(torch.rand(1, generator=gen)) < 0.5 else erode(m, r)
        if happens("blob_prob") and m.any():
            band = (dilate(m, 2) - erode(m, 2))[0, 0]
            lo, hi = noise.get("blob_radius_px", (3, 12))
            for _ in range(int(torch.randint(1, int(noise.get("max_blobs", 2)) + 1, (1,), generator=gen))):
                center = _pick_pixel(band, gen)
                radii = (float(_uniform(1, lo, hi, gen)), float(_uniform(1, lo, hi, gen)))
                blob = _ellipse((h, w), center, radii, float(_uniform(1, 0, math.pi, gen))).to(m.device)
                if float(torch.rand(1, generator=gen)) < 0.5:
                    m = torch.maximum(m, blob.float()[None, None])
                else:
                    m = m * (~blob).float()[None, None]
        if happens("hole_prob") and m.any():
            interior = erode(m, 3)[0, 0]
            if interior.any():
                for _ in range(int(torch.randint(1, 3, (1,), generator=gen))):
                    center = _pick_pixel(interior, gen)
                    radii = (float(_uniform(1, 1.5, 6.0, gen)), float(_uniform(1, 1.5, 6.0, gen)))
                    hole = _ellipse((h, w), center, radii, float(_uniform(1, 0, math.pi, gen))).to(m.device)
                    m = m * (~hole).float()[None, None]
        if happens("warp_prob"):
            m = smooth_warp(m, float(noise.get("warp_px", 4.0)), gen)
        if happens("delete_prob") and m.any():
            rows, cols = torch.nonzero(m[0, 0] > 0, as_tuple=True)
            cy, cx = float(rows.float().mean()), float(cols.float().mean())
            yy = torch.arange(h, dtype=torch.float32)[:, None] - cy
            xx = torch.arange(w, dtype=torch.float32)[None, :] - cx
            phi = torch.atan2(yy, xx)
            start = float(_uniform(1, -math.pi, math.pi, gen))
            width = math.radians(float(_uniform(1, 30.0, 110.0, gen)))
            delta = torch.remainder(phi - start, 2 * math.pi)
            m = m * (delta > width).float().to(m.device)[None, None]
        out[i : i + 1] = m
    return out


def soften_masks(mask: torch.Tensor, gen: torch.Generator, prob: float) -> torch.Tensor:
    """With probability ``prob`` per sample, blur a binary ``(N, 1, H, W)`` mask into soft probabilities
    (box blur of 3 or 5 px, then a random sharpening of the logit), like an uncertain network output."""
    out = mask.clone()
    for i in range(mask.shape[0]):
        if float(torch.rand(1, generator=gen)) >= prob:
            continue
        k = 3 if float(torch.rand(1, generator=gen)) < 0.5 else 5
        blurred = F.avg_pool2d(mask[i : i + 1], k, stride=1, padding=k // 2, count_include_pad=False)
        p = blurred.clamp(1e-3, 1 - 1e-3)
        gain = float(_uniform(1, 0.5, 3.0, gen))
        out[i : i + 1] = torch.sigmoid(torch.logit(p) * gain)
    return out
