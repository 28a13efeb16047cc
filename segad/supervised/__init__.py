"""Supervised few-shot baselines: models that learn from good images *and* a few labelled defects."""

from segad.supervised.base import SupervisedConfig, SupervisedModel, deviation_loss
from segad.supervised.devnet import DevNet, DevNetConfig
from segad.supervised.dra import DRA, DRAConfig
from segad.supervised.finetune import ClassifierConfig, FineTunedClassifier

# name -> model class (a ``SupervisedModel``); ``--set NAME.OPTION=VALUE`` parses into its ``config_class``.
SUPERVISED: dict[str, type[SupervisedModel]] = {"devnet": DevNet, "dra": DRA, "classifier": FineTunedClassifier}

__all__ = [
    "DRA",
    "SUPERVISED",
    "ClassifierConfig",
    "DRAConfig",
    "DevNet",
    "DevNetConfig",
    "FineTunedClassifier",
    "SupervisedConfig",
    "SupervisedModel",
    "deviation_loss",
]
