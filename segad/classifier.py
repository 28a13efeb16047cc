"""SegAD's classifier: XGBoost as a boosted random forest over per-segment map statistics.

With ``binary:logitraw`` the output is a margin, not a probability: right for ranking and for a
threshold chosen on data, wrong to read as a probability.

A forest can start from a prior score (``fit(X, y, prior=...)``, ``--classifier-start ensemble``):
XGBoost's ``base_margin`` is then a logistic fit of the prior (the ensemble's z-score), and the trees
learn a correction to it rather than everything from ten defects.

``logreg`` is not SegAD's: a strongly regularised logistic regression on standardised features.
With ten defects a forest over hundreds of features mostly learns which defects it saw; a linear
model with a small ``C`` can only re-weight the statistics, and on ELPV it ranks better (README's
classifier ablation).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal, Self

import numpy as np

from detectors.errors import InputError

ClassifierPreset = Literal["brf", "rf", "bt", "logreg"]

_COMMON = {"max_depth": 5, "subsample": 0.6, "colsample_bynode": 0.6, "reg_alpha": 1.0}
PRESETS: dict[str, dict[str, Any]] = {
    # SegAD's default: 10 boosting rounds of 200-tree forests.
    "brf": {**_COMMON, "n_estimators": 10, "num_parallel_tree": 200, "learning_rate": 0.3, "colsample_bytree": 0.6},
    # Ablation: one round of a 2,000-tree random forest.
    "rf": {**_COMMON, "n_estimators": 1, "num_parallel_tree": 2000, "learning_rate": 1.0, "colsample_bytree": 0.6},
    # Ablation: 2,000 rounds of single boosted trees, colsample_bytree left at its default.
    "bt": {**_COMMON, "n_estimators": 2000, "num_parallel_tree": 1, "learning_rate": 0.3},
    # Not SegAD's: L2 logistic regression, inverse regularisation strength C.
    "logreg": {"C": 0.01},
}
LINEAR_PARAMS = ("C", "max_iter")
SINGLE_THREAD_ROWS = 20_000


def _forest_params() -> set[str]:
    """What XGBoost's classifier accepts: anything else it would ignore with only a log line."""
    from xgboost import XGBClassifier

    return set(XGBClassifier().get_params())


class SegadClassifier:
    prior_: tuple[float, float] | None = None  # (a, b): the base margin a * prior + b, when fit with a prior

    def __init__(
        self, preset: ClassifierPreset = "brf", seed: int = 0, n_jobs: int | None = None, **overrides: Any
    ) -> None:
        if preset not in PRESETS:
            raise InputError(f"--classifier must be one of {', '.join(PRESETS)}, got {preset!r}")
        if preset == "logreg" and (unknown := sorted(set(overrides) - set(LINEAR_PARAMS))):
            raise InputError(
                f"--classifier-params {','.join(unknown)}: logreg takes only {', '.join(LINEAR_PARAMS)}, e.g. C=0.1"
            )
        if preset != "logreg" and (unknown := sorted(set(overrides) - _forest_params())):
            raise InputError(
                f"--classifier-params {','.join(unknown)}: not an XGBoost parameter; e.g. max_depth=4, "
                "learning_rate=0.2, n_estimators=100, subsample=0.8"
            )
        self.preset = preset
        self.seed = seed
        self.n_jobs = n_jobs
        self.params = {**PRESETS[preset], **overrides}

    @property
    def is_linear(self) -> bool:
        return self.preset == "logreg"

    def fit(self, X: np.ndarray, y: np.ndarray, prior: np.ndarray | None = None) -> Self:
        """``prior``: a score per row to start the forest from (its logistic fit is the base margin)."""
        y = np.asarray(y).astype(int)
        n_bad, n_good = int(y.sum()), int((y == 0).sum())
        if n_bad == 0 or n_good == 0:
            raise InputError(f"the classifier needs good and defect examples; got {n_good} good and {n_bad} defects")
        if self.is_linear:
            if prior is not None:
                raise InputError("--classifier-start ensemble needs a forest (brf, rf or bt), not logreg")
            return self._fit_linear(np.asarray(X, np.float64), y)
        from sklearn.linear_model import LogisticRegression
        from xgboost import XGBClassifier

        self.prior_ = None
        if prior is not None:
            lr = LogisticRegression(class_weight="balanced").fit(np.asarray(prior, np.float64)[:, None], y)
            self.prior_ = (float(lr.coef_[0, 0]), float(lr.intercept_[0]))

        # One thread for SegAD's few hundred rows: OpenMP threads spin-wait on each tiny tree, and on a
        # loaded 2-core machine that made one fit 30 s instead of 0.1 s.
        n_jobs = self.n_jobs if self.n_jobs is not None else (1 if len(y) < SINGLE_THREAD_ROWS else None)
        self.model_ = XGBClassifier(
            objective="binary:logitraw",
            scale_pos_weight=n_good / n_bad,
            random_state=self.seed,
            n_jobs=n_jobs,
            **self.params,
        ).fit(np.asarray(X, np.float32), y, base_margin=self._base_margin(prior))
        return self

    def _base_margin(self, prior: np.ndarray | None) -> np.ndarray | None:
        if self.prior_ is None:
            return None
        if prior is None:
            raise InputError("this classifier starts from the ensemble score: pass prior= to score rows")
        a, b = self.prior_
        return a * np.asarray(prior, np.float64) + b

    def _fit_linear(self, X: np.ndarray, y: np.ndarray) -> Self:
        from sklearn.linear_model import LogisticRegression

        # A NaN statistic (a constant segment) sits at the training mean: 0 after standardising.
        self.mean_ = np.nanmean(X, axis=0)
        self.mean_ = np.where(np.isfinite(self.mean_), self.mean_, 0.0)
        scale = np.nanstd(X, axis=0)
        self.scale_ = np.where(np.isfinite(scale) & (scale > 0), scale, 1.0)
        lr = LogisticRegression(
            C=float(self.params["C"]),
            class_weight="balanced",  # the same good/defect re-weighting as the forests' scale_pos_weight
            max_iter=int(self.params.get("max_iter", 5000)),
            random_state=self.seed,
        ).fit(self._standardise(X), y)
        self.coef_ = lr.coef_[0].astype(np.float64)
        self.intercept_ = float(lr.intercept_[0])
        return self

    def _standardise(self, X: np.ndarray) -> np.ndarray:
        return np.nan_to_num((np.asarray(X, np.float64) - self.mean_) / self.scale_, nan=0.0, posinf=0.0, neginf=0.0)

    def decision_function(self, X: np.ndarray, prior: np.ndarray | None = None) -> np.ndarray:
        """Raw margins: higher = more likely a defect. ``prior``: as in ``fit``, for a forest fit with one."""
        if self.is_linear:
            return self._standardise(X) @ self.coef_ + self.intercept_
        X = np.asarray(X, np.float32)
        return self.model_.predict(X, base_margin=self._base_margin(prior), output_margin=True).astype(np.float64)

    def contributions(self, X: np.ndarray, prior: np.ndarray | None = None) -> np.ndarray:
        """(N, F + 1): each feature's additive share of each row's margin, the last column the rest (bias,
        and the ensemble start for a forest fit with a prior); rows sum to ``decision_function``.

        A forest's are XGBoost's exact TreeSHAP values (``pred_contribs``); logreg's are its terms, each
        standardised feature times its weight (the feature's share against the training mean)."""
        if self.is_linear:
            terms = self._standardise(X) * self.coef_
            return np.column_stack([terms, np.full(len(terms), self.intercept_)])
        from xgboost import DMatrix

        dm = DMatrix(np.asarray(X, np.float32), base_margin=self._base_margin(prior))
        return self.model_.get_booster().predict(dm, pred_contribs=True).astype(np.float64)

    def feature_importances(self) -> np.ndarray:
        if self.is_linear:
            w = np.abs(self.coef_)
            return (w / w.sum() if w.sum() > 0 else w).astype(np.float32)
        return self.model_.feature_importances_

    def save(self, path: str | Path) -> None:
        """XGBoost's own JSON, or the linear model's arrays as JSON: no pickle either way."""
        if self.is_linear:
            arrays = {"mean": self.mean_, "scale": self.scale_, "coef": self.coef_}
            state = {k: v.tolist() for k, v in arrays.items()} | {"intercept": self.intercept_, "params": self.params}
            Path(path).write_text(json.dumps(state))
            return
        self.model_.save_model(str(path))

    @classmethod
    def load(cls, path: str | Path, preset: str = "brf") -> SegadClassifier:
        if preset == "logreg":
            state = json.loads(Path(path).read_text())
            clf = cls("logreg", **state["params"])
            clf.mean_, clf.scale_, clf.coef_ = (np.asarray(state[k], np.float64) for k in ("mean", "scale", "coef"))
            clf.intercept_ = float(state["intercept"])
            return clf
        from xgboost import XGBClassifier

        clf = cls(preset)
        clf.model_ = XGBClassifier()
        clf.model_.load_model(str(path))
        clf.model_.set_params(n_jobs=1)  # scoring a batch of images: a few hundred rows at most
        return clf
