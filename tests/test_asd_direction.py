"""bench/probes/asd_direction.py splits ASD's direction into its guidance and asynchronous terms through the loss's own
code; bench/probes/gt_ceiling.py colours splits `asd eval`'s colour error into bias and placement."""

import pytest
import torch

PROMPTS = ["a red cube on top of a blue sphere", "a green cylinder"]


@pytest.fixture(scope="module")
def rows(load_bench):
    return load_bench("probes/asd_direction").direction_table("bundled", PROMPTS, ts=(200,), shift_ratios=(0.0, 0.5))


def test_without_a_shift_the_direction_is_guidance_alone(rows):
    still = rows[0]
    assert still["shift_ratio"] == 0.0 and still["dt"] == 0.0
    assert still["async"] < 1e-4  # ε̂_c(z_t, t) − ε̂_c(z_t, t): the same prediction twice (rows of one batch)
    assert still["cos"] == pytest.approx(1.0, abs=1e-5)  # every scale then points the same way
    assert still["guidance@7.5"] == pytest.approx(still["guidance@3"] * 6.5 / 2.0, rel=1e-4)


def test_a_shift_adds_an_asynchronous_term_that_turns_the_direction(rows):
    shifted = rows[1]
    assert shifted["dt"] > 0 and shifted["async"] > 0.0
    assert shifted["cos"] < 1.0 - 1e-4
    assert shifted["guidance@3"] == pytest.approx(rows[0]["guidance@3"], rel=1e-4)  # Δt leaves guidance alone


def test_scales_at_or_below_one_are_refused(load_bench):
    from asdcli.errors import UserError

    with pytest.raises(UserError, match="--scales"):
        load_bench("probes/asd_direction").direction_table("bundled", PROMPTS, scales=(1.0, 7.5))


def test_colour_split_reports_asd_evals_colour_error(load_bench):
    from asdcli.engine.inference import load_model
    from asdcli.shapes.evaluation import ground_truth_metrics

    split = load_bench("probes/gt_ceiling").colour_split("bundled", PROMPTS)
    reported = ground_truth_metrics(load_model(None), PROMPTS, res=32)["color_error"]
    assert split["color_error"] == pytest.approx(sum(reported) / len(reported), abs=1e-6)
    assert 0.0 <= split["placement_error"] < split["color_error"]


def test_median_correction_removes_a_per_object_bias_only(load_bench):
    median_corrected = load_bench("probes/gt_ceiling")._median_corrected
    gt = torch.tensor([[0.8, 0.1, 0.1]] * 4 + [[0.1, 0.1, 0.8]] * 4)
    owner = torch.tensor([0] * 4 + [1] * 4)
    biased = gt + torch.tensor([0.1, -0.05, 0.0])  # one colour shift on both objects: bias, no placement error
    assert torch.allclose(median_corrected(biased, gt, owner), gt, atol=1e-6)
    swapped = torch.cat([gt[4:5].expand(2, 3), gt[:2], gt[4:]])  # half of object 0 wears object 1's colour
    assert (median_corrected(swapped, gt, owner) - gt).abs().mean() > 0.1


def test_excess_reads_washed_out_as_less_chroma_and_more_brightness(load_bench):
    excess = load_bench("probes/gt_ceiling")._excess
    red = torch.tensor([[0.8, 0.1, 0.1]] * 3)
    chroma, brightness = excess(torch.tensor([[0.9, 0.3, 0.3]] * 3), red)  # lighter and greyer
    assert chroma == pytest.approx(0.6 - 0.7, abs=1e-6) and brightness == pytest.approx(1.5 / 3 - 1.0 / 3, abs=1e-6)
    chroma, brightness = excess(torch.tensor([[1.0, 0.0, 0.0]] * 3), red)  # saturated, same lightness
    assert chroma == pytest.approx(0.3, abs=1e-6) and brightness == pytest.approx(0.0, abs=1e-6)


@pytest.fixture(scope="module")
def mechanism(load_bench):
    from asdcli.bundled import bundled_checkpoint

    rows = load_bench("probes/asd_direction").mechanism_rows
    return {eta: rows(bundled_checkpoint(), PROMPTS, ts=(200,), eta=eta)[0] for eta in (0.0, 0.5)}


def test_mechanism_at_eta_zero_asd_is_csd_scaled(mechanism):
    still = mechanism[0.0]
    assert still["step"] == 10000 and still["scale"] == pytest.approx(1.5)  # the bundled recipe's late scale
    assert still["async"] < 1e-4
    assert still["asd"] == pytest.approx(still["guidance"], rel=1e-3)  # ε̂_cfg − ε̂_c = (s − 1)(ε_c − ε_u)
    assert still["cos_asd_csd"] == pytest.approx(1.0, abs=1e-4)
    assert still["pcos_asd_csd"] == pytest.approx(1.0, abs=1e-4)  # the same gradient on the generator's weights
    assert still["cos_asd_sds"] < 0.99  # SDS's residual ε̂_cfg − ε is another direction


def test_mechanism_with_a_shift_turns_asd_away_from_csd(mechanism):
    shifted, still = mechanism[0.5], mechanism[0.0]
    assert shifted["async"] > 1e-3
    assert shifted["guidance"] == pytest.approx(still["guidance"], rel=1e-4)  # Δt leaves the guidance term alone
    assert shifted["sds_residual"] == pytest.approx(still["sds_residual"], rel=1e-4)
    assert shifted["cos_asd_csd"] < 1.0 - 1e-4
    assert shifted["asd"] <= shifted["guidance"] + shifted["async"] + 1e-5
