"""The MLflow pyfunc wrapper of a saved SegadPipeline, logged as *model code* (nothing pickled).

Input, any of:
- a DataFrame with an ``image_path`` column, plus ``segment_path`` for models whose segments are
  user-provided label maps, and ``<name>_map`` (and ``<name>_score`` when it was trained on given scores)
  for each input whose maps were computed elsewhere (``--maps``);
- a list of image paths;
- raw RGB images as numpy arrays: one (H, W[, C]) image, an (N, H, W, C) stack, or a list of them.

The pipeline applies the run's resize and intensity adjustment itself. Output: a DataFrame with
``score``, ``decision``, ``error`` and ``warning`` per image (an unreadable image gets its error, no
score and no decision (``<NA>``); the others are still scored; ``warning`` says when an image's size or
aspect is unlike the training images').
"""

from __future__ import annotations

from typing import Any

import mlflow
import numpy as np
import pandas as pd


class SegadPyfunc(mlflow.pyfunc.PythonModel):
    # The input is a DataFrame, a list of paths or image arrays, which no type hint of MLflow's schema
    # language covers; predict checks it itself (InputError). This is MLflow's switch for models that
    # validate their own input, and it spares every run MLflow's "add type hints" warning.
    _skip_type_hint_validation = True

    def load_context(self, context: Any) -> None:
        from segad.pipeline import SegadPipeline

        self.pipeline = SegadPipeline.load(context.artifacts["pipeline"])

    def predict(self, context, model_input, params=None):
        from detectors.errors import InputError
        from segad.pipeline import image_list

        seg_paths, given_columns = None, {}
        if isinstance(model_input, pd.DataFrame):
            if "image_path" not in model_input:
                raise InputError(f"the input DataFrame needs an image_path column; got {list(model_input.columns)}")
            images = list(model_input["image_path"])
            seg_paths = list(model_input["segment_path"]) if "segment_path" in model_input else None
            for name in self.pipeline.given_maps:
                if f"{name}_map" not in model_input:
                    raise InputError(
                        f"this model stacks maps computed elsewhere: the input DataFrame needs a {name}_map column "
                        f"(each image's map file); got {list(model_input.columns)}"
                    )
                score = list(model_input[f"{name}_score"]) if f"{name}_score" in model_input else None
                given_columns[name] = list(model_input[f"{name}_map"]), score
        else:
            images = image_list(model_input)
        arrays, ok, errors, warnings = [], [], [""] * len(images), [""] * len(images)
        for i, image in enumerate(images):
            try:
                read = self.pipeline.read(image)
            except (InputError, OSError) as e:
                errors[i] = str(e)
                continue
            arrays.append(read.array)
            warnings[i] = read.note
            ok.append(i)
        scores = np.full(len(images), np.nan)
        # Nullable: an image that could not be read is neither good nor defective (<NA>), never "good".
        decisions = pd.array([pd.NA] * len(images), dtype="boolean")
        if ok:
            names = [str(images[i]) if not isinstance(images[i], np.ndarray) else f"image {i}" for i in ok]
            given = {
                n: ([m[i] for i in ok], None if sc is None else [sc[i] for i in ok])
                for n, (m, sc) in given_columns.items()
            }
            out = self.pipeline.predict_batch(
                np.stack(arrays), None if seg_paths is None else [seg_paths[i] for i in ok], names, given
            )
            scores[ok], decisions[ok] = out.scores, out.decisions
        return pd.DataFrame({"score": scores, "decision": decisions, "error": errors, "warning": warnings})


mlflow.models.set_model(SegadPyfunc())
