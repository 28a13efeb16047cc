"""Turning coarse patch scores into image-sized anomaly maps: bilinear upsampling and Gaussian blur."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from detectors.errors import InputError


def gaussian_kernel1d(sigma: float, device: torch.device | None = None) -> torch.Tensor:
    radius = max(1, int(4.0 * sigma + 0.5))  # truncate at 4 sigma, as scipy and anomalib do
    x = torch.arange(-radius, radius + 1, dtype=torch.float32, device=device)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


def gaussian_blur(maps: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable blur of (N, H, W) maps with reflect padding; sigma <= 0 is a no-op."""
    if sigma <= 0:
        return maps
    k = gaussian_kernel1d(sigma, maps.device).to(maps.dtype)
    r = (k.numel() - 1) // 2
    x = maps[:, None]
    pad_mode = "reflect" if min(maps.shape[-2:]) > r else "replicate"
    x = F.conv2d(F.pad(x, (r, r, 0, 0), mode=pad_mode), k.view(1, 1, 1, -1))
    x = F.conv2d(F.pad(x, (0, 0, r, r), mode=pad_mode), k.view(1, 1, -1, 1))
    return x[:, 0]


def to_image_maps(patch_scores: torch.Tensor, size: tuple[int, int], sigma: float) -> torch.Tensor:
    """(N, h, w) patch scores -> (N, H, W) maps, upsampled bilinearly then blurred."""
    up = F.interpolate(patch_scores[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
    return gaussian_blur(up, sigma)


def pooled_features(feats: dict[str, torch.Tensor], layers: tuple[str, ...], avg_kernel: int) -> torch.Tensor:
    """Locally averaged multi-level features, upsampled to the finest level and concatenated.

    The average counts the zero padding, as PatchCore's paper and anomalib do (``AvgPool2d(3, 1, 1)``).
    Averaging over the valid neighbours only leaves border patches less smoothed than interior ones, so
    on textures the borders of good images became PatchCore's highest scores (brick image AUROC 0.68 ->
    0.88, gravel 0.62 -> 0.87 with the padding counted; README, PatchCore on textures).
    """
    target = feats[layers[0]].shape[-2:]
    out = []
    for name in layers:
        f = feats[name]
        if avg_kernel > 1:
            f = F.avg_pool2d(f, avg_kernel, stride=1, padding=avg_kernel // 2, count_include_pad=True)
        if f.shape[-2:] != target:
            f = F.interpolate(f, size=target, mode="bilinear", align_corners=False)
        out.append(f)
    return torch.cat(out, dim=1)


def parse_layers(layers: str) -> tuple[str, ...]:
    """Configs keep layers as one flat string (``"layer2+layer3"``) so they log as a single param."""
    parts = tuple(p.strip() for p in layers.replace(",", "+").split("+") if p.strip())
    if not parts:
        raise InputError(f"layers {layers!r} names no backbone level; use e.g. 'layer2+layer3'")
    return parts


def parse_numbers(text: str, n: int, option: str, kind: type) -> list:
    """One positive number per level from a flat option such as ``"200+400+900"`` (configs stay flat)."""
    parts = [p for p in text.replace(",", "+").split("+") if p.strip()]
    try:
        values = [kind(p) for p in parts]
    except ValueError:
        values = []
    if len(values) != n or any(v <= 0 for v in values):
        raise InputError(f"{option}={text!r}: give {n} positive {kind.__name__}s joined by '+', one per level")
    return values


def semi_orthogonal(channels: int, out_channels: int, seed: int) -> torch.Tensor:
    """A fixed, seeded (out_channels, channels) map with orthonormal rows or columns (distances kept up to
    scale); the identity when the counts agree. For a teacher's features of another width (EfficientAD,
    Uninformed Students)."""
    if channels == out_channels:
        return torch.eye(channels)
    gen = torch.Generator().manual_seed(seed)
    a = torch.randn(max(channels, out_channels), min(channels, out_channels), generator=gen, dtype=torch.float64)
    q, _ = torch.linalg.qr(a)  # orthonormal columns
    return (q if out_channels > channels else q.T).float()


class ChannelStats:
    """Streaming per-channel mean and std of (B, C, h, w) batches, summed in float64."""

    def __init__(self) -> None:
        self.n, self.s1, self.s2 = 0, 0.0, 0.0

    def add(self, t: torch.Tensor) -> None:
        t = t.double()
        self.n += t.shape[0] * t.shape[2] * t.shape[3]
        self.s1 = self.s1 + t.sum((0, 2, 3))
        self.s2 = self.s2 + (t * t).sum((0, 2, 3))

    def result(self) -> tuple[torch.Tensor, torch.Tensor]:
        mean = self.s1 / self.n
        var = (self.s2 / self.n - mean * mean).clamp_min(0) * self.n / max(self.n - 1, 1)
        return mean.float(), var.sqrt().clamp_min(1e-6).float()


def ssim_map(a: torch.Tensor, b: torch.Tensor, window: int = 11, sigma: float = 1.5, pad: bool = True) -> torch.Tensor:
    """Per-pixel structural similarity of (B, C, H, W) images in [0, 1], Gaussian-weighted over ``window``
    pixels: (B, C, H, W) with reflect padding, or the valid (B, C, H - window + 1, ...) part without.

    Always float32, even inside the training loop's bfloat16 autocast: the variances are differences of
    near-equal local means, which bfloat16's 8 bits of mantissa would turn into noise."""
    with torch.autocast(a.device.type, enabled=False):
        a, b = a.float(), b.float()
        h = window // 2
        k1 = gaussian_kernel1d(sigma, a.device)
        if h > len(k1) // 2:
            raise ValueError(f"ssim_map: window {window} is wider than sigma {sigma}'s 4-sigma kernel")
        k1 = k1[len(k1) // 2 - h : len(k1) // 2 + h + 1]  # the window's part of the 4-sigma kernel
        k1 = k1 / k1.sum()
        c = a.shape[1]
        kernel = (k1[:, None] * k1[None, :])[None, None].repeat(c, 1, 1, 1)

        def blur(t: torch.Tensor) -> torch.Tensor:
            return F.conv2d(F.pad(t, (h, h, h, h), mode="reflect") if pad else t, kernel, groups=c)

        mu_a, mu_b = blur(a), blur(b)
        var_a = blur(a * a) - mu_a**2
        var_b = blur(b * b) - mu_b**2
        cov = blur(a * b) - mu_a * mu_b
        c1, c2 = 0.01**2, 0.03**2
        return ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))


__all__ = [
    "ChannelStats",
    "gaussian_blur",
    "gaussian_kernel1d",
    "parse_layers",
    "parse_numbers",
    "pooled_features",
    "semi_orthogonal",
    "ssim_map",
    "to_image_maps",
]
