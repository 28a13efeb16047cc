"""The MLflow pyfunc wrapper of a saved SegadPipeline, logged as *model code* (nothing pickled).

Input: a DataFrame with an ``image_path`` column, plus ``segment_path`` for models whose segments are
user-provided label maps (or a list of paths, or an (N, 3, H, W) array of model-ready images).
Output: a DataFrame with ``score`` and ``decision`` per image, and ``error`` for unreadable paths.
"""

from __future__ import annotations

from typing import Any

import mlflow
import numpy as np
import pandas as pd


class SegadPyfunc(mlflow.pyfunc.PythonModel):
    def load_context(self, context: Any) -> None:
        from segad.pipeline import SegadPipeline

        self.pipeline = SegadPipeline.load(context.artifacts["pipeline"])

    def predict(self, context, model_input, params=None):  # untyped: MLflow reads type hints as a schema
        from segad.data.images import load_image

        if isinstance(model_input, np.ndarray) and model_input.ndim == 4:
            out = self.pipeline.predict(model_input.astype(np.float32))
            return pd.DataFrame({"score": out.scores, "decision": out.decisions})
        frame = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame({"image_path": model_input})
        paths = list(frame["image_path"])
        seg_paths = list(frame["segment_path"]) if "segment_path" in frame else None
        images, ok, errors = [], [], [""] * len(paths)
        for i, p in enumerate(paths):
            try:
                images.append(load_image(p, self.pipeline.image_size, self.pipeline.intensity))
                ok.append(i)
            except (OSError, ValueError) as e:
                errors[i] = str(e)
        scores = np.full(len(paths), np.nan)
        decisions = np.zeros(len(paths), bool)
        if ok:
            out = self.pipeline.predict(np.stack(images), None if seg_paths is None else [seg_paths[i] for i in ok])
            scores[ok], decisions[ok] = out.scores, out.decisions
        return pd.DataFrame({"score": scores, "decision": decisions, "error": errors})


mlflow.models.set_model(SegadPyfunc())
