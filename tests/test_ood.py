"""OOD score calibration (conformal threshold) and evaluation, synthetic and through the real pipeline."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from pai_core import ModelError
from pai_core.cli import main
from pai_core.ood import OODParams, auroc, calibrate, conformal_threshold, score_episodes
from pai_core.pipeline import Pipeline
from pai_core.sources.dataset import open_dataset

CAMERA = {"observation.images.front": (96, 128)}


def binomial_tolerance(p: float, n: int, sigmas: float = 4.5) -> float:
    """Half-width of a normal-approximation binomial band: a correct rate falls outside it with
    probability below 1e-5 at 4.5 sigma."""
    return sigmas * math.sqrt(p * (1 - p) / n)


@pytest.mark.parametrize("n, alpha", [(19, 0.1), (99, 0.05), (300, 0.01)])
def test_conformal_threshold_keeps_the_false_alarm_rate_of_exchangeable_scores_at_alpha(n, alpha):
    """Split conformal guarantees alpha - 1/(n+1) <= P(fresh score > threshold) <= alpha for continuous
    exchangeable scores. 20,000 independent calibrations, one fresh score each, heavy-tailed scores."""
    rng = np.random.default_rng(n)
    trials = 20_000
    calibration = rng.lognormal(0.0, 1.5, size=(trials, n))
    fresh = rng.lognormal(0.0, 1.5, size=trials)
    thresholds = np.array([conformal_threshold(row, alpha) for row in calibration])
    rate = float(np.mean(fresh > thresholds))
    tol = binomial_tolerance(alpha, trials)
    assert alpha - 1 / (n + 1) - tol <= rate <= alpha + tol, (rate, alpha)


def test_the_seeds_mean_plus_sigma_rule_misses_alpha_where_conformal_does_not():
    """The check above can fail: on the same heavy-tailed scores mean + 2.5 sigma is far off 1 %."""
    rng = np.random.default_rng(0)
    calibration, fresh = rng.lognormal(0, 1.5, 5000), rng.lognormal(0, 1.5, 20_000)
    seed_rate = np.mean(fresh > calibration.mean() + 2.5 * calibration.std())
    conformal_rate = np.mean(fresh > conformal_threshold(calibration, 0.01))
    assert abs(conformal_rate - 0.01) <= binomial_tolerance(0.01, 20_000) + 1 / 5001
    assert abs(seed_rate - 0.01) > binomial_tolerance(0.01, 20_000)


def test_conformal_threshold_names_the_frames_it_needs_for_a_small_alpha():
    with pytest.raises(ValueError, match="needs at least 99 calibration frames, got 50"):
        conformal_threshold(np.arange(50.0), 0.01)
    with pytest.raises(ValueError, match="alpha=1.5"):
        conformal_threshold(np.arange(50.0), 1.5)


def test_auroc_equals_the_share_of_ood_ood_pairs_ranked_above_with_ties_counting_half():
    rng = np.random.default_rng(1)
    neg, pos = rng.integers(0, 10, 200).astype(float), rng.integers(3, 14, 150).astype(float)
    pairs = (pos[:, None] > neg[None, :]).mean() + 0.5 * (pos[:, None] == neg[None, :]).mean()
    assert auroc(neg, pos) == pytest.approx(pairs, abs=1e-12)
    assert auroc(neg, neg + 100) == 1.0 and auroc(neg + 100, neg) == 0.0


def test_ood_params_round_trip_with_the_score_distribution(tmp_path):
    scores = np.random.default_rng(2).gamma(2.0, size=500)
    params = calibrate(scores, 0.05)
    params.dataset, params.episodes = "ds", [3, 4]
    loaded = OODParams.load(params.save(tmp_path / "ood_params.json"))
    assert loaded == params
    assert sum(loaded.histogram["counts"]) == 500 and loaded.calibration_quantiles["q1000"] == scores.max()
    (tmp_path / "bad.json").write_text('{"threshold": 1, "unknown": 2}')
    with pytest.raises(ModelError, match="bad.json"):
        OODParams.load(tmp_path / "bad.json")


# ------------------------------------------------------------------------------ the real pipeline
@pytest.fixture
def world(ood_world):
    """A small ACT, an SAE trained on 6 clean episodes (2 held out), fresh clean and dark datasets
    (``conftest.ood_world``)."""
    return ood_world


def test_calibration_keeps_the_false_alarm_rate_on_fresh_in_distribution_episodes_near_alpha(world, capsys):
    base, policy, held_eps = world
    alpha = 0.1
    assert (
        main(
            [
                "calibrate-ood",
                "--sae-path",
                str(base / "sae"),
                "--policy-path",
                str(policy),
                "--dataset-repo-id",
                "pai/synthetic",
                "--root",
                str(base / "train"),
                "--alpha",
                str(alpha),
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out  # LeRobot prints a line of its own before the JSON
    report = json.loads(printed[printed.index("{") :])
    params = OODParams.load(base / "sae" / "ood_params.json")
    assert params.score == "sae_recon_mse"
    assert params.episodes == held_eps and params.n_calibration == 20 * len(held_eps) == report["frames"]
    assert params.alpha == alpha and (base / "sae" / "ood_calibration.png").stat().st_size > 10_000
    pipe = Pipeline.load(str(policy), str(base / "sae"))
    fresh = score_episodes(pipe, open_dataset("pai/synthetic", base / "fresh"), progress=False)
    scores = np.concatenate([e.scores for e in fresh])
    rate = float(np.mean(scores > params.threshold))
    # 60 fresh frames: 3 binomial sigmas around alpha (frames within an episode are correlated, so the
    # band is a sanity bound rather than an exact test; the exact test is the synthetic one above).
    assert rate <= alpha + 3 * math.sqrt(alpha * (1 - alpha) / scores.size), rate
    assert report["empirical_rate_on_calibration"] <= alpha  # conformal rank: at most alpha * n frames above


def test_the_standardised_score_fits_on_a_quarter_of_the_episodes_and_calibrates_on_the_rest(world, capsys, tmp_path):
    base, policy, held_eps = world
    out = tmp_path / "ood_params.json"
    assert (
        main(
            [
                "calibrate-ood",
                "--sae-path",
                str(base / "sae"),
                "--policy-path",
                str(policy),
                "--dataset-repo-id",
                "pai/synthetic",
                "--root",
                str(base / "train"),
                "--alpha",
                "0.1",
                "--score",
                "sae_recon_z",
                "--ood-params-path",
                str(out),
            ]
        )
        == 0
    )
    capsys.readouterr()
    params = OODParams.load(out)
    n_fit = max(1, len(held_eps) // 4)
    assert params.score == "sae_recon_z" and len(params.token_mean) == 2 + 12  # latent, state, 3x4 camera tokens
    assert params.episodes == held_eps[n_fit:] and params.n_calibration == 20 * len(params.episodes)
    scores = score_episodes(
        Pipeline(
            Pipeline.load(str(policy), str(base / "sae")).engine,
            Pipeline.load(str(policy), str(base / "sae")).extractor,
            params,
        ),
        open_dataset("pai/synthetic", base / "fresh"),
        progress=False,
    )
    assert np.all(np.isfinite(np.concatenate([e.scores for e in scores])))


def test_token_knn_score_uses_the_training_episodes_as_reference_and_separates_dark_images(world, calibrate_copy):
    base, policy, held_eps = world
    sae, params = calibrate_copy("token_knn")
    assert params.score == "token_knn" and (sae / params.reference).is_file()
    assert params.episodes == held_eps  # calibrated on frames the reference never saw
    pipe = Pipeline.load(str(policy), str(sae))
    fresh = np.concatenate(
        [e.scores for e in score_episodes(pipe, open_dataset("pai/synthetic", base / "fresh"), progress=False)]
    )
    dark = np.concatenate(
        [e.scores for e in score_episodes(pipe, open_dataset("pai/synthetic", base / "dark"), progress=False)]
    )
    assert auroc(fresh, dark) > 0.95 and np.mean(dark > params.threshold) > 0.9
    assert np.mean(fresh > params.threshold) <= 0.1 + 3 * math.sqrt(0.1 * 0.9 / fresh.size)


def test_evaluate_ood_separates_dark_images_and_reports_false_alarms_and_delay(world, capsys):
    base, policy, _ = world
    if not (base / "sae" / "ood_params.json").is_file():
        main(
            [
                "calibrate-ood",
                "--sae-path",
                str(base / "sae"),
                "--policy-path",
                str(policy),
                "--dataset-repo-id",
                "pai/synthetic",
                "--root",
                str(base / "train"),
                "--alpha",
                "0.1",
            ]
        )
        capsys.readouterr()
    out = base / "eval"
    assert (
        main(
            [
                "evaluate-ood",
                "--sae-path",
                str(base / "sae"),
                "--policy-path",
                str(policy),
                "--id",
                str(base / "fresh"),
                "--ood",
                str(base / "dark"),
                "--alarm-n",
                "3",
                "--alarm-m",
                "5",
                "--output-dir",
                str(out),
            ]
        )
        == 0
    )
    result = json.loads((out / "ood_evaluation.json").read_text())
    assert result["auroc"] > 0.95 and result["tpr_at_threshold"] > 0.8
    assert [e["episode"] for e in result["in_distribution_episodes"]] == [0, 1, 2]
    assert all(0 <= e["false_alarm_rate"] <= 1 for e in result["in_distribution_episodes"])
    for episode in result["ood_episodes"]:
        assert episode["detected"] and 2 <= episode["delay_frames"] < 20  # 3 of 5 needs at least 3 frames
        assert episode["delay_s"] == pytest.approx(episode["delay_frames"] / 10)  # 10 fps
    assert result["ood_datasets"]["dark"]["frames"] == 40
    assert (out / "ood_evaluation.png").stat().st_size > 10_000


def test_evaluate_ood_without_calibration_says_to_run_calibrate_ood_first(world, tmp_path, capsys):
    base, policy, _ = world
    assert (
        main(
            [
                "evaluate-ood",
                "--sae-path",
                str(base / "sae"),
                "--policy-path",
                str(policy),
                "--id",
                str(base / "fresh"),
                "--ood",
                str(base / "dark"),
                "--ood-params-path",
                str(tmp_path / "none.json"),
            ]
        )
        == 1
    )
    assert "run `pai calibrate-ood" in capsys.readouterr().err


def test_standardised_score_weighs_each_token_position_by_its_own_clean_spread():
    from pai_core.ood import OODParams, fit_token_standardizer, frame_scores

    rng = np.random.default_rng(0)
    scale = np.array([10.0, 1.0, 0.1, 0.1])  # a loud position and two quiet ones
    clean = rng.normal(1.0, 1.0, (500, 4)) * scale + 5 * scale
    mean, std = fit_token_standardizer(clean)
    params = OODParams(threshold=0.0, score="sae_recon_z", token_mean=mean, token_std=std)
    shifted = clean[:100].copy()
    shifted[:, 2] += 1.0  # a change in a quiet position: 10 of its standard deviations
    from pai_core.ood import auroc

    assert auroc(frame_scores(clean[100:], params), frame_scores(shifted, params)) > 0.99
    assert auroc(frame_scores(clean[100:]), frame_scores(shifted)) < 0.7  # the plain mean barely sees it
    with pytest.raises(ModelError, match="standardises 4 token positions but the policy produced 3 tokens"):
        frame_scores(clean[:, :3], params)
    with pytest.raises(ValueError, match="score='nn' is not one of"):
        OODParams(threshold=0.0, score="nn")


def test_the_cli_offers_exactly_the_scores_and_signals_the_registry_holds():
    from pai_core.configs import OOD_SCORES, OOD_SIGNALS
    from pai_core.ood import SCORERS

    assert sorted(OOD_SCORES + OOD_SIGNALS) == sorted(SCORERS)


def test_a_calibration_job_names_the_setting_it_refuses(tmp_path):
    from pai_core.errors import UsageError
    from pai_core.ood.calibration import CalibrationJob

    base = dict(sae_path=tmp_path, policy_path=tmp_path, dataset_repo_id="x", root=tmp_path)
    with pytest.raises(UsageError, match="--alpha 1.5"):
        CalibrationJob(**base, ood_params_path=tmp_path / "o.json", alpha=1.5)
    with pytest.raises(UsageError, match="--score 'mahalanobis'"):
        CalibrationJob(**base, ood_params_path=tmp_path / "o.json", score="mahalanobis")  # type: ignore[arg-type]
    with pytest.raises(UsageError, match="--signals"):
        CalibrationJob(**base, ood_params_path=tmp_path / "o.json", signals=["entropy"])  # type: ignore[list-item]
