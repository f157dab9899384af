"""The queue: which pair an annotator sees next, their labels, undo, and progress.

A pair is handed to at most ``pairs.want`` annotators (1, or the overlap K for the overlapping
share): handing out is an assignment row written in the same ``BEGIN IMMEDIATE`` transaction that
counted the pair's assignments, so concurrent requests cannot both take its last slot. An
annotator keeps their pending assignment until they label it (a reload shows the same pair, on
the same sides).
"""

from __future__ import annotations

import random
import time

from lightning_rlhf.label.db import LabelDB, LabelDBError

SIDES = ("left", "right", "tie", "both_bad")

_PAIR = (
    "SELECT p.id AS pair_id, pr.text AS prompt, p.response_a, p.response_b, "
    "a.text AS text_a, b.text AS text_b, a.model AS model_a, b.model AS model_b "
    "FROM pairs p JOIN prompts pr ON pr.id = p.prompt_id "
    "JOIN responses a ON a.id = p.response_a JOIN responses b ON b.id = p.response_b "
    "WHERE p.id = ?"
)


def _shown(db: LabelDB, pair_id: int, left_response: int) -> dict:
    row = db.conn.execute(_PAIR, (pair_id,)).fetchone()
    a = {"id": row["response_a"], "text": row["text_a"]}
    b = {"id": row["response_b"], "text": row["text_b"]}
    left, right = (a, b) if left_response == row["response_a"] else (b, a)
    return {"pair_id": pair_id, "prompt": row["prompt"], "left": left, "right": right}


_HELD = (
    "(EXISTS (SELECT 1 FROM labels l WHERE l.pair_id = s.pair_id AND l.annotator_id = "
    "s.annotator_id AND l.undone IS NULL) OR s.assigned > :cutoff)"
)


def next_pair(
    db: LabelDB, annotator_id: int, rng: random.Random | None = None, lease_s: float = 1800.0
) -> dict | None:
    """The annotator's pending pair, else the highest-priority pair with a free slot they have
    not seen (assigned now, sides drawn at random); None when nothing is left for them.

    A slot is held by a label, or by an assignment handed out (or shown again) in the last
    ``lease_s`` seconds: the slot of someone who walked away is given to the next annotator,
    whose assignment replaces theirs.

    Returns {"pair_id", "prompt", "left": {"id", "text"}, "right": {"id", "text"}}.
    """
    rng = rng or random.SystemRandom()
    now = time.time()
    args = {"me": annotator_id, "cutoff": now - lease_s, "now": now}
    with db.transaction() as conn:
        pending = conn.execute(
            "SELECT s.pair_id, s.left_response FROM assignments s WHERE s.annotator_id = :me "
            "AND NOT EXISTS (SELECT 1 FROM labels l WHERE l.pair_id = s.pair_id AND "
            "l.annotator_id = :me AND l.undone IS NULL) ORDER BY s.assigned, s.pair_id LIMIT 1",
            args,
        ).fetchone()
        if pending is not None:
            conn.execute(  # shown again: the lease restarts
                "UPDATE assignments SET assigned = :now WHERE pair_id = :pair AND "
                "annotator_id = :me",
                args | {"pair": pending["pair_id"]},
            )
            return _shown(db, pending["pair_id"], pending["left_response"])
        free = conn.execute(
            "SELECT p.id, p.response_a, p.response_b FROM pairs p WHERE NOT EXISTS "
            "(SELECT 1 FROM assignments s WHERE s.pair_id = p.id AND s.annotator_id = :me) "
            f"AND (SELECT COUNT(*) FROM assignments s WHERE s.pair_id = p.id AND {_HELD}) "
            "< p.want ORDER BY p.priority DESC, p.id LIMIT 1",
            args,
        ).fetchone()
        if free is None:
            return None
        conn.execute(  # lapsed slots of this pair: their holders lose them
            f"DELETE FROM assignments AS s WHERE s.pair_id = :pair AND NOT {_HELD}",
            args | {"pair": free["id"]},
        )
        left = free["response_a"] if rng.random() < 0.5 else free["response_b"]
        conn.execute(
            "INSERT INTO assignments (pair_id, annotator_id, left_response, assigned) "
            "VALUES (?, ?, ?, ?)",
            (free["id"], annotator_id, left, now),
        )
        return _shown(db, free["id"], left)


def add_label(
    db: LabelDB,
    annotator_id: int,
    pair_id: int,
    side: str,
    reason: str | None = None,
    ideal: str | None = None,
) -> int:
    """Record the annotator's judgment of a pair assigned to them and commit it; returns the
    label's id. ``side``: "left" / "right" (that response is better), "tie", "both_bad"."""
    if side not in SIDES:
        raise LabelDBError(f"choice must be one of {list(SIDES)}, got {side!r}")
    with db.transaction() as conn:
        shown = conn.execute(
            "SELECT s.left_response, p.response_a FROM assignments s JOIN pairs p "
            "ON p.id = s.pair_id WHERE s.pair_id = ? AND s.annotator_id = ?",
            (pair_id, annotator_id),
        ).fetchone()
        if shown is None:
            raise LabelDBError(f"pair {pair_id} was not given to this annotator")
        if conn.execute(
            "SELECT 1 FROM labels WHERE pair_id = ? AND annotator_id = ? AND undone IS NULL",
            (pair_id, annotator_id),
        ).fetchone():
            raise LabelDBError(f"pair {pair_id} is already labelled by this annotator")
        left_is_a = shown["left_response"] == shown["response_a"]
        choice = {"left": "a" if left_is_a else "b", "right": "b" if left_is_a else "a"}.get(
            side, side
        )
        return conn.execute(
            "INSERT INTO labels (pair_id, annotator_id, choice, left_response, reason, ideal, "
            "created) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                pair_id,
                annotator_id,
                choice,
                shown["left_response"],
                reason or None,
                ideal or None,
                time.time(),
            ),
        ).lastrowid


def undo_last(db: LabelDB, annotator_id: int) -> int | None:
    """Mark the annotator's latest live label undone (kept, never deleted); its pair becomes
    their pending pair again. Returns the pair's id, None when there is nothing to undo."""
    with db.transaction() as conn:
        row = conn.execute(
            "SELECT id, pair_id FROM labels WHERE annotator_id = ? AND undone IS NULL "
            "ORDER BY created DESC, id DESC LIMIT 1",
            (annotator_id,),
        ).fetchone()
        if row is None:
            return None
        conn.execute("UPDATE labels SET undone = ? WHERE id = ?", (time.time(), row["id"]))
        return row["pair_id"]


def progress(db: LabelDB) -> dict:
    """Counts: live labels, labels wanted in all, pairs, pairs with all their labels, and live
    labels per annotator (every annotator listed, zeros included)."""
    with db._lock:
        c = db.conn
        labelled = c.execute("SELECT COUNT(*) FROM labels WHERE undone IS NULL").fetchone()[0]
        wanted, pairs = c.execute("SELECT COALESCE(SUM(want), 0), COUNT(*) FROM pairs").fetchone()
        complete = c.execute(
            "SELECT COUNT(*) FROM pairs p WHERE p.want <= (SELECT COUNT(*) FROM labels l "
            "WHERE l.pair_id = p.id AND l.undone IS NULL)"
        ).fetchone()[0]
        per = c.execute(
            "SELECT n.name, (SELECT COUNT(*) FROM labels l WHERE l.annotator_id = n.id "
            "AND l.undone IS NULL) FROM annotators n ORDER BY n.name"
        ).fetchall()
    return {
        "labelled": labelled,
        "wanted": wanted,
        "pairs": pairs,
        "pairs_complete": complete,
        "per_annotator": {name: n for name, n in per},
    }


def labels(db: LabelDB) -> list[dict]:
    """Every live label with its pair's texts and models, oldest first."""
    with db._lock:
        rows = db.conn.execute(
            "SELECT l.id, l.pair_id, n.name AS annotator, l.choice, l.reason, l.ideal, "
            "l.left_response, l.created, pr.text AS prompt, a.text AS text_a, b.text AS text_b, "
            "a.model AS model_a, b.model AS model_b, p.response_a FROM labels l "
            "JOIN annotators n ON n.id = l.annotator_id JOIN pairs p ON p.id = l.pair_id "
            "JOIN prompts pr ON pr.id = p.prompt_id JOIN responses a ON a.id = p.response_a "
            "JOIN responses b ON b.id = p.response_b WHERE l.undone IS NULL ORDER BY l.id"
        ).fetchall()
    return [dict(r) for r in rows]
