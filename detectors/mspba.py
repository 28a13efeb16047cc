"""MSPBA (Tsai, Wu & Lai, WACV 2022): multi-scale patch-based representation learning.

Patch SVDD's recipe at several patch sizes at once: for each size K an encoder maps a K x K patch
to a D-dimensional embedding (tanh), trained self-supervised with
- the relative-position task: a classifier tells from h(p1) - h(p2) in which of 12 directions
  (every 30 degrees, 3K/4 to K away) the neighbour p2 lies (cross-entropy), and
- MSPBA's representation loss, weighted by lambda: a jittered copy of a patch is pulled close
  (L2 distance, and cosine similarity raised) while a far patch's cosine similarity is lowered,
  so embeddings follow the relative similarity of patches at different local distances.
Each training patch's embedding goes into a memory per size; a test patch's anomaly is the distance
to its nearest training embedding, spread over the pixels the patch covers (averaged where patches
overlap), and the maps of all sizes are summed; score = the map's maximum.

Defaults follow the reference code (Howeng98/MSPBA, a copy of chinchia/Defect-Detection:
``main_train.py``, ``codes/datasets.py``, ``codes/codes/networks.py``, ``codes/codes/inspection.py``):
patch sizes 64 / 32 / 16 with test strides 16 / 4 / 4, D = 64, lambda 1e-3, Adam lr 1e-5, batches of
64, 100 epochs of 100 samples per image, 1-NN distance, no blur. Where it differs, and why:
- Backbone: the paper's encoders sit on an ImageNet VGG16 (conv5_3 for K=64, conv3_3 for 32,
  conv2_2 for 16) fine-tuned with them. VGG16 is not available offline, and segad's backbones stay
  frozen (features of the fit images computed once), so the encoders sit on frozen EfficientNet-Lite0
  levels: layer3 (stride 16, a 4 x 4 window) for 64, layer1 (stride 4; 8 x 8) for 32 and layer1
  (4 x 4) for 16. Test strides are the reference's: 16, 4 and 4.
- Patches are windows of the whole image's feature map rather than crops fed to the network on
  their own, so one pass embeds every patch (the reference crops each); a window's features also
  see a little context beyond the patch. Offsets are therefore whole feature cells: the SVDD
  jitter (K/16 pixels in the reference) is at least one cell, and the pixel-space RGB-shift and
  noise augmentation of the position task is left out.
- The reference's k-means loss is computed on detached embeddings against fixed centres (``.data``),
  so it never reaches the encoders' gradients; it is left out. Its exact and approximate (NGT)
  nearest-neighbour searches are one exact chunked search here.
- Above ``max_bank`` embeddings per size the memory is PatchCore's greedy k-centre coreset of them,
  so memory and search time stay bounded (the reference keeps every training patch).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import ClassVar, Self

import torch
import torch.nn.functional as F
from torch import nn

from detectors.backbones import STRIDES
from detectors.base import DetectorOutput, ImageBatch, as_image_tensor
from detectors.coreset import greedy_coreset
from detectors.errors import InputError
from detectors.maps import gaussian_blur, parse_layers
from detectors.neighbours import nearest
from detectors.training import TrainableConfig, TrainableDetector, load_modules, modules_state

N_DIRECTIONS = 12  # relative positions every 30 degrees, as the reference


@dataclass(frozen=True)
class MSPBAConfig(TrainableConfig):
    RESULT_NEUTRAL: ClassVar[Mapping[str, str]] = MappingProxyType(
        {
            **TrainableConfig.RESULT_NEUTRAL,
            "query_chunk": "the nearest-neighbour search takes this many test patches at a time, each patch's "
            "distance computed on its own, so it only bounds memory (maps move by float32 rounding at most)",
        }
    )

    patch_sizes: str = "64+32+16"
    layers: str = "layer3+layer1+layer1"  # the backbone level each patch size's encoder reads, in order
    embedding_dim: int = 64
    lambda_svdd: float = 1e-3
    epochs: int = 100
    samples_per_image: int = 100  # one epoch = this many samples per training image, as the reference
    learning_rate: float = 1e-5
    batch_size: int = 64
    max_bank: int = 8192  # per patch size; a greedy coreset above it (the reference keeps every patch)
    blur_sigma: float = 0.0
    query_chunk: int = 8192


@dataclass(frozen=True)
class _Scale:
    patch: int  # K, pixels
    layer: str
    stride: int

    @property
    def window(self) -> int:
        return self.patch // self.stride


def _reduction_kernels(window: int) -> list[int]:
    """Unpadded kernels that shrink a window to 1 x 1: 3 x 3 while it is large, then 2 x 2 (the
    reference's shapes: 4 -> 2, 2, 2 and 8 -> 3, 3, 2, 2, 2)."""
    kernels = []
    while window > 1:
        k = 3 if window >= 5 else 2
        kernels.append(k)
        window -= k - 1
    return kernels


class PatchEncoder(nn.Module):
    """A window of one backbone level -> one D-dim embedding in (-1, 1); fully convolutional, so on a
    whole feature map it embeds every window at once."""

    def __init__(self, channels: int, window: int, dim: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        cin = channels
        for i, k in enumerate(_reduction_kernels(window)):
            cout = max(64, 256 >> i)
            layers += [nn.Conv2d(cin, cout, k), nn.LeakyReLU(0.1)]
            cin = cout
        layers.append(nn.Conv2d(cin, dim, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.net(x))


class PositionClassifier(nn.Module):
    """h(p1) - h(p2) -> which of 12 directions p2 lies in. The last layer's weights are fixed at unit-norm
    columns (only its bias trains), as the reference's ``NormalizedLinear``, whose weights get no gradient."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(dim, 128), nn.LeakyReLU(0.1), nn.Linear(128, 256), nn.LeakyReLU(0.1), nn.Linear(256, 512)
        )
        self.act = nn.LeakyReLU(0.1)
        self.out = nn.Linear(512, N_DIRECTIONS)

    def forward(self, diff: torch.Tensor) -> torch.Tensor:
        w = self.out.weight.detach()
        return F.linear(self.act(self.mlp(diff)), w / w.norm(dim=0, keepdim=True), self.out.bias)


def _directions() -> torch.Tensor:
    """(12, 2) unit (row, column) steps, 30 degrees apart."""
    a = torch.arange(N_DIRECTIONS, dtype=torch.float64) * (2 * math.pi / N_DIRECTIONS)
    return torch.stack([torch.cos(a), torch.sin(a)], dim=1)


def _windows(feats: torch.Tensor, img: torch.Tensor, top_left: torch.Tensor, w: int) -> torch.Tensor:
    """(n, C, h, w') cached features -> (B, C, w, w) windows at (img, row, col)."""
    ar = torch.arange(w)
    rows = (top_left[:, 0:1] + ar)[:, :, None]
    cols = (top_left[:, 1:2] + ar)[:, None, :]
    return feats[img[:, None, None], :, rows, cols].permute(0, 3, 1, 2)


def _spread(patch: torch.Tensor, scale: _Scale, size: tuple[int, int]) -> torch.Tensor:
    """(B, h', w') patch scores -> (B, H, W): each score over the K x K pixels its patch covers, averaged
    where patches overlap, zero where none does (the reference's ``distribute_scores``)."""
    k = patch.new_ones(1, 1, scale.patch, scale.patch)
    total = F.conv_transpose2d(patch[:, None], k, stride=scale.stride)
    count = F.conv_transpose2d(torch.ones_like(patch[:1, None]), k, stride=scale.stride)
    out = total / count.clamp_min(1.0)
    h, w = size
    out = F.pad(out, (0, max(0, w - out.shape[-1]), 0, max(0, h - out.shape[-2])))
    return out[:, 0, :h, :w]


class MSPBA(TrainableDetector):
    name = "mspba"
    config_class = MSPBAConfig
    config: MSPBAConfig

    def _scales(self) -> list[_Scale]:
        c = self.config
        sizes = [p.strip() for p in c.patch_sizes.replace(",", "+").split("+") if p.strip()]
        layers = parse_layers(c.layers)
        if len(sizes) != len(layers):
            raise InputError(
                f"mspba: patch_sizes {c.patch_sizes!r} and layers {c.layers!r} must name as many "
                "entries each (one backbone level per patch size)"
            )
        scales = []
        for size, layer in zip(sizes, layers, strict=True):
            if not size.isdigit():
                raise InputError(f"mspba: patch size {size!r} is not a whole number of pixels")
            if layer not in STRIDES:
                raise InputError(f"mspba: unknown backbone level {layer!r}; choose from {sorted(STRIDES)}")
            k, s = int(size), STRIDES[layer]
            if k < s or k % s:
                raise InputError(f"mspba: patch size {k} must be a multiple of {layer}'s stride {s}")
            scales.append(_Scale(k, layer, s))
        return scales

    def _check_config(self) -> None:
        c = self.config
        for field in ("embedding_dim", "epochs", "samples_per_image", "batch_size", "max_bank", "query_chunk"):
            if getattr(c, field) < 1:
                raise InputError(f"mspba: {field} must be at least 1, got {getattr(c, field)}")

    def _build(self) -> None:
        torch.manual_seed(self.config.seed)
        d = self.config.embedding_dim
        self.encoders_ = nn.ModuleList(
            PatchEncoder(self.backbone.channels[s.layer], s.window, d) for s in self._scales()
        ).to(self.device)
        self.classifiers_ = nn.ModuleList(PositionClassifier(d) for _ in self._scales()).to(self.device)

    def _sample(self, n: int, grid: tuple[int, int], scale: _Scale, gen: torch.Generator) -> dict[str, torch.Tensor]:
        """One batch's patch positions (top-left feature cells) for both tasks, drawn in pixels as the reference
        draws them, then rounded to this level's cells and clipped to the map."""
        b, k, s = self.config.batch_size, scale.patch, scale.stride
        lo, hi = torch.zeros(2, dtype=torch.long), torch.tensor([grid[0] - scale.window, grid[1] - scale.window])
        dirs = _directions()

        def start() -> torch.Tensor:
            return (torch.rand(b, 2, generator=gen, dtype=torch.float64) * (hi + 1)).floor().long()

        def away(p: torch.Tensor, direction: torch.Tensor, extra: int) -> torch.Tensor:
            """3K/4 + U[0, K/4) pixels (per axis) from p in the direction, plus ``extra`` outwards."""
            px = dirs[direction] * (torch.randint(max(1, k // 4), (b, 2), generator=gen) + 3 * k // 4)
            px = px + torch.where(px < 0, -extra, extra)
            return (p + torch.round(px / s).long()).clamp(lo, hi)

        # relative-position task: the neighbour p2 in one of 12 directions from p1
        img_pos, p1 = torch.randint(n, (b,), generator=gen), start()
        label = torch.randint(N_DIRECTIONS, (b,), generator=gen)
        p2 = away(p1, label, 0)
        # representation task: a jittered positive (by at least one cell) and a negative 3K/4 further out
        img_svdd, q1 = torch.randint(n, (b,), generator=gen), start()
        j = max(1, round(k / 16 / s))
        offsets = torch.tensor([(a, c) for a in range(-j, j + 1) for c in range(-j, j + 1) if a or c])
        q2 = (q1 + offsets[torch.randint(len(offsets), (b,), generator=gen)]).clamp(lo, hi)
        q3 = away(q1, torch.randint(N_DIRECTIONS, (b,), generator=gen), 3 * k // 4)
        return {"img_pos": img_pos, "p1": p1, "p2": p2, "label": label, "img_svdd": img_svdd, "q": (q1, q2, q3)}

    def fit(self, images: ImageBatch) -> Self:
        x = as_image_tensor(images, "good images")
        self._check_config()
        scales = self._scales()
        largest = max(s.patch for s in scales)
        if min(x.shape[-2:]) < largest:
            raise InputError(
                f"mspba: patch size {largest} does not fit {tuple(x.shape[-2:])} images; use images of at least "
                f"{largest} px or smaller patch_sizes"
            )
        gen = self._start_training(x)
        self._build()
        layers = sorted({s.layer for s in scales})
        cached = dict(zip(layers, self._frozen_features(x, "+".join(layers)), strict=True))
        params = [*self.encoders_.parameters(), *self.classifiers_.parameters()]
        opt = torch.optim.Adam(params, lr=self.config.learning_rate)
        steps_per_epoch = -(-len(x) * self.config.samples_per_image // self.config.batch_size)
        lam = self.config.lambda_svdd

        def loss(step: int) -> torch.Tensor:
            total = torch.zeros((), device=self.device)
            for scale, enc, cls in zip(scales, self.encoders_, self.classifiers_, strict=True):
                feats = cached[scale.layer]
                smp = self._sample(len(x), tuple(feats.shape[-2:]), scale, gen)
                w = scale.window
                wins = [_windows(feats, smp["img_pos"], p, w) for p in (smp["p1"], smp["p2"])]
                wins += [_windows(feats, smp["img_svdd"], q, w) for q in smp["q"]]
                h = enc(torch.cat(wins).to(self.device, non_blocking=True)).flatten(1)
                h1, h2, s1, s2, s3 = h.chunk(5)
                position = F.cross_entropy(cls(h1 - h2), smp["label"].to(self.device))
                near = (s1 - s2).norm(dim=1).mean()
                contrast = (F.cosine_similarity(s1, s3) - F.cosine_similarity(s1, s2)).mean()
                total = total + position + lam * (near + contrast)
            return total

        self._train("train", loss, self._modules(), opt, self.config.epochs * steps_per_epoch, gen)
        self.image_size_ = tuple(x.shape[-2:])
        self.banks_ = self._memory(x)
        return self

    def _embed(self, batch: torch.Tensor) -> list[torch.Tensor]:
        """(B, 3, H, W) -> per patch size (B, h', w', D): every patch's embedding at its level's stride."""
        scales = self._scales()
        feats = self.backbone(batch, sorted({s.layer for s in scales}))
        return [enc(feats[s.layer]).permute(0, 2, 3, 1) for s, enc in zip(scales, self.encoders_, strict=True)]

    def _memory(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Every training patch's embedding per size; a greedy coreset of them above ``max_bank``."""
        parts: list[list[torch.Tensor]] = [[] for _ in self._scales()]
        with torch.inference_mode():
            for batch in self._batches(x, "memory"):
                for k, emb in enumerate(self._embed(batch)):
                    parts[k].append(emb.reshape(-1, emb.shape[-1]).float().cpu())
        banks = []
        for k, p in enumerate(parts):
            bank = torch.cat(p)
            if bank.shape[0] > self.config.max_bank:
                keep = greedy_coreset(bank, self.config.max_bank / bank.shape[0], 0, self.config.seed + k)
                bank = bank[keep.cpu()][: self.config.max_bank]
            banks.append(bank.contiguous())
        return banks

    def predict(self, images: ImageBatch) -> DetectorOutput:
        return self._predict_maps(images, self._map_fn)

    def _map_fn(self) -> Callable[[torch.Tensor], torch.Tensor]:
        self.encoders_.eval()
        scales = self._scales()
        banks = [b.to(self.device) for b in self.banks_]
        banks_sq = [(b * b).sum(1) for b in banks]

        def anomaly_map(batch: torch.Tensor) -> torch.Tensor:
            total = None
            for scale, emb, bank, bank_sq in zip(scales, self._embed(batch), banks, banks_sq, strict=True):
                b, h, w, d = emb.shape
                dist, _ = nearest(emb.reshape(-1, d), bank, bank_sq, self.config.query_chunk)
                m = _spread(dist.view(b, h, w), scale, self.image_size_)
                total = m if total is None else total + m
            return gaussian_blur(total, self.config.blur_sigma)

        return anomaly_map

    def _modules(self) -> dict[str, nn.Module]:
        return {"encoders": self.encoders_, "classifiers": self.classifiers_}

    def _state(self) -> dict[str, torch.Tensor]:
        return {**modules_state(self._modules()), **{f"bank_{k}_": b for k, b in enumerate(self.banks_)}}

    def _set_state(self, state: dict[str, torch.Tensor]) -> None:
        self._build()
        self.banks_ = [state.pop(f"bank_{k}_") for k in range(len(self._scales()))]
        load_modules(self._modules(), state)
