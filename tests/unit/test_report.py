from lightning_rlhf.report import read_series, write_report


def write_csv(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    keys = sorted({k for r in rows for k in r})
    path.write_text(
        ",".join(keys)
        + "\n"
        + "".join(",".join(str(r.get(k, "")) for k in keys) + "\n" for r in rows)
    )


def test_read_series_skips_rows_without_the_metric(tmp_path):
    p = tmp_path / "m.csv"
    write_csv(
        p,
        [
            {"step": 1, "train/kl": 0.5},
            {"step": 2, "val/oracle_score": 0.7},
            {"step": 3, "train/kl": 0.25},
        ],
    )
    assert read_series(p, "train/kl") == ([1.0, 3.0], [0.5, 0.25])


def test_report_has_the_score_table_and_one_plot_per_logged_curve(tmp_path):
    runs = tmp_path / "runs"
    write_csv(
        runs / "ppo/csv/version_0/metrics.csv",
        [{"step": s, "train/kl_k1": s / 10, "train/reward": s} for s in range(5)],
    )
    summary = {
        "oracle_score": {
            "base": {"all": 0.0, "add": 0.0},
            "sft": {"all": 0.5, "add": 0.4},
            "ppo": {"all": 0.75, "add": 0.6},
        },
        "seconds": {"sft": 10.0, "reward": 5.0, "ppo": 20.0},
        "reward_accuracy": 0.9,
        "ppo_last_iteration": {"kl": 0.4, "beta": 0.1},
    }
    report = write_report(summary, runs, tmp_path / "out")
    text = report.read_text()
    assert "| sft | 0.500 | 0.40 | 10 s |" in text
    assert "| ppo | 0.750 | 0.60 | 20 s |" in text
    assert "pairwise accuracy 0.900" in text and "KL(π‖πref) 0.400" in text
    pngs = sorted(p.name for p in (tmp_path / "out").glob("*.png"))
    assert pngs == ["ppo_train_kl_k1.png", "ppo_train_reward.png"]  # SFT/RM logs absent: no plots
    assert all(f"]({name})" in text for name in pngs)
    assert (tmp_path / "out" / pngs[0]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
