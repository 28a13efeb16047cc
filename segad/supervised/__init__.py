"""Supervised few-shot baselines: models that learn from good images *and* a few labelled defects."""

from segad.supervised.devnet import DevNet, DevNetConfig, deviation_loss

__all__ = ["DevNet", "DevNetConfig", "deviation_loss"]
