"""Labels out of (and into) the database: the preference JSONL the reward stage reads, the edited
responses as SFT JSONL, and Label Studio's pairwise JSON in both directions.

Label Studio side: one task per pair, ``data`` = {"prompt", "text1", "text2"} (text1 is the
pair's response A), labelled with the config in docs/human_feedback.md: a ``Pairwise`` tag named
``pw`` (``value.selected`` "left" = text1 better, "right" = text2) and a ``Choices`` tag named
``verdict`` for "tie" / "both_bad".
"""

from __future__ import annotations

import json
import time
from collections import Counter, defaultdict
from datetime import datetime, timezone
from pathlib import Path

from lightning_rlhf.io import atomic_write_bytes
from lightning_rlhf.label.db import CHOICES, LabelDB
from lightning_rlhf.label.queue import labels

AGGREGATES = ("majority", "each")


def preference_rows(rows: list[dict], aggregate: str = "majority") -> tuple[list[dict], dict]:
    """{"prompt", "chosen", "rejected"} rows from live labels, and what was left out.

    ``aggregate``: "majority" gives one row per pair whose most frequent choice is a unique "a"
    or "b" (a pair split between annotators is counted as "split"); "each" gives one row per
    "a"/"b" label. Ties and both-bad judgments are never pairs: they are counted.
    """
    if aggregate not in AGGREGATES:
        raise ValueError(f"aggregate must be one of {list(AGGREGATES)}, got {aggregate!r}")
    by_pair: dict[int, list[dict]] = defaultdict(list)
    for row in rows:
        by_pair[row["pair_id"]].append(row)
    out, left_out = [], Counter()
    for group in by_pair.values():
        if aggregate == "each":
            winners = [r["choice"] for r in group]
        else:
            ranked = Counter(r["choice"] for r in group).most_common()
            split = len(ranked) > 1 and ranked[0][1] == ranked[1][1]
            winners = ["split" if split else ranked[0][0]]
        first = group[0]
        for choice in winners:
            if choice in ("a", "b"):
                chosen, rejected = (
                    (first["text_a"], first["text_b"])
                    if choice == "a"
                    else (first["text_b"], first["text_a"])
                )
                out.append({"prompt": first["prompt"], "chosen": chosen, "rejected": rejected})
            else:
                left_out[choice] += 1
    return out, {"pairs": len(out), **left_out}


def sft_rows(rows: list[dict]) -> list[dict]:
    """{"prompt", "completion"} for every label that carries an edited ideal response."""
    return [{"prompt": r["prompt"], "completion": r["ideal"]} for r in rows if r.get("ideal")]


def write_jsonl(path: str | Path, rows: list[dict]) -> None:
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    atomic_write_bytes(path, text.encode())


def export_preferences(
    db: LabelDB, out: str, sft_out: str | None = None, aggregate: str = "majority"
) -> dict:
    """Write the preference JSONL (and the SFT JSONL); returns the counts written and left out."""
    rows = labels(db)
    prefs, counts = preference_rows(rows, aggregate)
    write_jsonl(out, prefs)
    if sft_out:
        demos = sft_rows(rows)
        write_jsonl(sft_out, demos)
        counts["sft"] = len(demos)
    return {"labels": len(rows), **counts}


def _ls_result(choice: str) -> dict:
    if choice in ("a", "b"):
        value = {"selected": "left" if choice == "a" else "right"}
        return {"from_name": "pw", "to_name": "text1", "type": "pairwise", "value": value}
    return {
        "from_name": "verdict",
        "to_name": "text1",
        "type": "choices",
        "value": {"choices": [choice]},
    }


def to_label_studio(db: LabelDB) -> list[dict]:
    """Every pair as a Label Studio task, with its live labels as annotations."""
    by_pair: dict[int, list[dict]] = defaultdict(list)
    for row in labels(db):
        by_pair[row["pair_id"]].append(row)
    pairs = db.conn.execute(
        "SELECT p.id, pr.text AS prompt, a.text AS text_a, b.text AS text_b, a.model AS model_a, "
        "b.model AS model_b FROM pairs p JOIN prompts pr ON pr.id = p.prompt_id "
        "JOIN responses a ON a.id = p.response_a JOIN responses b ON b.id = p.response_b "
        "ORDER BY p.id"
    ).fetchall()
    return [
        {
            "id": p["id"],
            "data": {
                "prompt": p["prompt"],
                "text1": p["text_a"],
                "text2": p["text_b"],
                "model1": p["model_a"],
                "model2": p["model_b"],
            },
            "annotations": [
                {
                    "result": [_ls_result(r["choice"])],
                    "created_at": datetime.fromtimestamp(r["created"], timezone.utc).isoformat(),
                    "completed_by": r["annotator"],
                }
                for r in by_pair[p["id"]]
            ],
        }
        for p in pairs
    ]


def _ls_choice(annotation: dict) -> str | None:
    for result in annotation.get("result", []):
        value = result.get("value", {})
        if result.get("type") == "pairwise" and value.get("selected") in ("left", "right"):
            return "a" if value["selected"] == "left" else "b"
        picked = [c for c in value.get("choices", []) if c in CHOICES]
        if picked:
            return picked[0]
    return None


def _annotator(annotation: dict) -> str:
    who = annotation.get("completed_by")
    if isinstance(who, dict):
        who = who.get("email") or who.get("id")
    return f"{who}" if who not in (None, "") else "label-studio"


def from_label_studio(db: LabelDB, tasks: list, source: str) -> dict:
    """Add Label Studio tasks as pairs and their annotations as labels; returns the counts.
    A task needs data.prompt, data.text1 and data.text2; annotations without a pairwise or
    known verdict result are skipped and counted."""
    counts = Counter()
    for i, task in enumerate(tasks):
        data = task.get("data", {}) if isinstance(task, dict) else {}
        missing = [k for k in ("prompt", "text1", "text2") if not isinstance(data.get(k), str)]
        if missing:
            raise ValueError(
                f"{source}: task {i} has no text data.{missing[0]}; Label Studio "
                "pairwise tasks need data.prompt, data.text1 and data.text2"
            )
        judged = [(a, _ls_choice(a)) for a in task.get("annotations", [])]
        counts["skipped"] += sum(c is None for _, c in judged)
        judged = [(a, c) for a, c in judged if c is not None]
        models = (data.get("model1", "label-studio"), data.get("model2", "label-studio"))
        with db.transaction() as conn:
            pair_id = db.add_pair(
                data["prompt"],
                (data["text1"], data["text2"]),
                models,
                {},
                want=max(1, len(judged)),
                source=source,
            )
            a = conn.execute("SELECT response_a FROM pairs WHERE id=?", (pair_id,)).fetchone()[0]
            for annotation, choice in judged:
                who = db.ensure_annotator(_annotator(annotation))
                conn.execute(
                    "INSERT OR IGNORE INTO assignments VALUES (?, ?, ?, ?)",
                    (pair_id, who, a, time.time()),
                )
                conn.execute(
                    "INSERT INTO labels (pair_id, annotator_id, choice, left_response, created) "
                    "VALUES (?, ?, ?, ?, ?)",
                    (pair_id, who, choice, a, time.time()),
                )
        counts["pairs"] += 1
        counts["labels"] += len(judged)
    return dict(counts)
