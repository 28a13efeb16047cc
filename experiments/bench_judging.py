"""What judging the final score on every good image costs (``segad.judging``): the detectors' fold refits
and the extra predictions, timed without the cache, next to one full fit and prediction of the same run.

    python experiments/bench_judging.py --data textures --category grass [--judge-folds 5]
"""

from __future__ import annotations

import time
from dataclasses import replace

from segad.config import build_parser, config_from
from segad.judging import JUDGE_FOLDS, cross_fit, judging_images
from segad.prepare import plan


def main(argv: list[str] | None = None) -> None:
    cfg = config_from(vars(build_parser("bench_judging.py").parse_args(argv)))
    folds = cfg.judge_folds or JUDGE_FOLDS
    p = plan(replace(cfg, no_mlflow=True, judge_folds=0))
    request = replace(p.request, cache=None)  # every fit and map computed here, none read
    judged = judging_images(len(p.fs.holdout_good), [sp.train_defects for sp in p.splits])
    print(
        f"{p.ds.name}/{p.ds.category}: {len(request.fit_set)} fit images, {len(request.score_set)} scored, "
        f"{len(judged)} of them judging"
    )
    for name, source in p.sources.items():
        t0 = time.perf_counter()
        source.maps(request, lambda _: None)
        full = time.perf_counter() - t0
        t0 = time.perf_counter()
        cross_fit({name: source}, request, folds, lambda _: None, judged)  # type: ignore[dict-item]
        folded = time.perf_counter() - t0
        ratio = folded / full
        print(f"{name}: fit + predict {full:.1f} s; {folds} fold refits + predictions {folded:.1f} s ({ratio:.1f}x)")


if __name__ == "__main__":
    main()
