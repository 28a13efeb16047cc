"""Supervised few-shot baselines: models that learn from good images *and* a few labelled defects."""

from segad.supervised.base import SupervisedConfig, SupervisedModel, deviation_loss
from segad.supervised.devnet import DevNet, DevNetConfig
from segad.supervised.dra import DRA, DRAConfig

# name -> model class (a ``SupervisedModel``); ``--set NAME.OPTION=VALUE`` parses into its ``config_class``.
SUPERVISED: dict[str, type[SupervisedModel]] = {"devnet": DevNet, "dra": DRA}

__all__ = [
    "DRA",
    "SUPERVISED",
    "DRAConfig",
    "DevNet",
    "DevNetConfig",
    "SupervisedConfig",
    "SupervisedModel",
    "deviation_loss",
]
