import numpy as np
import pytest

from segad.evaluate import good_moments
from segad.metrics import image_auroc
from segad.selection import (
    CLASSIFIER,
    ENSEMBLE,
    WEIGHTED,
    Evidence,
    ScoreBlend,
    _base_scores,
    auroc_standard_error,
    candidates,
    detector_weights,
    paired_difference_se,
    pooled_spread,
    select,
)


def _rows(n_good: int = 40, n_bad: int = 10, n_gen: int = 0, seed: int = 0):
    rng = np.random.default_rng(seed)
    y = np.r_[np.zeros(n_good), np.ones(n_bad + n_gen)].astype(int)
    real = np.r_[np.ones(n_good + n_bad, bool), np.zeros(n_gen, bool)]
    return rng, y, real


def test_standard_error_matches_a_bootstrap() -> None:
    rng = np.random.default_rng(0)
    n_bad, n_good = 10, 40
    y = np.r_[np.zeros(n_good), np.ones(n_bad)].astype(int)
    scores = np.r_[rng.normal(0, 1, n_good), rng.normal(1.5, 1, n_bad)]
    a = image_auroc(y, scores)
    boot = []
    for _ in range(2000):
        i = np.r_[rng.choice(n_good, n_good), n_good + rng.choice(n_bad, n_bad)]
        boot.append(image_auroc(y[i], scores[i]))
    # Hanley & McNeil's formula is a little conservative against the bootstrap, never optimistic.
    assert np.std(boot) <= auroc_standard_error(a, n_bad, n_good) <= 1.5 * np.std(boot)
    assert auroc_standard_error(0.5, 1000, 1000) == pytest.approx(np.sqrt(1 / 6000), rel=0.01)


def test_paired_difference_error_matches_a_bootstrap_and_is_far_below_one_auroc_s() -> None:
    """DeLong's error of AUROC(a) - AUROC(b): two scores sharing their signal differ far less than either varies."""
    rng = np.random.default_rng(1)
    n_bad, n_good = 10, 40
    y = np.r_[np.zeros(n_good), np.ones(n_bad)].astype(int)
    a = rng.normal(0, 1, n_good + n_bad) + 1.5 * y
    b = a + rng.normal(0, 0.5, len(y))
    boot = []
    for _ in range(2000):
        i = np.r_[rng.choice(n_good, n_good), n_good + rng.choice(n_bad, n_bad)]
        boot.append(image_auroc(y[i], a[i]) - image_auroc(y[i], b[i]))
    se = paired_difference_se(y, a, b)
    assert 0.9 * np.std(boot) <= se <= 1.1 * np.std(boot)
    assert se < 0.6 * auroc_standard_error(image_auroc(y, a), n_bad, n_good)
    assert paired_difference_se(y, a, a) == 0.0


def test_candidates_run_from_the_default_base_to_the_classifier() -> None:
    moments = {"a": (0.0, 1.0), "b": (0.0, 1.0)}
    labels = [c.label for c in candidates(["a", "b"], moments, (0.0, 1.0), {"a": 0.7, "b": 0.3})]
    assert labels[:4] == [WEIGHTED, ENSEMBLE, "a", "b"]
    assert labels[-1] == CLASSIFIER
    assert len(labels) == 4 + 3 * 4 + 1
    # Without weights (the previous rule), the naive ensemble leads.
    assert [c.label for c in candidates(["a", "b"], moments, (0.0, 1.0))][:3] == [ENSEMBLE, "a", "b"]
    # One detector: no separate ensemble.
    assert next(c.label for c in candidates(["a"], {"a": (0.0, 1.0)}, (0.0, 1.0))) == "a"


def test_noise_in_the_classifier_keeps_the_ensemble() -> None:
    rng, y, real = _rows()
    det = {"a": rng.normal(0, 1, len(y)) + 2.0 * y, "b": rng.normal(0, 1, len(y)) + 2.0 * y}
    oof = rng.normal(0, 1, len(y))  # the classifier learned nothing that holds out of fold
    sel = select(oof, det, y, real, {k: good_moments(v[y == 0]) for k, v in det.items()})
    assert sel.blend.label == WEIGHTED
    assert sel.inner_auroc[CLASSIFIER] < sel.inner_auroc[WEIGHTED]
    # Two equally strong detectors get about equal weights (ten shots make them noisy; fifty do not).
    rng, y, real = _rows(n_bad=50)
    det = {"a": rng.normal(0, 1, len(y)) + 2.0 * y, "b": rng.normal(0, 1, len(y)) + 2.0 * y}
    sel = select(rng.normal(0, 1, len(y)), det, y, real, {k: good_moments(v[y == 0]) for k, v in det.items()})
    assert sel.blend.base_weights == pytest.approx({"a": 0.5, "b": 0.5}, abs=0.1)


def test_a_classifier_that_clearly_wins_out_of_fold_is_used() -> None:
    rng, y, real = _rows()
    det = {"a": rng.normal(0, 1, len(y)), "b": rng.normal(0, 1, len(y))}  # detectors at chance
    oof = rng.normal(0, 1, len(y)) + 4.0 * y
    sel = select(oof, det, y, real, {k: good_moments(v[y == 0]) for k, v in det.items()})
    assert sel.blend.weight > 0
    assert sel.inner_auroc[sel.blend.label] > sel.inner_auroc[WEIGHTED] + 0.2


def test_another_base_needs_a_clear_lead_over_the_default() -> None:
    rng, y, real = _rows()
    signal = rng.normal(0, 1, len(y)) + 1.5 * y
    oof = rng.normal(0, 1, len(y))  # a classifier with nothing to add
    # "b" leads the weighted ensemble on the training rows, by less than the noise: the default stays.
    det = {"a": signal + rng.normal(0, 1.5, len(y)), "b": signal + rng.normal(0, 0.3, len(y))}
    ref = {k: good_moments(v[y == 0]) for k, v in det.items()}
    sel = select(oof, det, y, real, ref)
    assert sel.inner_auroc["b"] > sel.inner_auroc[WEIGHTED]
    assert sel.blend.base == WEIGHTED
    # The previous rule: the naive ensemble is the default and a single detector the challenger.
    old = select(oof, det, y, real, ref, base="equal")
    assert WEIGHTED not in old.inner_auroc and old.blend.base == ENSEMBLE
    # A base that is clearly better wins: here the classifier-free ensemble of a useless and a good
    # detector loses to the good one alone, whatever the default base.
    rng, y, real = _rows(n_good=100, n_bad=30, seed=1)
    det = {"a": rng.normal(0, 1, len(y)), "b": rng.normal(0, 1, len(y)) + 1.5 * y}
    ref = {k: good_moments(v[y == 0]) for k, v in det.items()}
    old = select(rng.normal(0, 1, len(y)), det, y, real, ref, base="equal")
    assert old.inner_auroc["b"] > old.inner_auroc[ENSEMBLE] + 0.05
    assert old.blend.base == "b"
    # The weighted ensemble gives the useless detector (almost) no weight.
    sel = select(rng.normal(0, 1, len(y)), det, y, real, ref)
    assert sel.weights["a"] < 0.1 and sel.blend.base in (WEIGHTED, "b")


def test_the_weighted_ensemble_follows_the_weak_defects() -> None:
    """A detector whose weaker defects sit far above good images outweighs one whose sit inside them:
    on fresh images the weighted ensemble beats the naive one (what lost 1-1.5 points on textures)."""
    rng = np.random.default_rng(3)

    def draw(n_good: int, n_bad: int):
        y = np.r_[np.zeros(n_good), np.ones(n_bad)].astype(int)
        return y, {"strong": rng.normal(0, 1, len(y)) + 3.0 * y, "weak": rng.normal(0, 1, len(y)) + 0.8 * y}

    y, det = draw(20, 10)
    ref = {k: good_moments(v[y == 0]) for k, v in det.items()}
    weights = detector_weights({k: (v[y == 1] - ref[k][0]) / ref[k][1] for k, v in det.items()})
    assert weights["strong"] > 0.7
    sel = select(rng.normal(0, 1, len(y)), det, y, np.ones(len(y), bool), ref)
    assert sel.weights == pytest.approx(weights)  # what select computed, whichever base it then chose
    y_test, test = draw(500, 500)
    margins = np.zeros(len(y_test))
    weighted = ScoreBlend(0.0, WEIGHTED, ref, (0.0, 1.0), weights).score(margins, test)
    naive = ScoreBlend(0.0, ENSEMBLE, ref, (0.0, 1.0)).score(margins, test)
    assert image_auroc(y_test, weighted) > image_auroc(y_test, naive) + 0.01


def test_detector_weights() -> None:
    z = {"a": np.array([3.0, 4.0, 5.0, 6.0]), "b": np.array([-1.0, 0.0, 1.0, 9.0])}
    w = detector_weights(z, rule="linear")
    q = {k: max(0.0, float(np.quantile(v, 0.3))) for k, v in z.items()}
    assert w == pytest.approx({k: v / sum(q.values()) for k, v in q.items()})
    assert sum(detector_weights(z).values()) == pytest.approx(1.0)
    assert detector_weights(z) == detector_weights(z)  # the bootstrap has a fixed seed
    # No detector puts its weaker defects above good images: equal weights, not a division by zero.
    for rule in ("linear", "shrunk"):
        assert detector_weights({"a": np.array([-1.0, 0.0]), "b": np.array([-2.0, -1.0])}, rule=rule) == {
            "a": 0.5,
            "b": 0.5,
        }


def test_shrunk_weights_lean_on_a_clearly_better_detector_and_stay_even_where_the_shots_cannot_tell() -> None:
    """Squared, the weights lean harder on a detector whose weak defects clearly sit further out (PaDiM on
    gravel kept a fifth of the weight and only added false alarms); shrunk by their bootstrap noise, they
    stay near equal where ten shots cannot tell two detectors apart (ELPV, where averaging is the gain)."""
    rng = np.random.default_rng(7)
    clear = {"a": rng.normal(4.0, 0.5, 10), "b": rng.normal(1.0, 0.5, 10)}
    assert detector_weights(clear)["a"] > detector_weights(clear, rule="linear")["a"] + 0.05
    assert detector_weights(clear)["a"] > 0.9
    linear_spread, shrunk_spread = [], []
    for _ in range(40):
        tie = {"a": rng.normal(2.0, 1.5, 10), "b": rng.normal(2.0, 1.5, 10)}
        linear_spread.append(abs(detector_weights(tie, rule="linear")["a"] - 0.5))
        shrunk_spread.append(abs(detector_weights(tie)["a"] - 0.5))
    assert np.mean(shrunk_spread) < np.mean(linear_spread)
    assert np.mean(np.array(shrunk_spread) < 1e-12) > 0.5  # mostly exactly equal
    assert np.median(linear_spread) > 0.05


def test_the_weighted_ensemble_is_judged_out_of_sample() -> None:
    """Each judged defect's weighted score uses weights read from the other defects only, as the
    classifier's margins come from fold models that never saw the row."""
    rng = np.random.default_rng(4)
    y = np.r_[np.zeros(20), np.ones(5)].astype(int)
    z = {"a": rng.normal(0, 1, len(y)) + 3.0 * y, "b": rng.normal(0, 1, len(y)) + 1.0 * y}
    full = detector_weights({k: v[y == 1] for k, v in z.items()})
    scores = _base_scores(z, y == 1, ScoreBlend(0.0, WEIGHTED, {k: (0.0, 1.0) for k in z}, (0.0, 1.0), full))
    bad = np.flatnonzero(y == 1)
    assert scores[y == 0] == pytest.approx(sum(full[k] * z[k][y == 0] for k in z))
    for i in bad:
        w = detector_weights({k: v[np.setdiff1d(bad, i)] for k, v in z.items()})
        assert w != pytest.approx(full)  # leaving a shot out moves the weights ...
        assert scores[i] == pytest.approx(sum(w[k] * z[k][i] for k in z))  # ... and its own score uses them
    sel = select(rng.normal(0, 1, len(y)), z, y, np.ones(len(y), bool), {k: (0.0, 1.0) for k in z})
    assert sel.inner_auroc[WEIGHTED] == pytest.approx(image_auroc(y, scores))


def test_the_blend_weight_follows_the_inner_auroc() -> None:
    rng, y, real = _rows()
    det = {"a": rng.normal(0, 1, len(y)) + 1.0 * y, "b": rng.normal(0, 1, len(y)) + 1.0 * y}
    oof = rng.normal(0, 1, len(y)) + 1.0 * y  # as good as a detector, independent of them: blending helps
    sel = select(oof, det, y, real, {k: good_moments(v[y == 0]) for k, v in det.items()})
    assert 0 < sel.blend.weight < 1 and sel.blend.base == WEIGHTED
    family = [c for c in sel.inner_auroc if WEIGHTED in c or c == CLASSIFIER]
    assert sel.inner_auroc[sel.blend.label] == max(sel.inner_auroc[c] for c in family)


def test_generated_defects_do_not_judge_when_there_are_real_shots() -> None:
    rng, y, real = _rows(n_gen=30)
    det = {"a": rng.normal(0, 1, len(y)) + 2.0 * y * real, "b": rng.normal(0, 1, len(y)) + 2.0 * y * real}
    oof = rng.normal(0, 1, len(y)) + 6.0 * (y * ~real)  # perfect on generated defects, chance on real ones
    sel = select(oof, det, y, real, {k: good_moments(v[y == 0]) for k, v in det.items()})
    assert sel.n_defects == 10
    assert sel.blend.weight == 0
    # Without real shots the generated defects are all there is to judge on.
    no_shots = np.r_[np.ones(40, bool), np.zeros(len(y) - 40, bool)]
    assert select(oof, det, y, no_shots, {k: good_moments(v[y == 0]) for k, v in det.items()}).n_defects == len(y) - 40


def test_blend_scores_and_round_trips() -> None:
    blend = ScoreBlend(0.25, "b", {"a": (1.0, 2.0), "b": (3.0, 4.0)}, (5.0, 10.0))
    margins, det = np.array([5.0, 15.0]), {"a": np.array([0.0, 0.0]), "b": np.array([3.0, 11.0])}
    assert blend.score(margins, det) == pytest.approx([0.0, 0.25 * 1.0 + 0.75 * 2.0])
    again = ScoreBlend.from_dict(blend.to_dict())
    assert again == blend and again.label == "0.25 classifier + 0.75 b"
    ens = ScoreBlend(0.0, ENSEMBLE, {"a": (1.0, 2.0), "b": (3.0, 4.0)}, (5.0, 10.0))
    assert ens.score(margins, det) == pytest.approx([(-0.5 + 0.0) / 2, (-0.5 + 2.0) / 2])
    assert ScoreBlend.classifier_only(["a"]).score(margins, {"a": det["a"]}) == pytest.approx(margins)
    weighted = ScoreBlend(0.0, WEIGHTED, {"a": (1.0, 2.0), "b": (3.0, 4.0)}, (5.0, 10.0), {"a": 0.0, "b": 1.0})
    assert weighted.score(margins, {"b": det["b"]}) == pytest.approx([0.0, 2.0])  # "a" has no weight: unread
    assert ScoreBlend.from_dict(weighted.to_dict()) == weighted
    legacy = ens.to_dict()  # a model saved before the weighted ensemble has no detector_weights
    assert "detector_weights" not in legacy and ScoreBlend.from_dict(legacy) == ens


def test_a_classifier_started_from_the_ensemble_is_the_default() -> None:
    rng, y, real = _rows()
    signal = rng.normal(0, 1, len(y)) + 1.5 * y
    det = {"a": signal + rng.normal(0, 0.5, len(y)), "b": signal + rng.normal(0, 0.5, len(y))}
    oof = signal + rng.normal(0, 0.6, len(y))  # about as good as the ensemble, a little worse here
    ref = {k: good_moments(v[y == 0]) for k, v in det.items()}
    sel = select(oof, det, y, real, ref, prefer_classifier=True)
    assert sel.inner_auroc[CLASSIFIER] < max(sel.inner_auroc.values())
    assert sel.blend.label == CLASSIFIER
    assert select(oof, det, y, real, ref).blend.weight < 1  # SegAD's forest from zero: the ensemble's side


def test_the_one_se_weight_rule_takes_the_smallest_weight_within_a_paired_error_of_the_best() -> None:
    """A classifier that adds a little noise-level lift: argmax follows it, the one-SE rule keeps the base."""
    rng, y, real = _rows(n_good=20, n_bad=10, seed=3)
    signal = rng.normal(0, 1, len(y)) + 1.5 * y
    scores = {"a": signal + rng.normal(0, 0.3, len(y)), "b": signal + rng.normal(0, 0.3, len(y))}
    margins = signal + rng.normal(0, 0.6, len(y))
    moments = {d: good_moments(v[y == 0]) for d, v in scores.items()}
    argmax = select(margins, scores, y, real, moments)
    one_se = select(margins, scores, y, real, moments, weight_rule="paired-1se")
    assert argmax.blend.weight > 0  # the blend's inner AUROC is highest ...
    top = argmax.inner_auroc[argmax.blend.label]
    assert top > argmax.inner_auroc[WEIGHTED]
    # ... by less than the paired error, so the rule takes the smallest weight within it: the base alone
    assert one_se.blend.weight == 0.0 and one_se.blend.base == WEIGHTED
    assert one_se.inner_auroc == argmax.inner_auroc  # same evidence, another choice
    # A classifier that separates what the detectors mix up is a lift beyond the error: it is kept.
    clear = 4.0 * y + rng.normal(0, 0.3, len(y))
    assert select(clear, scores, y, real, moments, weight_rule="paired-1se").blend.weight > 0


def test_a_lead_below_half_a_point_does_not_move_the_blend_weight() -> None:
    """Near an inner AUROC of 1 the paired error collapses: three shots that a few good images outrank
    give the classifier a lead beyond it, though of under half a point, the tolerance the final score is
    held to. Such a lead keeps the base (gravel: a classifier share let in on 6 pairs of 2,000 cost test
    images)."""
    good = np.linspace(-2.5, 2.5, 200)
    base = np.r_[good, np.full(7, 6.0), np.full(3, good[-4] + 0.01)]  # three shots below the top 3 goods
    margins = np.r_[good, np.full(10, 6.0)]  # the classifier ranks every shot above every good image
    y = np.r_[np.zeros(200), np.ones(10)].astype(int)
    real = np.ones(len(y), bool)
    ref = {"a": good_moments(good)}
    floor = select(margins, {"a": base}, y, real, ref, weight_rule="paired-1se")
    lead = floor.inner_auroc[CLASSIFIER] - floor.inner_auroc["a"]
    assert 0 < lead < 0.005 and lead > paired_difference_se(y, margins, base)
    assert floor.blend.weight == 0.0
    assert select(margins, {"a": base}, y, real, ref, weight_rule="paired-1se", min_effect=0.0).blend.weight > 0


def test_the_separation_weight_rule_follows_how_far_the_weaker_defects_sit_out() -> None:
    """Within a base, the weight whose judged defects' 0.3 quantile is furthest above the good rows wins:
    a classifier that only adds noise is mostly left out (ten shots make the quantile itself noisy, so
    over draws), one that separates what the detectors mix up is always taken."""
    noise_weights, clear_weights = [], []
    for seed in range(20):
        rng, y, real = _rows(n_good=20, n_bad=10, seed=seed)
        signal = rng.normal(0, 1, len(y)) + 3.0 * y
        scores = {"a": signal + rng.normal(0, 0.3, len(y)), "b": signal + rng.normal(0, 0.3, len(y))}
        moments = {d: good_moments(v[y == 0]) for d, v in scores.items()}
        noise = rng.normal(0, 1, len(y))
        noise_weights.append(select(noise, scores, y, real, moments, weight_rule="separation").blend.weight)
        clear = 10.0 * y + rng.normal(0, 0.3, len(y))
        clear_weights.append(select(clear, scores, y, real, moments, weight_rule="separation").blend.weight)
    assert np.mean(noise_weights) < 0.15 and np.mean(np.array(noise_weights) == 0) > 0.5
    assert min(clear_weights) >= 0.75


def test_more_good_images_out_of_fold_show_what_the_held_out_ones_cannot() -> None:
    """20 good rows and 10 shots: both detectors separate them perfectly. The fit images, out of fold
    (segad.judging), show that "b" puts a fifth of the good images above the shots: its inner AUROC
    falls and the weighted ensemble moves its weight to "a"."""
    rng, y, real = _rows(n_good=20, n_bad=10)
    det = {
        "a": np.r_[rng.normal(0, 1, 20), rng.normal(6, 0.5, 10)],
        "b": np.r_[rng.normal(0, 1, 20), rng.normal(4, 0.5, 10)],
    }
    ref = {k: good_moments(v[y == 0]) for k, v in det.items()}
    oof = rng.normal(0, 1, len(y))
    held_out = select(oof, det, y, real, ref)
    assert held_out.inner_auroc["a"] == held_out.inner_auroc["b"] == 1.0
    n = 300
    good_b = np.where(rng.random(n) < 0.2, rng.normal(8, 1, n), rng.normal(0, 1, n))
    evidence = Evidence(oof, det, rng.normal(0, 1, n), {"a": rng.normal(0, 1, n), "b": good_b})
    judged = select(oof, det, y, real, ref, evidence=evidence)
    assert judged.n_good == 20 + n
    assert judged.inner_auroc["b"] < 0.85 < judged.inner_auroc["a"]
    assert judged.blend.base in (WEIGHTED, "a")
    # The weights are read where they are applied, from the deployed models' shots, against the held-out
    # images' mean and a spread the fit images correct (here the fold and deployed scores agree on the
    # held-out images, so "b"'s spread is all its good images'): they move to "a".
    spread = {k: pooled_spread(v[:20], v[:20], evidence.good_scores[k]) for k, v in det.items()}
    assert spread["a"] == pytest.approx(np.std(np.r_[det["a"][:20], evidence.good_scores["a"]]))
    shots = {k: (v[y == 1] - ref[k][0]) / spread[k] for k, v in det.items()}
    assert judged.weights == pytest.approx(detector_weights(shots))
    assert judged.weights["a"] > held_out.weights["a"] + 0.1
    # Against the held-out images' own spread (the rule before) they stay where the held-out rows put them.
    own_spread = select(oof, det, y, real, ref, evidence=evidence, weights_from="held-out")
    assert own_spread.weights == pytest.approx(held_out.weights)
    from_evidence = select(oof, det, y, real, ref, evidence=evidence, weights_from="judged")
    assert from_evidence.weights["a"] > 0.95 > held_out.weights["a"] + 0.1
    # The deployed blend keeps the deployed models' references: the held-out images, the deployed margins.
    assert judged.blend.detector_moments == ref
    assert judged.blend.margin_moments == good_moments(oof[y == 0])


def test_the_pooled_spread_corrects_the_held_out_spread_as_far_as_the_two_models_agree() -> None:
    """Deployed scores affine in the fold scores: the spread is exactly the fold models' spread over
    every good image, in deployed units. Unrelated scores: the held-out spread, uncorrected. A fold view
    that finds the held-out images typical: the held-out spread."""
    rng = np.random.default_rng(0)
    fold_held, fit = rng.normal(0, 1, 20), rng.normal(0, 3, 300)  # the held-out draw looks too calm
    fold_all = np.r_[fold_held, fit]
    assert pooled_spread(5.0 + 2.0 * fold_held, fold_held, fit) == pytest.approx(2.0 * np.std(fold_all))
    assert pooled_spread(-2.0 * fold_held, fold_held, fit) == pytest.approx(2.0 * np.std(fold_all))
    unrelated = rng.normal(0, 1, 20)
    unrelated -= np.polyval(np.polyfit(fold_held, unrelated, 1), fold_held) - unrelated.mean()  # slope 0
    assert pooled_spread(unrelated, fold_held, fit) == pytest.approx(np.std(unrelated))
    deployed = fold_held + rng.normal(0, 0.5, 20)
    assert pooled_spread(deployed, fold_held, fold_held) == pytest.approx(np.std(deployed))
    # Partly related: widened by what the fold view adds, in proportion to the squared slope.
    half = 0.5 * fold_held + rng.normal(0, 0.5, 20)
    assert 1.5 * np.std(half) < pooled_spread(half, fold_held, fit) < 0.6 * np.std(fold_all)
    assert pooled_spread(deployed[:2], fold_held[:2], fit) == pytest.approx(np.std(deployed[:2]))  # too few


def test_the_evidence_is_judged_against_its_own_good_rows() -> None:
    """Fold models score everything a little higher than the full one, and a classifier on their features
    has margins on its own scale: judged against the evidence's own good rows, a change of scale and
    offset changes nothing; against the deployed references it would reweigh every blend."""
    rng, y, real = _rows()
    det = {"a": rng.normal(0, 1, len(y)) + 2.0 * y, "b": rng.normal(0, 1, len(y)) + 1.0 * y}
    ref = {k: good_moments(v[y == 0]) for k, v in det.items()}
    oof = rng.normal(0, 1, len(y)) + 1.5 * y
    good, good_margins = {"a": rng.normal(0, 1, 50), "b": rng.normal(0, 1, 50)}, rng.normal(0, 1, 50)
    base = select(oof, det, y, real, ref, evidence=Evidence(oof, det, good_margins, good))
    shift = {"a": 3.0, "b": -2.0}
    moved = Evidence(
        3.0 * oof + 5.0,
        {d: 2.0 * v + shift[d] for d, v in det.items()},
        3.0 * good_margins + 5.0,
        {d: 2.0 * v + shift[d] for d, v in good.items()},
    )
    other = select(oof, det, y, real, ref, evidence=moved)
    assert other.inner_auroc == pytest.approx(base.inner_auroc)
    assert other.weights == pytest.approx(base.weights)
    assert other.blend.label == base.blend.label


def test_judged_on_every_good_image_the_blend_weight_takes_the_one_se_rule() -> None:
    """With the fit images' evidence the inner AUROCs no longer tie, so the argmax would chase the classifier's
    noise on ten shots: the blend weight is the smallest within a paired error of the best."""
    rng, y, real = _rows(n_good=20, n_bad=10, seed=0)  # a draw where the argmax takes a classifier share
    det = {"a": rng.normal(0, 1, len(y)) + 2.0 * y, "b": rng.normal(0, 1, len(y)) + 1.5 * y}
    ref = {k: good_moments(v[y == 0]) for k, v in det.items()}
    oof = rng.normal(0, 1, len(y)) + 1.0 * y  # a classifier about as good as the detectors
    n = 200
    evidence = Evidence(oof, det, rng.normal(0, 1, n), {"a": rng.normal(0, 1, n), "b": rng.normal(0, 1, n)})
    kw = {"evidence": evidence, "weights_from": "judged"}  # the weights as this draw was picked for
    judged = select(oof, det, y, real, ref, **kw)
    one_se = select(oof, det, y, real, ref, weight_rule="paired-1se", **kw)
    argmax = select(oof, det, y, real, ref, weight_rule="argmax", **kw)
    assert judged.blend.label == one_se.blend.label
    assert one_se.blend.weight < argmax.blend.weight  # the argmax took a classifier share the evidence did not need
    held_out = select(oof, det, y, real, ref)
    assert held_out.blend.label == select(oof, det, y, real, ref, weight_rule="argmax").blend.label
