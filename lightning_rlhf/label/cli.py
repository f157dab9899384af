"""``python -m lightning_rlhf label``: fill the queue and serve the page; export, import, stats.

label --policy artifacts/sft [--against artifacts/ppo] --prompts FILE --db labels.sqlite
label export --db labels.sqlite --out prefs.jsonl [--sft-out sft.jsonl]
label stats --db labels.sqlite
label export-ls --db labels.sqlite --out tasks.json     # Label Studio pairwise tasks
label import-ls --db labels.sqlite --file tasks.json
label rerank --db labels.sqlite --order uncertainty --reward artifacts/rm
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from lightning_rlhf.label.db import ORDERS

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


def parse_annotators(spec: str | None) -> dict[str, str]:
    """``name:token,name:token`` (or ``@FILE`` holding that, one per line) -> {token: name}."""
    if not spec:
        return {}
    text = Path(spec[1:]).read_text() if spec.startswith("@") else spec
    out: dict[str, str] = {}
    for item in text.replace("\n", ",").split(","):
        if not item.strip():
            continue
        name, sep, token = item.strip().partition(":")
        if not sep or not name or len(token) < 8:
            raise ValueError(
                f"--annotators entry {item.strip()!r}: write name:token with a token of at "
                "least 8 characters (e.g. alice:$(openssl rand -hex 16))"
            )
        if token in out or name in out.values():
            raise ValueError(f"--annotators: {name!r} or its token appears twice")
        out[token] = name
    return out


def _serve_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="lightning_rlhf label",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--db", required=True, help="the SQLite file (created if absent)")
    p.add_argument("--policy", help="policy dir to sample from (omit to serve the queue as is)")
    p.add_argument("--against", help="second policy: one response from each (default: 2 samples)")
    p.add_argument("--prompts", help="prompt file (a 'prompt' column), needed with --policy")
    p.add_argument("--num-pairs", type=int, default=100, help="pairs to queue for these models")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--overlap", type=int, default=1, help="annotators per overlapping pair (K)")
    p.add_argument("--overlap-share", type=float, default=0.2, help="share of pairs shown to K")
    p.add_argument("--order", choices=ORDERS, default="random")
    p.add_argument("--reward", nargs="+", action="extend", default=[], help="reward model dir(s)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8765)
    p.add_argument("--annotators", help="name:token,... or @FILE (required off 127.0.0.1)")
    p.add_argument(
        "--lease-minutes",
        type=float,
        default=30.0,
        help="a shown, unlabelled pair is reserved this long, then others may take it",
    )
    p.add_argument("--fill-only", action="store_true", help="queue the pairs, do not serve")
    return p


def serve(argv: list[str]) -> None:
    a = _serve_parser().parse_args(argv)
    tokens = parse_annotators(a.annotators)
    if a.host not in LOCAL_HOSTS and not tokens:
        raise ValueError(
            f"--host {a.host} exposes the page beyond this machine: pass --annotators "
            "name:token,... so that only people with a token can label (or use 127.0.0.1)"
        )
    from lightning_rlhf.label.db import LabelDB, ServerLock

    lock = ServerLock(a.db)  # before the fill: two fills of one database would interleave
    db = LabelDB(a.db)
    try:
        if a.policy:
            _fill(db, a)
        if not a.fill_only:
            _run_server(db, a, tokens)
    finally:
        db.close()
        lock.release()


def _fill(db, a: argparse.Namespace) -> None:
    from lightning_rlhf.label.fill import fill_queue
    from lightning_rlhf.rollout import SamplingOptions

    if not a.prompts:
        raise ValueError("--policy needs --prompts FILE (a file with a 'prompt' column)")
    sampling = SamplingOptions(
        max_new_tokens=a.max_new_tokens, temperature=a.temperature, top_p=a.top_p
    )
    counts = fill_queue(
        db,
        a.policy,
        a.prompts,
        a.against,
        a.num_pairs,
        sampling,
        a.overlap,
        a.overlap_share,
        a.order,
        a.reward,
        a.seed,
    )
    print(f"queue: {json.dumps(counts)}", flush=True)


def _run_server(db, a: argparse.Namespace, tokens: dict[str, str]) -> None:
    try:
        import uvicorn

        from lightning_rlhf.label.app import create_app
    except ImportError as err:
        raise ImportError(
            f"the labeling app needs the 'label' extra ({err}): pip install -e '.[label]'"
        ) from err
    app = create_app(db, tokens, a.host in LOCAL_HOSTS, lease_s=60 * a.lease_minutes)
    where = f"http://{a.host}:{a.port}/"
    links = [f"{where}?token={t}  ({n})" for t, n in tokens.items()] or [where]
    print("serving " + "\n        ".join(links), flush=True)
    uvicorn.run(app, host=a.host, port=a.port, log_level="warning", access_log=False)


def _db_parser(prog: str, description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"lightning_rlhf label {prog}", description=description)
    p.add_argument("--db", required=True)
    return p


def export(argv: list[str]) -> dict:
    from lightning_rlhf.label.db import LabelDB
    from lightning_rlhf.label.export import AGGREGATES, export_preferences

    p = _db_parser("export", export_preferences.__doc__)
    p.add_argument("--out", required=True, help="preference JSONL (prompt/chosen/rejected)")
    p.add_argument("--sft-out", help="JSONL of the edited ideal responses (prompt/completion)")
    p.add_argument("--aggregate", choices=AGGREGATES, default="majority")
    a = p.parse_args(argv)
    counts = export_preferences(_existing(LabelDB, a.db), a.out, a.sft_out, a.aggregate)
    print(json.dumps(counts))
    return counts


def stats(argv: list[str]) -> dict:
    from lightning_rlhf.label.db import LabelDB
    from lightning_rlhf.label.queue import labels, progress
    from lightning_rlhf.label.stats import agreement_report, json_safe

    a = _db_parser("stats", "progress and agreement (raw, Cohen's and Fleiss' kappa)").parse_args(
        argv
    )
    db = _existing(LabelDB, a.db)
    report = {"progress": progress(db), **agreement_report(labels(db))}
    print(json.dumps(json_safe(report), indent=1))
    return report


def label_studio(argv: list[str], direction: str) -> dict:
    from lightning_rlhf.io import atomic_write_bytes
    from lightning_rlhf.label.db import LabelDB
    from lightning_rlhf.label.export import from_label_studio, to_label_studio

    p = _db_parser(f"{direction}-ls", f"Label Studio pairwise JSON ({direction})")
    p.add_argument("--out" if direction == "export" else "--file", required=True)
    a = p.parse_args(argv)
    if direction == "export":
        tasks = to_label_studio(_existing(LabelDB, a.db))
        atomic_write_bytes(a.out, json.dumps(tasks, ensure_ascii=False, indent=1).encode())
        counts = {"tasks": len(tasks)}
    else:
        try:
            tasks = json.loads(Path(a.file).read_text())
        except ValueError as err:
            raise ValueError(f"{a.file}: not JSON ({err})") from err
        if not isinstance(tasks, list):
            raise ValueError(f"{a.file}: expected a JSON list of Label Studio tasks")
        counts = from_label_studio(LabelDB(a.db), tasks, a.file)
    print(json.dumps(counts))
    return counts


def rerank_command(argv: list[str]) -> int:
    from lightning_rlhf.label.db import LabelDB
    from lightning_rlhf.label.fill import rerank

    p = _db_parser("rerank", rerank.__doc__)
    p.add_argument("--order", choices=ORDERS, required=True)
    p.add_argument("--reward", nargs="+", action="extend", default=[])
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    n = rerank(_existing(LabelDB, a.db), a.order, a.reward, a.seed)
    print(json.dumps({"reranked": n}))
    return n


def _existing(cls, path: str):
    if not Path(path).is_file():
        raise FileNotFoundError(f"label database {path} does not exist (check --db)")
    return cls(path)


COMMANDS = {
    "export": export,
    "stats": stats,
    "export-ls": lambda argv: label_studio(argv, "export"),
    "import-ls": lambda argv: label_studio(argv, "import"),
    "rerank": rerank_command,
}


def main(argv: list[str] | None = None) -> None:
    from lightning_rlhf.label.db import LabelDBError

    argv = sys.argv[1:] if argv is None else argv
    try:
        if argv and argv[0] in COMMANDS:
            COMMANDS[argv[0]](argv[1:])
        else:
            serve(argv)
    except (ValueError, OSError, LabelDBError) as err:  # a bad value, file or database: say so
        sys.exit(f"error: {type(err).__name__}: {err}")
