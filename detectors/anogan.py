"""f-AnoGAN (Schlegl, Seeböck, Waldstein, Langs & Schmidt-Erfurth, Medical Image Analysis 2019;
MVTec AD's "AnoGAN" baseline): a Wasserstein GAN learns to generate good images, then an encoder
learns to map an image to the latent code whose generated image matches it. A defect cannot be
generated, so the rebuild G(E(x)) shows the good version and the residual marks the defect.

Fit runs two phases of ``detectors.training``'s loop (seeded, bfloat16 on a GPU, checkpoints):

1. ``gan``: WGAN-GP (Gulrajani et al., 2017) at 64 x 64, the paper's size: a 128-d N(0, 1) latent,
   ``n_critic`` = 5 critic steps per generator step, gradient penalty 10, Adam 1e-4 with betas
   (0, 0.9) for both nets (the f-AnoGAN code's settings). One phase step is one generator step with
   its five critic steps; the logged "loss" of the phase is the critic's Wasserstein estimate
   E[D(real)] - E[D(fake)] of the step's last critic update (the generator's loss means nothing as
   a number; the estimate is WGAN's distance of samples from data: it rises while the critic
   learns and falls as the generator catches up).
2. ``encoder``: the paper's izi_f training: G and the critic frozen, the encoder E minimises
   ``MSE(x, G(E(x))) + kappa * MSE(f(x), f(G(E(x))))`` with f the critic's last feature layer
   and kappa = 1; RMSprop 5e-5 as the paper's code.

Anomaly map: the per-pixel residual |x - G(E(x))|^2 at 64 x 64, summed over colour channels,
upsampled bilinearly to the input and blurred (sigma 4, as segad's other detectors). Image score:
the paper's A(x) = MSE(x, G(E(x))) + kappa * MSE(f(x), f(G(E(x)))), *not* the map's maximum (on
the test set's tiny schedules the feature term separated defects better than the residual).

Differences from the paper, and why:

- DCGAN-style nets (4 x 4 stride-2 (transposed) convolutions, ``width`` x 1/2/4/8 channels; batch
  norm in G and E, layer norm in the critic as WGAN-GP asks) instead of the paper's 64-px residual
  nets: strided convolutions instead of residual blocks, far cheaper on a CPU; the critic's
  feature layer is likewise the flattened 4 x 4 x 8 ``width`` map before its linear output.
- Images are resized to 64 x 64 whole and kept in RGB, mapped to [-1, 1] (the generator's tanh
  range); the paper trains on 64-px grey OCT patches.
- Schedules: ``gan_steps`` = 100,000 generator steps (WGAN-GP's; the paper trains 7 epochs of
  its patch set), ``encoder_steps`` = 50,000 (the paper's code), batch 64. On a CPU pass far
  shorter schedules and a smaller ``width``. Not yet run on a GPU (the gradient penalty's double
  backward then runs under bfloat16 autocast).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Self

import torch
import torch.nn.functional as F
from torch import nn

from detectors.backbones import to_unit_square
from detectors.base import DetectorOutput, ImageBatch, as_image_tensor
from detectors.errors import InputError
from detectors.maps import gaussian_blur
from detectors.training import TrainableConfig, TrainableDetector, load_modules, modules_state, sample_batch

SIZE = 64  # the paper's image side; four stride-2 layers take it to the critic's 4 x 4 features
_BETAS = (0.0, 0.9)  # WGAN-GP's Adam betas, as the f-AnoGAN code
_RMS_ALPHA = 0.9  # the encoder's RMSprop decay (TensorFlow's default, which the paper's code used)


@dataclass(frozen=True)
class AnoGANConfig(TrainableConfig):
    latent_dim: int = 128
    width: int = 64  # the first critic layer's / last generator layer's channels (x 2, 4, 8 deeper)
    gan_steps: int = 100_000  # generator steps; each comes with n_critic critic steps
    encoder_steps: int = 50_000
    batch_size: int = 64
    n_critic: int = 5
    gradient_penalty: float = 10.0
    gan_learning_rate: float = 1e-4
    encoder_learning_rate: float = 5e-5
    kappa: float = 1.0  # weight of the critic-feature term in the encoder loss and the score
    blur_sigma: float = 4.0

    def __post_init__(self) -> None:
        for name in ("latent_dim", "width", "gan_steps", "encoder_steps", "batch_size", "n_critic"):
            if getattr(self, name) < 1:
                raise InputError(f"anogan: {name} must be at least 1, got {getattr(self, name)}")
        for name in ("gan_learning_rate", "encoder_learning_rate"):
            if not getattr(self, name) > 0:
                raise InputError(f"anogan: {name} must be positive, got {getattr(self, name)}")
        for name in ("gradient_penalty", "kappa", "blur_sigma"):
            if not getattr(self, name) >= 0:
                raise InputError(f"anogan: {name} must be at least 0, got {getattr(self, name)}")


# --- networks -------------------------------------------------------------------------------------


class Generator(nn.Module):
    """z -> 4 x 4 x 8w -> four stride-2 transposed convolutions -> (3, 64, 64) in [-1, 1]."""

    def __init__(self, width: int, latent: int) -> None:
        super().__init__()
        w = width
        self.width = w
        self.project = nn.Linear(latent, 16 * 8 * w)
        layers: list[nn.Module] = [nn.BatchNorm2d(8 * w), nn.ReLU()]  # 2-d norm: a batch of one works
        for cin, cout in ((8 * w, 4 * w), (4 * w, 2 * w), (2 * w, w)):
            layers += [nn.ConvTranspose2d(cin, cout, 4, 2, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]
        layers += [nn.ConvTranspose2d(w, 3, 4, 2, 1), nn.Tanh()]
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(self.project(z).view(len(z), 8 * self.width, 4, 4))


def _trunk(width: int, norm: Callable[[int], nn.Module]) -> nn.Sequential:
    """(3, 64, 64) -> (8w, 4, 4): four 4 x 4 stride-2 convolutions, LeakyReLU 0.2 (no norm on the first)."""
    w = width
    layers: list[nn.Module] = [nn.Conv2d(3, w, 4, 2, 1), nn.LeakyReLU(0.2)]
    for cin, cout in ((w, 2 * w), (2 * w, 4 * w), (4 * w, 8 * w)):
        layers += [nn.Conv2d(cin, cout, 4, 2, 1), norm(cout), nn.LeakyReLU(0.2)]
    return nn.Sequential(*layers, nn.Flatten())


class Critic(nn.Module):
    """The WGAN-GP critic; ``features`` is the layer the izi_f loss and the score compare."""

    def __init__(self, width: int) -> None:
        super().__init__()
        # Layer norm (over C, H, W with per-channel affine, as WGAN-GP's): batch norm would break the
        # gradient penalty, which is per sample.
        self.features = _trunk(width, lambda c: nn.GroupNorm(1, c))
        self.out = nn.Linear(16 * 8 * width, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.features(x))[:, 0]


class Encoder(nn.Module):
    """The critic's trunk with batch norm, then a linear map to the latent (izi: no clipping)."""

    def __init__(self, width: int, latent: int) -> None:
        super().__init__()
        self.net = nn.Sequential(_trunk(width, nn.BatchNorm2d), nn.Linear(16 * 8 * width, latent))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def gradient_penalty(critic: Critic, real: torch.Tensor, fake: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """WGAN-GP's penalty: (||grad D(x_hat)|| - 1)^2 at random points between real and fake images."""
    x_hat = (real + alpha * (fake - real)).requires_grad_(True)
    (grad,) = torch.autograd.grad(critic(x_hat).sum(), x_hat, create_graph=True)
    return (grad.flatten(1).norm(dim=1) - 1).pow(2).mean()


# --- the detector ---------------------------------------------------------------------------------


class AnoGAN(TrainableDetector):
    name = "anogan"
    config_class = AnoGANConfig
    config: AnoGANConfig

    def _build(self) -> None:
        cfg = self.config
        self.generator_ = Generator(cfg.width, cfg.latent_dim).to(self.device)
        self.critic_ = Critic(cfg.width).to(self.device)
        self.encoder_ = Encoder(cfg.width, cfg.latent_dim).to(self.device)

    def _modules(self) -> dict[str, nn.Module]:
        return {"generator": self.generator_, "critic": self.critic_, "encoder": self.encoder_}

    @staticmethod
    def _prepare(x: torch.Tensor) -> torch.Tensor:
        """Model-ready images -> the generator's range: resized whole to 64 x 64, in [-1, 1]."""
        return 2 * to_unit_square(x, SIZE) - 1

    def fit(self, images: ImageBatch) -> Self:
        x = as_image_tensor(images, "good images")
        if len(x) < 2:
            raise InputError(f"{self.name} needs at least two good images to train")
        cfg = self.config
        gen = self._start_training(x)
        data = torch.cat([self._prepare(b).cpu() for b in self._batches(x, "resize")])
        self._build()
        G, D, E = self.generator_, self.critic_, self.encoder_
        opt = torch.optim.Adam([*G.parameters(), *D.parameters()], lr=cfg.gan_learning_rate, betas=_BETAS)

        def batch() -> torch.Tensor:
            return data[sample_batch(len(data), cfg.batch_size, gen)].to(self.device)

        def noise(n: int) -> torch.Tensor:
            return torch.randn(n, cfg.latent_dim, generator=gen).to(self.device)

        def gan_loss(step: int) -> torch.Tensor:
            # One optimiser holds both nets (Adam is per parameter, so this is two Adams): the critic
            # steps run here with G's output detached, so only the critic's parameters get gradients;
            # the generator's step is the returned loss, with the critic frozen, so only G's do. One
            # optimiser keeps both nets' Adam state in the phase's checkpoint.
            D.requires_grad_(True)
            for _ in range(cfg.n_critic):
                real = batch()
                with torch.no_grad():
                    fake = G(noise(len(real)))
                alpha = torch.rand(len(real), 1, 1, 1, generator=gen).to(self.device)
                critic_real, critic_fake = D(torch.cat([real, fake])).split(len(real))  # layer norm: per image
                wasserstein = critic_real.mean() - critic_fake.mean()
                loss = -wasserstein + cfg.gradient_penalty * gradient_penalty(D, real, fake, alpha)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            D.requires_grad_(False)
            g_loss = -D(G(noise(cfg.batch_size))).mean()
            # The value logged is the critic's Wasserstein estimate; the gradient is the generator's.
            return g_loss + (wasserstein.detach() - g_loss.detach())

        self._train("gan", gan_loss, {"generator": G, "critic": D}, opt, cfg.gan_steps, gen)
        G.requires_grad_(False)  # both frozen (and in eval mode) while the encoder learns
        D.requires_grad_(False)

        enc_opt = torch.optim.RMSprop(E.parameters(), lr=cfg.encoder_learning_rate, alpha=_RMS_ALPHA)

        def encoder_loss(step: int) -> torch.Tensor:
            real = batch()
            residual, feature, _ = self._izi_f(real)
            return (residual + cfg.kappa * feature).mean()

        self._train("encoder", encoder_loss, {"encoder": E}, enc_opt, cfg.encoder_steps, gen)
        E.requires_grad_(False)
        self.image_size_ = tuple(x.shape[-2:])
        return self

    def _izi_f(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """For x in [-1, 1]: per-image pixel MSE and critic-feature MSE of x and G(E(x)), and G(E(x))."""
        rebuilt = self.generator_(self.encoder_(x)).float()
        with torch.no_grad():
            target = self.critic_.features(x).float()
        feature = (self.critic_.features(rebuilt).float() - target).pow(2).mean(1)
        return (x - rebuilt).pow(2).flatten(1).mean(1), feature, rebuilt

    def predict(self, images: ImageBatch) -> DetectorOutput:
        x = as_image_tensor(images)
        self._check_fitted(x)
        for m in self._modules().values():
            m.eval()
        maps, scores = [], []
        for batch in self._batches(x, "predict"):
            with torch.inference_mode():
                small = self._prepare(batch)
                residual, feature, rebuilt = self._izi_f(small)
                res = (small - rebuilt).pow(2).sum(1, keepdim=True)
                up = F.interpolate(res, size=self.image_size_, mode="bilinear", align_corners=False)[:, 0]
                maps.append(gaussian_blur(up, self.config.blur_sigma).float().cpu())
                scores.append((residual + self.config.kappa * feature).float().cpu())
        return DetectorOutput(torch.cat(maps).numpy(), torch.cat(scores).numpy())

    def _state(self) -> dict[str, torch.Tensor]:
        return modules_state(self._modules())

    def _set_state(self, state: dict[str, torch.Tensor]) -> None:
        self._build()
        load_modules(self._modules(), state)


__all__ = ["AnoGAN", "AnoGANConfig", "Critic", "Encoder", "Generator", "gradient_penalty"]
