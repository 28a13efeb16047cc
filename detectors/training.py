"""The plain torch training loop the trainable detectors share.

No training framework: a detector hands over its modules, an optimiser and a ``loss(step)``
closure; this module runs the steps seeded, in bfloat16 autocast on a GPU, with a progress bar
showing the loss, and writes a checkpoint (safetensors: weights, optimiser state, RNG state, step)
every few steps so an interrupted fit resumes where it stopped instead of starting over. Each
phase reports its wall time and peak memory, which the MLflow layer logs.
"""

from __future__ import annotations

import hashlib
import json
import resource
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from types import MappingProxyType
from typing import ClassVar

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from detectors.atomic import atomic_write
from detectors.base import Detector, DetectorConfig
from detectors.errors import InputError
from detectors.maps import parse_layers

LossFn = Callable[[int], torch.Tensor]


@dataclass(frozen=True)
class PhaseReport:
    """One training phase (a detector may have several, e.g. EfficientAD's teacher, then student)."""

    phase: str
    steps: int
    seconds: float
    peak_memory_mib: float  # GPU: torch's peak allocation in the phase; CPU: the process's peak RSS
    memory_kind: str  # "cuda_allocated" | "process_rss"
    first_loss: float
    final_loss: float
    resumed_from_step: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


def autocast(device: torch.device):
    """bfloat16 autocast on a GPU (no loss scaling needed, unlike float16); full precision on CPU."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()


def data_fingerprint(images: torch.Tensor) -> str:
    """A cheap id of the training images, so a checkpoint is never resumed on other data."""
    h = hashlib.sha1(str(tuple(images.shape)).encode())
    flat = images.reshape(len(images), -1)
    step = max(1, flat.shape[1] // 4096)
    h.update(flat[:, ::step].contiguous().numpy().tobytes())
    return h.hexdigest()


def modules_state(modules: dict[str, nn.Module]) -> dict[str, torch.Tensor]:
    """Several modules' weights in one flat dict, keys prefixed by the module's name."""
    return {f"{name}.{k}": v for name, m in modules.items() for k, v in m.state_dict().items()}


def load_modules(modules: dict[str, nn.Module], state: dict[str, torch.Tensor]) -> None:
    """Inverse of ``modules_state``; leaves the modules in eval mode (``train_phase`` sets train)."""
    for name, module in modules.items():
        prefix = f"{name}."
        module.load_state_dict({k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)})
        module.eval()


class Checkpoint:
    """A phase's resumable state in one safetensors file: modules, optimiser, scheduler, RNG, step.

    ``identity`` (config + data fingerprint) is stored with it; a checkpoint with another identity
    is an error rather than a silent restart, because it means the folder is shared by mistake.
    """

    def __init__(self, folder: str | Path, phase: str, identity: str) -> None:
        self.path = Path(folder) / f"{phase}.safetensors"
        self.identity = identity

    def exists(self) -> bool:
        return self.path.is_file()

    def save(
        self,
        step: int,
        modules: dict[str, nn.Module],
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler | None,
        generator: torch.Generator,
        losses: list[float],
    ) -> None:
        tensors = {f"module.{k}": v.detach().cpu().contiguous() for k, v in modules_state(modules).items()}
        opt = optimizer.state_dict()
        scalars: dict[str, dict[str, float]] = {}
        for pid, state in opt["state"].items():
            for k, v in state.items():
                if torch.is_tensor(v):
                    tensors[f"optim.{pid}.{k}"] = v.detach().cpu().contiguous()
                else:
                    scalars.setdefault(str(pid), {})[k] = v
        tensors["rng.generator"] = generator.get_state()
        tensors["rng.torch"] = torch.get_rng_state()
        meta = {
            "identity": self.identity,
            "step": str(step),
            "param_groups": json.dumps(opt["param_groups"]),
            "optim_scalars": json.dumps(scalars),
            "losses": json.dumps(losses),
        }
        atomic_write(self.path, lambda tmp: save_file(tensors, str(tmp), metadata=meta))

    def load(
        self,
        modules: dict[str, nn.Module],
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler | None,
        generator: torch.Generator,
    ) -> tuple[int, list[float]]:
        from safetensors import safe_open

        with safe_open(str(self.path), framework="pt") as f:
            meta = dict(f.metadata() or {})
        if meta.get("identity") != self.identity:
            raise InputError(
                f"checkpoint {self.path} belongs to another configuration or training set; "
                "delete it or point checkpoint_dir at an empty folder"
            )
        tensors = load_file(str(self.path))
        load_modules(modules, {k[len("module.") :]: v for k, v in tensors.items() if k.startswith("module.")})
        state: dict[int, dict] = {}
        for key, v in tensors.items():
            if key.startswith("optim."):
                _, pid, k = key.split(".", 2)
                state.setdefault(int(pid), {})[k] = v
        for pid, extra in json.loads(meta["optim_scalars"]).items():
            state.setdefault(int(pid), {}).update(extra)
        step = int(meta["step"])
        if scheduler is not None:
            # Replay the schedule rather than store it: schedulers' state dicts hold non-JSON types
            # (MultiStepLR's integer-keyed milestones). Replayed first, so the optimiser state loaded
            # next (its learning rates included) is exactly the checkpoint's.
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # "step() before optimizer.step()"
                for _ in range(step):
                    scheduler.step()
        optimizer.load_state_dict({"state": state, "param_groups": json.loads(meta["param_groups"])})
        generator.set_state(tensors["rng.generator"])
        torch.set_rng_state(tensors["rng.torch"])
        return step, json.loads(meta["losses"])


@contextmanager
def _peak_memory(device: torch.device) -> Iterator[Callable[[], tuple[float, str]]]:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        yield lambda: (torch.cuda.max_memory_allocated(device) / 2**20, "cuda_allocated")
    else:
        yield lambda: (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "process_rss")


def train_phase(
    phase: str,
    loss_fn: LossFn,
    modules: dict[str, nn.Module],
    optimizer: torch.optim.Optimizer,
    steps: int,
    device: torch.device,
    generator: torch.Generator,
    *,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    checkpoint: Checkpoint | None = None,
    checkpoint_every: int = 0,
    progress: bool = True,
    log_every: int = 0,
) -> tuple[list[float], PhaseReport]:
    """Run ``steps`` optimiser steps of ``loss_fn(step)``; returns the loss curve and the phase report.

    The loss curve holds the mean loss over each ``log_every`` steps (default: 1% of the phase), so it
    stays small enough to log. ``generator`` is the phase's only source of randomness besides torch's
    global RNG (dropout), and both are checkpointed, so a resumed run matches an uninterrupted one.
    """
    from tqdm.auto import tqdm

    if steps < 1:
        raise InputError(f"{phase}: the number of training steps must be at least 1, got {steps}")
    log_every = log_every or max(1, steps // 100)
    start, losses = 0, []
    if checkpoint is not None and checkpoint.exists():
        start, losses = checkpoint.load(modules, optimizer, scheduler, generator)
    for m in modules.values():
        m.train()
    t0 = time.perf_counter()
    window: list[float] = []
    with _peak_memory(device) as peak:
        bar = tqdm(
            range(start, steps), desc=phase, initial=start, total=steps, disable=None if progress else True, leave=False
        )
        for step in bar:
            with autocast(device):
                loss = loss_fn(step)
            if not torch.isfinite(loss):
                raise FloatingPointError(
                    f"{phase}: the loss became {float(loss.detach())} at step {step}; lower the learning rate"
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
            window.append(float(loss.detach()))
            if len(window) == log_every or step == steps - 1:
                losses.append(sum(window) / len(window))
                window = []
                bar.set_postfix(loss=f"{losses[-1]:.4g}")
            if checkpoint is not None and checkpoint_every and (step + 1) % checkpoint_every == 0 and step + 1 < steps:
                checkpoint.save(step + 1, modules, optimizer, scheduler, generator, losses)
        mem, kind = peak()
    for m in modules.values():
        m.eval()
    report = PhaseReport(phase, steps, time.perf_counter() - t0, mem, kind, losses[0], losses[-1], start)
    return losses, report


def sample_batch(n: int, batch_size: int, generator: torch.Generator) -> torch.Tensor:
    """Indices of a random batch (with replacement across steps, without within a batch)."""
    return torch.randperm(n, generator=generator)[: min(batch_size, n)]


@dataclass(frozen=True)
class TrainableConfig(DetectorConfig):
    """Options every trainable detector has; the checkpoint ones are result-neutral (not in cache keys).

    ``checkpoint_dir`` empty means no checkpoints; ``segad.train`` points it into the map cache, so a
    fit killed half-way resumes on the next run. ``batch_size`` is *not* neutral here: it sets the
    training batches, the number of steps per epoch and what batch norm sees.
    """

    RESULT_NEUTRAL: ClassVar[Mapping[str, str]] = MappingProxyType(
        {
            **DetectorConfig.RESULT_NEUTRAL,
            "checkpoint_dir": "where checkpoints go; a checkpoint stores weights, optimiser, RNG and step and "
            "replays the schedule, so a resumed fit equals an uninterrupted one (tests/detectors/"
            "test_training.py and each trainable detector's resume test)",
            "checkpoint_every": "how often checkpoints are written; writing one draws no random numbers and "
            "changes no state, and resuming from any step gives the uninterrupted fit (tested as above)",
        }
    )

    checkpoint_dir: str = ""
    checkpoint_every: int = 200


class TrainableDetector(Detector):
    """A detector with a training loop: keeps each phase's report and loss curve, saved with the weights."""

    config: TrainableConfig

    def _start_training(self, images: torch.Tensor) -> torch.Generator:
        torch.manual_seed(self.config.seed)  # module init and dropout
        self.training_reports_: list[PhaseReport] = []
        self.loss_history_: dict[str, list[float]] = {}
        self._identity = json.dumps({"name": self.name, "version": self.version, **self.config.identity()})
        self._identity += data_fingerprint(images)
        return torch.Generator().manual_seed(self.config.seed)

    def _train(
        self,
        phase: str,
        loss_fn: LossFn,
        modules: dict[str, nn.Module],
        optimizer: torch.optim.Optimizer,
        steps: int,
        generator: torch.Generator,
        scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    ) -> None:
        ckpt = None
        if self.config.checkpoint_dir:
            ckpt = Checkpoint(self.config.checkpoint_dir, f"{self.name}-{phase}", self._identity)
        losses, report = train_phase(
            f"{self.name} {phase}",
            loss_fn,
            modules,
            optimizer,
            steps,
            self.device,
            generator,
            scheduler=scheduler,
            checkpoint=ckpt,
            checkpoint_every=self.config.checkpoint_every,
            progress=self.config.progress,
        )
        self.loss_history_[phase] = losses
        self.training_reports_.append(report)

    def _frozen_features(self, x: torch.Tensor, layers: str) -> list[torch.Tensor]:
        """The frozen backbone's levels of every training image, computed once and kept on the CPU.

        Detectors whose backbone does not train read their batches from here instead of running the
        backbone at every step: on a CPU that halves the training time.
        """
        names = parse_layers(layers)
        parts: list[list[torch.Tensor]] = [[] for _ in names]
        for batch in self._batches(x, "features"):
            with torch.inference_mode():
                feats = self.backbone(batch, names)
            for k, n in enumerate(names):
                parts[k].append(feats[n].float().cpu())
        return [torch.cat(p) for p in parts]

    @property
    def training_seconds(self) -> float:
        return sum(r.seconds for r in getattr(self, "training_reports_", []))

    def _metadata(self) -> dict[str, str]:
        return {
            "training": json.dumps([r.to_dict() for r in getattr(self, "training_reports_", [])]),
            "loss_history": json.dumps(getattr(self, "loss_history_", {})),
        }

    def _set_metadata(self, meta: dict[str, str]) -> None:
        self.training_reports_ = [PhaseReport(**r) for r in json.loads(meta.get("training", "[]"))]
        self.loss_history_ = json.loads(meta.get("loss_history", "{}"))


__all__ = [
    "Checkpoint",
    "PhaseReport",
    "TrainableConfig",
    "TrainableDetector",
    "autocast",
    "data_fingerprint",
    "load_modules",
    "modules_state",
    "sample_batch",
    "train_phase",
]
