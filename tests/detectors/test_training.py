from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from detectors.training import Checkpoint, sample_batch, train_phase

CPU = torch.device("cpu")


def _problem(seed: int = 0) -> tuple[nn.Module, torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, 8), nn.Dropout(0.2), nn.Linear(8, 1))
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    return model, opt, torch.optim.lr_scheduler.MultiStepLR(opt, [12, 20], 0.5)  # milestones: int-keyed state


def _loss_fn(model: nn.Module, gen: torch.Generator, fail_at: int = -1):
    x = torch.randn(64, 4, generator=torch.Generator().manual_seed(1))
    y = x @ torch.tensor([1.0, -2.0, 0.5, 3.0])[:, None]

    def loss(step: int) -> torch.Tensor:
        if step == fail_at:
            raise KeyboardInterrupt  # what Ctrl-C does mid-fit
        idx = sample_batch(len(x), 16, gen)
        return (model(x[idx]) - y[idx]).pow(2).mean()

    return loss


def _run(ckpt: Checkpoint | None, fail_at: int = -1):
    model, opt, sched = _problem()
    gen = torch.Generator().manual_seed(3)
    losses, report = train_phase(
        "toy",
        _loss_fn(model, gen, fail_at),
        {"model": model},
        opt,
        30,
        CPU,
        gen,
        scheduler=sched,
        checkpoint=ckpt,
        checkpoint_every=4,
        progress=False,
        log_every=1,
    )
    assert opt.param_groups[0]["lr"] == pytest.approx(0.05 * 0.25)  # both milestones applied, resumed or not
    return model, losses, report


def test_loss_falls_and_the_report_is_filled() -> None:
    _, losses, report = _run(None)
    assert len(losses) == 30 and losses[-1] < 0.2 * losses[0]
    assert report.steps == 30 and report.first_loss == losses[0] and report.final_loss == losses[-1]
    assert report.peak_memory_mib > 0 and report.memory_kind == "process_rss"


def test_an_interrupted_phase_resumes_to_the_same_result(tmp_path: Path) -> None:
    ref_model, ref_losses, _ = _run(None)
    with pytest.raises(KeyboardInterrupt):
        _run(Checkpoint(tmp_path, "toy", "id"), fail_at=17)
    model, losses, report = _run(Checkpoint(tmp_path, "toy", "id"))
    assert report.resumed_from_step == 16  # the last checkpoint before the interruption
    assert losses == pytest.approx(ref_losses)
    for a, b in zip(model.state_dict().values(), ref_model.state_dict().values(), strict=True):
        assert torch.allclose(a, b)


def test_a_foreign_checkpoint_is_refused(tmp_path: Path) -> None:
    with pytest.raises(KeyboardInterrupt):
        _run(Checkpoint(tmp_path, "toy", "config-a"), fail_at=9)
    with pytest.raises(ValueError, match="another configuration"):
        _run(Checkpoint(tmp_path, "toy", "config-b"))


def test_a_diverging_loss_stops_with_advice() -> None:
    model = nn.Linear(1, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    gen = torch.Generator()
    with pytest.raises(FloatingPointError, match="lower the learning rate"):
        train_phase("nan", lambda s: model.weight.sum() * float("nan"), {"m": model}, opt, 3, CPU, gen, progress=False)
    with pytest.raises(ValueError, match="at least 1"):
        train_phase("none", lambda s: model.weight.sum(), {"m": model}, opt, 0, CPU, gen, progress=False)
