"""The labeling database, queue, agreement statistics and exports (no web server here)."""

import json
import math
import random
import sqlite3

import pytest

from lightning_rlhf.label.db import LabelDB, LabelDBError, ServerLock
from lightning_rlhf.label.export import (
    export_preferences,
    from_label_studio,
    preference_rows,
    to_label_studio,
)
from lightning_rlhf.label.queue import add_label, labels, next_pair, progress, undo_last
from lightning_rlhf.label.stats import (
    agreement_report,
    cohen_kappa,
    fleiss_kappa,
    raw_agreement,
)


def _db(tmp_path, n=4, want=1):
    db = LabelDB(tmp_path / "labels.sqlite")
    for i in range(n):
        db.add_pair(f"p{i}", (f"good{i}", f"bad{i}"), ("m1", "m2"), {"temperature": 1.0}, want=want)
    return db


def test_schema_wal_and_newer_version_refused(tmp_path):
    db = _db(tmp_path, 1)
    assert db.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    db.conn.execute("UPDATE meta SET value='7' WHERE key='schema_version'")
    db.close()
    with pytest.raises(
        LabelDBError, match="schema version 7, newer than this lightning_rlhf reads"
    ):
        LabelDB(tmp_path / "labels.sqlite")
    con = sqlite3.connect(tmp_path / "labels.sqlite")  # left untouched: the pair is still there
    assert con.execute("SELECT COUNT(*) FROM pairs").fetchone()[0] == 1


def test_second_server_refused_until_the_first_lets_go(tmp_path):
    path = tmp_path / "labels.sqlite"
    first = ServerLock(path)
    with pytest.raises(LabelDBError, match="already served by another label server"):
        ServerLock(path)
    first.release()
    ServerLock(path).release()


def test_queue_sides_labels_undo_and_progress(tmp_path):
    db = _db(tmp_path, 2)
    alice = db.ensure_annotator("alice")
    shown = next_pair(db, alice, random.Random(0))
    assert next_pair(db, alice)["pair_id"] == shown["pair_id"]  # pending until labelled
    better = "left" if shown["left"]["text"].startswith("good") else "right"
    add_label(db, alice, shown["pair_id"], better, reason="correct")
    with pytest.raises(LabelDBError, match="already labelled"):
        add_label(db, alice, shown["pair_id"], "tie")
    assert labels(db)[0]["choice"] == "a"  # stored against the pair's order, not the screen's
    assert progress(db)["labelled"] == 1 and progress(db)["per_annotator"] == {"alice": 1}
    assert undo_last(db, alice) == shown["pair_id"]
    assert progress(db)["labelled"] == 0
    again = next_pair(db, alice)
    assert again["pair_id"] == shown["pair_id"] and again["left"] == shown["left"]
    add_label(db, alice, again["pair_id"], "both_bad")
    other = next_pair(db, alice)
    add_label(db, alice, other["pair_id"], "tie")
    assert next_pair(db, alice) is None
    assert db.conn.execute("SELECT COUNT(*) FROM labels").fetchone()[0] == 3  # undo keeps rows
    with pytest.raises(LabelDBError, match="not given to this annotator"):
        add_label(db, db.ensure_annotator("bob"), other["pair_id"], "tie")


def test_overlap_caps_annotators_per_pair(tmp_path):
    db = LabelDB(tmp_path / "labels.sqlite")
    db.add_pair("p", ("x", "y"), ("m", "m"), {}, want=2)
    db.add_pair("q", ("x", "y"), ("m", "m"), {}, want=1)
    seen = [next_pair(db, db.ensure_annotator(n)) for n in "abcd"]
    assert [s and s["pair_id"] for s in seen] == [1, 1, 2, None]


def test_a_lapsed_slot_goes_to_the_next_annotator(tmp_path):
    db = _db(tmp_path, 1)
    alice, bob = db.ensure_annotator("alice"), db.ensure_annotator("bob")
    shown = next_pair(db, alice)
    assert next_pair(db, bob, lease_s=3600) is None  # alice holds the one slot
    assert next_pair(db, bob, lease_s=0)["pair_id"] == shown["pair_id"]  # her lease lapsed
    with pytest.raises(LabelDBError, match="not given to this annotator"):
        add_label(db, alice, shown["pair_id"], "tie")
    add_label(db, bob, shown["pair_id"], "tie")
    assert next_pair(db, alice, lease_s=0) is None  # a label holds its slot for good
    assert db.conn.execute("SELECT COUNT(*) FROM assignments").fetchone()[0] == 1


def test_agreement_statistics_against_hand_computed_values():
    # Cohen: p_o = 4/5; p_e = 3/5·2/5 + 2/5·3/5 = 0.48; κ = 0.32 / 0.52
    assert cohen_kappa(list("aabba"), list("abbba")) == pytest.approx(0.32 / 0.52, abs=1e-12)
    # Fleiss, 3 items × 3 raters: P̄ = (1 + 1/3 + 1) / 3 = 7/9, p = (5/9, 4/9), P_e = 41/81
    items = [list("aaa"), list("aab"), list("bbb")]
    assert fleiss_kappa(items) == pytest.approx((7 / 9 - 41 / 81) / (40 / 81), abs=1e-12)
    assert raw_agreement(items) == pytest.approx(7 / 9, abs=1e-12)
    # Fleiss (1971)'s worked example as in its Wikipedia article: 10 items, 14 raters, κ = 0.210
    table = [
        [0, 0, 0, 0, 14],
        [0, 2, 6, 4, 2],
        [0, 0, 3, 5, 6],
        [0, 3, 9, 2, 0],
        [2, 2, 8, 1, 1],
        [7, 7, 0, 0, 0],
        [3, 2, 6, 3, 0],
        [2, 5, 3, 2, 2],
        [6, 5, 2, 1, 0],
        [0, 2, 2, 3, 7],
    ]
    wiki = [[j for j, c in enumerate(row) for _ in range(c)] for row in table]
    assert round(fleiss_kappa(wiki), 3) == 0.210 and round(raw_agreement(wiki), 3) == 0.378
    assert math.isnan(cohen_kappa(["a", "a"], ["a", "a"]))  # chance agreement 1: undefined
    rows = [
        {"pair_id": p, "annotator": n, "choice": c}
        for p, n, c in [(1, "x", "a"), (1, "y", "a"), (2, "x", "b"), (2, "y", "a"), (3, "x", "a")]
    ]
    report = agreement_report(rows)
    assert report["overlapping_pairs"] == 2 and report["raw_agreement"] == 0.5
    assert report["cohen_kappa"]["x|y"]["pairs"] == 2


def test_preference_rows_majority_and_each():
    def row(pair, choice, who):
        return {
            "pair_id": pair,
            "annotator": who,
            "choice": choice,
            "prompt": f"p{pair}",
            "text_a": "A",
            "text_b": "B",
        }

    rows = [
        row(1, "a", "x"),
        row(1, "a", "y"),
        row(2, "a", "x"),
        row(2, "b", "y"),
        row(3, "tie", "x"),
        row(4, "both_bad", "x"),
        row(5, "b", "x"),
    ]
    out, counts = preference_rows(rows, "majority")
    assert out == [
        {"prompt": "p1", "chosen": "A", "rejected": "B"},
        {"prompt": "p5", "chosen": "B", "rejected": "A"},
    ]
    assert counts == {"pairs": 2, "split": 1, "tie": 1, "both_bad": 1}
    assert preference_rows(rows, "each")[1]["pairs"] == 5


def test_export_and_label_studio_round_trip(tmp_path):
    db = _db(tmp_path, 3)
    me = db.ensure_annotator("me")
    for side, ideal in [("left", "ideal one"), ("right", None), ("tie", None)]:
        shown = next_pair(db, me)
        add_label(db, me, shown["pair_id"], side, ideal=ideal)
    counts = export_preferences(db, str(tmp_path / "p.jsonl"), str(tmp_path / "s.jsonl"))
    assert counts == {"labels": 3, "pairs": 2, "tie": 1, "sft": 1}
    prefs = [json.loads(line) for line in (tmp_path / "p.jsonl").read_text().splitlines()]
    assert set(prefs[0]) == {"prompt", "chosen", "rejected"}
    assert json.loads((tmp_path / "s.jsonl").read_text())["completion"] == "ideal one"
    tasks = to_label_studio(db)
    assert len(tasks) == 3 and tasks[0]["data"]["text1"] == "good0"
    other = LabelDB(tmp_path / "other.sqlite")
    assert from_label_studio(other, json.loads(json.dumps(tasks)), "ls.json") == {
        "pairs": 3,
        "labels": 3,
        "skipped": 0,
    }
    key = lambda r: (r["prompt"], r["choice"], r["annotator"])  # noqa: E731
    assert sorted(map(key, labels(other))) == sorted(map(key, labels(db)))
    with pytest.raises(ValueError, match="task 0 has no text data.text2"):
        from_label_studio(other, [{"data": {"prompt": "p", "text1": "x"}}], "bad.json")


def test_stats_command_reports_agreement(tmp_path, capsys):
    from lightning_rlhf.label.cli import main as label_main

    db = _db(tmp_path, 3, want=2)
    x, y = db.ensure_annotator("x"), db.ensure_annotator("y")
    for who, sides in [(x, ["tie", "tie", "both_bad"]), (y, ["tie", "both_bad", "both_bad"])]:
        for side in sides:
            add_label(db, who, next_pair(db, who)["pair_id"], side)
    label_main(["stats", "--db", str(tmp_path / "labels.sqlite")])
    report = json.loads(capsys.readouterr().out)
    # x: tie, tie, bad; y: tie, bad, bad -> p_o = 2/3, p_e = (2·1 + 1·2)/9 = 4/9, κ = (2/9)/(5/9)
    assert report["cohen_kappa"]["x|y"] == {"pairs": 3, "kappa": pytest.approx(0.4)}
    assert report["progress"]["per_annotator"] == {"x": 3, "y": 3}
    assert report["raw_agreement"] == pytest.approx(2 / 3)
