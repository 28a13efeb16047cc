"""SegAD's classifier: XGBoost as a boosted random forest over per-segment map statistics.

With ``binary:logitraw`` the output is a margin, not a probability: right for ranking and for a
threshold chosen on data, wrong to read as a probability.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Self

import numpy as np

ClassifierPreset = Literal["brf", "rf", "bt"]

_COMMON = {"max_depth": 5, "subsample": 0.6, "colsample_bynode": 0.6, "reg_alpha": 1.0}
PRESETS: dict[str, dict[str, Any]] = {
    # SegAD's default: 10 boosting rounds of 200-tree forests.
    "brf": {**_COMMON, "n_estimators": 10, "num_parallel_tree": 200, "learning_rate": 0.3, "colsample_bytree": 0.6},
    # Ablation: one round of a 2,000-tree random forest.
    "rf": {**_COMMON, "n_estimators": 1, "num_parallel_tree": 2000, "learning_rate": 1.0, "colsample_bytree": 0.6},
    # Ablation: 2,000 rounds of single boosted trees, colsample_bytree left at its default.
    "bt": {**_COMMON, "n_estimators": 2000, "num_parallel_tree": 1, "learning_rate": 0.3},
}


class SegadClassifier:
    def __init__(
        self, preset: ClassifierPreset = "brf", seed: int = 0, n_jobs: int | None = None, **overrides: Any
    ) -> None:
        if preset not in PRESETS:
            raise ValueError(f"--classifier must be one of {', '.join(PRESETS)}, got {preset!r}")
        self.preset = preset
        self.seed = seed
        self.n_jobs = n_jobs
        self.params = {**PRESETS[preset], **overrides}

    def fit(self, X: np.ndarray, y: np.ndarray) -> Self:
        from xgboost import XGBClassifier

        y = np.asarray(y).astype(int)
        n_bad, n_good = int(y.sum()), int((y == 0).sum())
        if n_bad == 0 or n_good == 0:
            raise ValueError(f"the classifier needs good and defect examples; got {n_good} good and {n_bad} defects")
        self.model_ = XGBClassifier(
            objective="binary:logitraw",
            scale_pos_weight=n_good / n_bad,
            random_state=self.seed,
            n_jobs=self.n_jobs,
            **self.params,
        ).fit(np.asarray(X, np.float32), y)
        return self

    def decision_function(self, X: np.ndarray) -> np.ndarray:
        """Raw margins: higher = more likely a defect."""
        return self.model_.predict(np.asarray(X, np.float32), output_margin=True).astype(np.float64)

    def feature_importances(self) -> np.ndarray:
        return self.model_.feature_importances_

    def save(self, path: str | Path) -> None:
        self.model_.save_model(str(path))  # XGBoost's JSON: no pickle

    @classmethod
    def load(cls, path: str | Path, preset: str = "brf") -> SegadClassifier:
        from xgboost import XGBClassifier

        clf = cls(preset)
        clf.model_ = XGBClassifier()
        clf.model_.load_model(str(path))
        return clf
