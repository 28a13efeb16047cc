"""Supervised few-shot baselines: models that learn from good images *and* a few labelled defects."""

from segad.supervised.devnet import DevNet, DevNetConfig, deviation_loss

# name -> model class: ``Model(config).fit(normal, defects)``, ``decision_function``, ``save``, ``load``,
# ``losses_``; ``Model.config_class`` parses ``--set NAME.OPTION=VALUE``.
SUPERVISED = {"devnet": DevNet}

__all__ = ["SUPERVISED", "DevNet", "DevNetConfig", "deviation_loss"]
