"""``auto | cpu | cuda`` -> a torch device, the same rule everywhere."""

from __future__ import annotations

import torch

from detectors.errors import InputError


class DeviceUnavailableError(InputError, RuntimeError):
    """The asked-for device is not on this machine (an ``InputError``; a ``RuntimeError`` as before)."""


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    if isinstance(device, torch.device):
        return device
    name = str(device).lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise DeviceUnavailableError(
                f"--device {device}: no CUDA GPU is visible to torch; use --device cpu or auto"
            )
        return torch.device(name)
    if name == "cpu":
        return torch.device("cpu")
    raise InputError(f"--device must be auto, cpu or cuda, got {device!r}")
