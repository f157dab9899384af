"""The demo's seeds table: medians and ranges of each stage's score, gain over SFT and time."""

from lightning_rlhf.demo import main, seeds_table


def summary(seed, sft, ppo, acc, kl):
    return {
        "seed": seed,
        "oracle_score": {"base": {"all": 0.0}, "sft": {"all": sft}, "ppo": {"all": ppo}},
        "seconds": {"sft": 100.0 + seed, "reward": 50.0, "ppo": 90.0 + 10 * seed},
        "reward_accuracy": acc,
        "ppo_last_iteration": {"kl": kl},
    }


def test_seeds_table_gives_medians_and_ranges_of_scores_gains_and_times():
    table = seeds_table(
        [
            summary(0, 0.8, 0.9, 0.93, 0.5),
            summary(1, 0.7, 0.95, 0.91, 0.7),
            summary(2, 0.75, 1.0, 0.95, 0.6),
        ]
    )
    rows = {line.split(" | ")[0].lstrip("| "): line for line in table.splitlines()}
    assert "seeds 0, 1, 2" in table
    assert rows["sft"] == "| sft | 0.750 (0.700–0.800) | – | 101 (100–102) |"
    # gains 0.10, 0.25, 0.25: per seed, not the difference of the medians (0.20)
    assert rows["ppo"] == "| ppo | 0.950 (0.900–1.000) | +0.250 (+0.100–+0.250) | 100 (90–110) |"
    assert (
        rows["reward model"]
        == "| reward model | pairwise accuracy 0.930 (0.910–0.950) | | 50 (50–50) |"
    )
    assert "0.600 (0.500–0.700) nats" in table


def test_seeds_must_be_integers(capsys):
    import pytest

    with pytest.raises(SystemExit):
        main(["--seeds", "0,one"])
    assert "--seeds" in capsys.readouterr().err
