"""Does the saved model's threshold keep ``--target-fpr`` on unseen good images?

``segad.train`` gives every seed's model the threshold the saved model gets (split-conformal on the
out-of-fold final scores of its held-out good images, ``segad.calibration``) and applies it to that
seed's test set, which neither the classifier nor the choice of the final score saw: the share of
test good images flagged (the deployed FPR) and of test defects flagged (TPR). The binomial 95%
interval is the range of FPRs a threshold with exactly the target rate would show on that many good
images.

    python experiments/bench_threshold.py --data elpv --category mono
    python experiments/bench_threshold.py --data textures --category gravel --image-size 128 --holdout 0.5
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
from scipy.stats import binom

from segad.config import build_parser, config_from
from segad.selection import choice_summary
from segad.train import run


def main(argv: list[str] | None = None) -> None:
    cfg = replace(config_from(vars(build_parser("bench_threshold.py").parse_args(argv))), no_mlflow=True)
    result = run(cfg)
    deps = result.deployments
    fpr, tpr = np.array([d.fpr for d in deps]), np.array([d.tpr for d in deps])
    n = deps[0].n_good
    lo, hi = binom.ppf(0.025, n, cfg.target_fpr) / n, binom.ppf(0.975, n, cfg.target_fpr) / n
    cal = deps[0].calibration
    print(
        f"\n{result.dataset}: {cfg.shots} shots, {len(deps)} seeds, {cal.n_good} held-out good (conformal bound "
        f"{cal.guaranteed_fpr:.3f}), {n} test good; target FPR {cfg.target_fpr} (binomial 95% interval "
        f"{lo:.3f}-{hi:.3f}); final score: {choice_summary(result.selections)}"
    )
    for sp_seed, d, sel in zip(result.seeds, deps, result.selections, strict=True):
        print(f"  seed {sp_seed}: FPR {d.fpr:.3f}, TPR {d.tpr:.3f} ({sel.blend.label})")
    print(f"{'FPR seed 1':>10} {'FPR mean ± std':>16} {'TPR mean ± std':>16}")
    print(f"{fpr[0]:>10.3f} {fpr.mean():>8.3f} ± {fpr.std():.3f} {tpr.mean():>8.3f} ± {tpr.std():.3f}")


if __name__ == "__main__":
    main()
