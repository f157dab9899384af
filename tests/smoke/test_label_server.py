"""The labeling server over real HTTP: SIGKILL loses no confirmed label, one server per
database, CSRF and tokens enforced, and 20 concurrent annotators within the overlap."""

import sqlite3
import subprocess
import sys
import threading
from collections import Counter

import pytest

from tests.label_server import ROOT, Annotator, Server, need_label_extra, queued_db

need_label_extra()


def test_sigkill_loses_no_confirmed_label_and_a_second_server_refuses(tmp_path):
    db = queued_db(tmp_path / "labels.sqlite", 30)
    server = Server(db)
    try:
        second = subprocess.run(
            [sys.executable, "-m", "lightning_rlhf.label", "--db", str(db), "--port", "1"],
            capture_output=True,
            text=True,
            cwd=ROOT,
            timeout=120,
        )
        assert second.returncode != 0 and "already served by another label server" in second.stderr
        me = Annotator(server.url)
        confirmed = {}
        for i in range(20):
            pair = me.next()
            choice = ["left", "right", "tie", "both_bad"][i % 4]
            r = me.label(pair["pair_id"], choice, reason=f"r{i}")
            assert r.status_code == 200 and r.json()["ok"], r.text
            confirmed[pair["pair_id"]] = f"r{i}"
    finally:
        server.kill()
    con = sqlite3.connect(db)
    stored = dict(con.execute("SELECT pair_id, reason FROM labels WHERE undone IS NULL"))
    assert stored == confirmed
    Server(db).stop()  # the kill left no lock behind: a new server starts on the same file


def test_csrf_tokens_and_bad_requests(tmp_path):
    db = queued_db(tmp_path / "labels.sqlite", 3)
    server = Server(db, "--annotators", "alice:alice-secret-1,bob:bob-secret-22")
    try:
        import httpx

        assert httpx.get(server.url + "/api/next").status_code == 401
        alice = Annotator(server.url, "alice-secret-1")
        pair = alice.next()
        forged = alice.http.post("/api/label", json={"pair_id": pair["pair_id"], "choice": "tie"})
        assert forged.status_code == 403 and "X-CSRF-Token" in forged.json()["error"]
        bob = Annotator(server.url, "bob-secret-22")
        stolen = bob.http.post(
            "/api/label",
            json={"pair_id": pair["pair_id"], "choice": "tie"},
            headers={"X-CSRF-Token": alice.csrf},
        )
        assert stolen.status_code == 403
        assert bob.label(pair["pair_id"], "tie").status_code in (200, 409)  # given to bob too?
        assert alice.label(pair["pair_id"], "sideways").status_code == 409
        assert alice.label(pair["pair_id"], "left").status_code == 200
        assert alice.label(pair["pair_id"], "left").status_code == 409  # never twice
        assert alice.undo().json() == {"ok": True, "pair_id": pair["pair_id"]}
        stats = alice.http.get("/stats")
        assert stats.status_code == 200 and "Cohen's kappa" in stats.text
        assert alice.http.get("/api/stats").json()["progress"]["per_annotator"]["alice"] == 0
        rebound = httpx.get(server.url + "/api/progress", headers={"Host": "evil.example"})
        assert rebound.status_code == 400  # a rebound DNS name is not this machine
    finally:
        server.stop()
    refused = subprocess.run(
        [sys.executable, "-m", "lightning_rlhf.label", "--db", str(db), "--host", "0.0.0.0"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert refused.returncode != 0 and "pass --annotators" in refused.stderr


@pytest.mark.slow  # ~30 s on 2 shared cores: 2,000 requests
def test_twenty_concurrent_annotators_within_the_overlap(tmp_path):
    # 300 pairs wanted by 3 annotators and 400 by one: 1,300 slots for 20 × 50 = 1,000 labels
    db = tmp_path / "labels.sqlite"
    queued_db(db, 300, want=3)
    from lightning_rlhf.label.db import LabelDB

    more = LabelDB(db)
    with more.transaction():
        for i in range(400):
            more.add_pair(f"s{i}", (f"x{i}", f"y{i}"), ("m1", "m2"), {}, -1000.0 - i, 1)
    more.close()
    people = {f"a{i}": f"token-{i:04d}-secret" for i in range(20)}
    server = Server(db, "--annotators", ",".join(f"{n}:{t}" for n, t in people.items()))
    done, errors = Counter(), []

    def work(name: str, token: str) -> None:
        try:
            me = Annotator(server.url, token)
            for _ in range(50):
                pair = me.next()
                r = me.label(pair["pair_id"], "left")
                assert r.status_code == 200, r.text
                done[name] += 1
        except Exception as err:  # reported below, with the annotator's name
            errors.append(f"{name}: {err!r}")

    threads = [threading.Thread(target=work, args=item) for item in people.items()]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(300)
    finally:
        server.stop()
    assert errors == [] and sum(done.values()) == 1000
    con = sqlite3.connect(db)
    rows = con.execute("SELECT pair_id, annotator_id FROM labels WHERE undone IS NULL").fetchall()
    assert len(rows) == 1000 and len(set(rows)) == 1000  # none lost, none twice
    over = con.execute(
        "SELECT COUNT(*) FROM pairs p WHERE p.want < (SELECT COUNT(*) FROM assignments s "
        "WHERE s.pair_id = p.id)"
    ).fetchone()[0]
    assert over == 0
    per_annotator = Counter(a for _, a in rows)
    assert set(per_annotator.values()) == {50}
    assert max(Counter(p for p, _ in rows).values()) == 3  # the overlapping pairs were shared


@pytest.mark.parametrize("bad", ["alice", "alice:short"])
def test_bad_annotator_spec(bad):
    from lightning_rlhf.label.cli import parse_annotators

    with pytest.raises(ValueError, match="name:token with a token of at least 8"):
        parse_annotators(bad)


def test_label_is_a_tool_of_the_package_cli(tmp_path):
    from lightning_rlhf.cli import main

    with pytest.raises(SystemExit, match="label database .* does not exist"):
        main(["label", "stats", "--db", str(tmp_path / "missing.sqlite")])
