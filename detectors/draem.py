"""DRAEM (Zavrtanik et al., ICCV 2021): learn to segment synthetic anomalies, no pretrained backbone.

Two networks train jointly from scratch on good images. The reconstructive encoder-decoder sees an
image with a generated anomaly and must return the original good image (L2 + SSIM loss); the
discriminative U-Net sees that input beside its reconstruction and segments the anomaly (focal
loss). At test time the discriminative net's anomaly probability is the map, and the image score
is the maximum of that map average-pooled over ``smooth_kernel`` px, as in the paper.

Anomalies come from ``detectors.synthesis`` (Perlin mask + DRAEM blend, shared with SegAD's defect
generator). The paper takes its textures from DTD; there is no DTD here (and nothing is ever
downloaded), so the texture is *another good training image*, rotated, flipped, shifted and
colour-jittered so it does not line up with the image it is pasted into.

Defaults and where they differ from the paper:

* ``steps=4000`` at ``batch_size=8`` (the paper: 700 epochs, tens of thousands of steps). A step
  at 256 px and the default widths is about 1.8 TFLOP (forward + backward, both networks), some
  10-20 ms in bfloat16 on a current GPU, plus about 30 ms of numpy anomaly synthesis on the CPU
  (estimates, not measured on a GPU): a fit of a few minutes. On a CPU it is tens of seconds a
  step, so DRAEM is a GPU detector. The lr drops x0.2 at 80 % and 90 % of the steps, as in the
  paper (a LambdaLR doing what the paper's MultiStepLR does).
* ``base_width=64``, ``disc_width=32`` (the paper: 128 and 64): half the channels, a quarter of the
  compute, which suits the short schedule; set 128 / 64 for the paper's networks.
* Both networks downsample 4 times (the paper's discriminative net 5), so any image whose sides
  are divisible by 16 works.
* The smoothing average ignores the padding (``count_include_pad=False``), so an anomaly at the
  image border is not scored lower than the same anomaly in the middle.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Self

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from detectors.backbones import to_unit
from detectors.base import DetectorOutput, ImageBatch, as_image_tensor
from detectors.errors import InputError
from detectors.maps import gaussian_blur, ssim_map
from detectors.synthesis import draem_blend, draw_beta, jitter_texture, perlin_mask
from detectors.training import TrainableConfig, TrainableDetector, load_modules, modules_state, sample_batch

_DOWNSAMPLING = 16  # 4 poolings in each network


@dataclass(frozen=True)
class DraemConfig(TrainableConfig):
    batch_size: int = 8  # the paper's
    steps: int = 4000
    learning_rate: float = 1e-4
    base_width: int = 64  # reconstructive net: base_width * (1, 2, 4, 8, 8) channels
    disc_width: int = 32  # discriminative U-Net: disc_width * (1, 2, 4, 8, 8) channels
    anomaly_probability: float = 0.5  # share of training images that get a generated anomaly
    focal_gamma: float = 2.0
    smooth_kernel: int = 21  # image score: max of the map average-pooled over this many px
    blur_sigma: float = 0.0  # the maps are already pixel-level; > 0 smooths them anyway

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise InputError(f"draem: steps must be at least 1, got {self.steps}")
        if self.base_width < 1 or self.disc_width < 1:
            raise InputError(
                f"draem: base_width and disc_width must be positive, got {self.base_width}, {self.disc_width}"
            )
        if not 0.0 <= self.anomaly_probability <= 1.0:
            raise InputError(f"draem: anomaly_probability must be in [0, 1], got {self.anomaly_probability}")
        if self.smooth_kernel < 1 or self.smooth_kernel % 2 == 0:
            raise InputError(f"draem: smooth_kernel must be a positive odd number, got {self.smooth_kernel}")
        if self.focal_gamma < 0:
            raise InputError(f"draem: focal_gamma must be >= 0, got {self.focal_gamma}")


# --- networks ---------------------------------------------------------------------------------
def _block(cin: int, cout: int) -> nn.Sequential:
    """Two 3x3 conv + BN + ReLU, DRAEM's basic unit."""
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


def _up(cin: int, cout: int) -> nn.Sequential:
    """Bilinear 2x upsampling then conv + BN + ReLU (no transposed conv: no checkerboard artefacts)."""
    return nn.Sequential(
        nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
        nn.Conv2d(cin, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


def _widths(w: int) -> list[int]:
    return [w, 2 * w, 4 * w, 8 * w, 8 * w]


class _Encoder(nn.Module):
    """Five blocks, a 2x max-pool between each: features at strides 1, 2, 4, 8, 16."""

    def __init__(self, cin: int, width: int) -> None:
        super().__init__()
        ws = _widths(width)
        self.blocks = nn.ModuleList(_block(i, o) for i, o in zip([cin, *ws[:-1]], ws, strict=True))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = []
        for k, block in enumerate(self.blocks):
            x = block(x if k == 0 else F.max_pool2d(x, 2))
            feats.append(x)
        return feats


class ReconstructiveNet(nn.Module):
    """Encoder-decoder without skips: the bottleneck forces it to rebuild normal appearance only."""

    def __init__(self, width: int) -> None:
        super().__init__()
        ws = _widths(width)
        self.encoder = _Encoder(3, width)
        # 16 -> 8 -> 4 -> 2 -> 1 stride, halving the channels as in the encoder, mirrored.
        self.ups = nn.ModuleList(_up(ws[k + 1], ws[k + 1]) for k in reversed(range(4)))
        self.blocks = nn.ModuleList(_block(ws[k + 1], ws[k]) for k in reversed(range(4)))
        self.out = nn.Conv2d(ws[0], 3, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.encoder(x)[-1]
        for up, block in zip(self.ups, self.blocks, strict=True):
            z = block(up(z))
        return self.out(z)


class DiscriminativeNet(nn.Module):
    """U-Net over (input, reconstruction), 6 channels in, 2-class logits out at full resolution."""

    def __init__(self, width: int) -> None:
        super().__init__()
        ws = _widths(width)
        self.encoder = _Encoder(6, width)
        self.ups = nn.ModuleList(_up(ws[k + 1], ws[k + 1]) for k in reversed(range(4)))
        self.blocks = nn.ModuleList(_block(ws[k + 1] + ws[k], ws[k]) for k in reversed(range(4)))
        self.out = nn.Conv2d(ws[0], 2, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = self.encoder(x)
        z = feats[-1]
        for skip, up, block in zip(reversed(feats[:-1]), self.ups, self.blocks, strict=True):
            z = block(torch.cat([up(z), skip], dim=1))
        return self.out(z)


# --- losses -----------------------------------------------------------------------------------
def ssim(a: torch.Tensor, b: torch.Tensor, window: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Mean structural similarity of two (B, C, H, W) batches in [0, 1], Gaussian window, no padding
    (float32 even under autocast; ``maps.ssim_map``)."""
    return ssim_map(a, b, window, sigma, pad=False).mean()


def focal_loss(logits: torch.Tensor, target: torch.Tensor, gamma: float) -> torch.Tensor:
    """Mean per-pixel focal loss of (B, 2, H, W) logits against a (B, H, W) 0/1 target.

    The focal term down-weights the many easy normal pixels, so the few anomalous ones still count.
    """
    logp = F.log_softmax(logits, dim=1).gather(1, target[:, None].long())[:, 0]
    return -((1 - logp.exp()).clamp_min(0) ** gamma * logp).mean()


# --- anomaly synthesis ------------------------------------------------------------------------
def synthesise(
    images: np.ndarray, index: np.ndarray, pool: np.ndarray, probability: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """DRAEM training inputs: ``images`` (B, H, W, 3) in [0, 1], a ``probability`` share with an anomaly.

    ``index[i]`` is the position of ``images[i]`` in ``pool`` (all good images); the texture is drawn
    from the other pool images. Returns the inputs and their (B, H, W) bool masks.
    """
    out, masks = images.copy(), np.zeros(images.shape[:3], bool)
    shape = images.shape[1:3]
    for i, j in enumerate(index):
        if rng.random() >= probability:
            continue
        other = int(rng.integers(len(pool) - 1))
        other += other >= j  # any good image but this one
        mask = perlin_mask(shape, rng)
        texture = jitter_texture(pool[other], shape, rng)
        out[i] = draem_blend(images[i], texture, mask, draw_beta(rng))
        masks[i] = mask
    return out, masks


# --- the detector -----------------------------------------------------------------------------
class Draem(TrainableDetector):
    name = "draem"
    config_class = DraemConfig
    config: DraemConfig

    def _to_unit(self, x: torch.Tensor) -> torch.Tensor:
        """Detector inputs are ImageNet-normalised; DRAEM (no pretrained backbone) works on [0, 1] pixels."""
        return to_unit(x)

    def _build(self) -> None:
        torch.manual_seed(self.config.seed)
        self.reconstructive_ = ReconstructiveNet(self.config.base_width).to(self.device)
        self.discriminative_ = DiscriminativeNet(self.config.disc_width).to(self.device)

    def _check_input(self, x: torch.Tensor) -> None:
        h, w = x.shape[-2:]
        if h % _DOWNSAMPLING or w % _DOWNSAMPLING:
            raise InputError(
                f"draem needs image sides divisible by {_DOWNSAMPLING} (its networks downsample 4 times); "
                f"got {h}x{w}: resize the images, e.g. to 256x256"
            )
        if min(h, w) < 16:
            raise InputError(f"draem needs images of at least 16x16, got {h}x{w}")

    def fit(self, images: ImageBatch) -> Self:
        x = as_image_tensor(images, "good images")
        self._check_input(x)
        if len(x) < 2:
            raise InputError(
                "draem needs at least two good images to train: another good image is the anomaly texture "
                "and batch norm needs two images per batch"
            )
        if self.config.batch_size < 2:
            raise InputError(f"draem needs batch_size >= 2 for batch norm, got {self.config.batch_size}")
        gen = self._start_training(x)
        self._build()
        cfg = self.config
        pool = self._to_unit(x).permute(0, 2, 3, 1).contiguous().numpy()  # (N, H, W, 3) for the numpy generator
        params = [*self.reconstructive_.parameters(), *self.discriminative_.parameters()]
        opt = torch.optim.Adam(params, lr=cfg.learning_rate)
        # The paper's MultiStepLR (x0.2 at 80 % and 90 %) written as a LambdaLR: MultiStepLR keeps its
        # milestones in a Counter whose int keys do not survive the checkpoint's JSON round trip, so a
        # resumed fit would silently skip the drops; a LambdaLR's state is plain numbers.
        milestones = sorted({max(1, int(0.8 * cfg.steps)), max(1, int(0.9 * cfg.steps))})
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.2 ** sum(s >= m for m in milestones))

        def loss(step: int) -> torch.Tensor:
            idx = sample_batch(len(pool), cfg.batch_size, gen).numpy()
            rng = np.random.default_rng(int(torch.randint(2**31, (1,), generator=gen)))
            good = pool[idx]
            inputs, masks = synthesise(good, idx, pool, cfg.anomaly_probability, rng)
            good_t = torch.from_numpy(good).permute(0, 3, 1, 2).to(self.device)
            inputs_t = torch.from_numpy(inputs).permute(0, 3, 1, 2).to(self.device)
            masks_t = torch.from_numpy(masks).to(self.device)
            rec = self.reconstructive_(inputs_t)
            logits = self.discriminative_(torch.cat([inputs_t, rec], dim=1))
            rec = rec.float()
            rec_loss = F.mse_loss(rec, good_t) + (1 - ssim(rec, good_t))
            return rec_loss + focal_loss(logits.float(), masks_t, cfg.focal_gamma)

        modules = self._modules()
        self._train("train", loss, modules, opt, cfg.steps, gen, scheduler=sched)
        self.image_size_ = tuple(x.shape[-2:])
        return self

    def predict(self, images: ImageBatch) -> DetectorOutput:
        return self._predict_maps(images, self._map_fn)

    def _map_fn(self) -> Callable[[torch.Tensor], torch.Tensor]:
        """Run once the input is validated: eval mode, then the per-batch map."""
        self.reconstructive_.eval()
        self.discriminative_.eval()

        def anomaly_map(batch: torch.Tensor) -> torch.Tensor:
            unit = self._to_unit(batch)
            logits = self.discriminative_(torch.cat([unit, self.reconstructive_(unit)], dim=1))
            m = torch.softmax(logits.float(), dim=1)[:, 1]
            if tuple(m.shape[-2:]) != self.image_size_:
                m = F.interpolate(m[:, None], size=self.image_size_, mode="bilinear", align_corners=False)[:, 0]
            return gaussian_blur(m, self.config.blur_sigma)

        return anomaly_map

    def _image_scores(self, maps: torch.Tensor) -> torch.Tensor:
        """The paper's score: the maximum of the map averaged over ``smooth_kernel`` px."""
        k = self.config.smooth_kernel
        smooth = F.avg_pool2d(maps[:, None], k, stride=1, padding=k // 2, count_include_pad=False)
        return smooth.flatten(1).max(1).values

    def _modules(self) -> dict[str, nn.Module]:
        return {"reconstructive": self.reconstructive_, "discriminative": self.discriminative_}

    def _state(self) -> dict[str, torch.Tensor]:
        return modules_state(self._modules())

    def _set_state(self, state: dict[str, torch.Tensor]) -> None:
        self._build()
        load_modules(self._modules(), state)


__all__ = ["DiscriminativeNet", "Draem", "DraemConfig", "ReconstructiveNet", "focal_loss", "ssim"]
