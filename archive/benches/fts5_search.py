"""The SQLite FTS5 side of search-bench: loads the same corpus into an FTS5 table
(body indexed; sender, recipient and time stored beside it) in a file database, runs
the same queries, and prints {kind: {"p50": ms, "p99": ms}} as JSON on stdout.

usage: fts5_search.py CORPUS.tsv QUERIES.tsv
  CORPUS.tsv:  seq, sender, recipient, time ms, body (tab-separated)
  QUERIES.tsv: kind, FTS5 match expression [, participant], after ms, before ms
"""

import json
import os
import sqlite3
import sys
import tempfile
import time


def main():
    corpus, queries = sys.argv[1], sys.argv[2]
    with tempfile.TemporaryDirectory() as tmp:
        db = sqlite3.connect(os.path.join(tmp, "fts5.db"))
        db.execute(
            "CREATE VIRTUAL TABLE m USING fts5("
            "body, sender UNINDEXED, recipient UNINDEXED, t UNINDEXED)"
        )
        started = time.perf_counter()
        with open(corpus, encoding="utf-8") as f:
            rows = (line.rstrip("\n").split("\t", 4) for line in f)
            db.executemany(
                "INSERT INTO m(rowid, sender, recipient, t, body) VALUES (?, ?, ?, ?, ?)",
                ((int(s), int(a), int(b), int(t), body) for s, a, b, t, body in rows),
            )
        db.commit()
        load = time.perf_counter() - started

        timings = {}
        with open(queries, encoding="utf-8") as f:
            for line in f:
                parts = line.rstrip("\n").split("\t")
                kind, expr = parts[0], parts[1]
                started = time.perf_counter()
                if len(parts) == 5:
                    user, after, before = int(parts[2]), int(parts[3]), int(parts[4])
                    db.execute(
                        "SELECT rowid, body FROM m WHERE m MATCH ? "
                        "AND (sender = ? OR recipient = ?) AND t >= ? AND t < ? "
                        "ORDER BY rowid DESC LIMIT 50",
                        (expr, user, user, after, before),
                    ).fetchall()
                else:
                    db.execute(
                        "SELECT rowid, body FROM m WHERE m MATCH ? "
                        "ORDER BY rowid DESC LIMIT 50",
                        (expr,),
                    ).fetchall()
                timings.setdefault(kind, []).append(
                    (time.perf_counter() - started) * 1e3
                )

        out = {"load_seconds": load}
        timings.pop("warm-up", None)
        for kind, ms in timings.items():
            ms.sort()
            pick = lambda p: ms[min(len(ms) - 1, round((len(ms) - 1) * p))]
            out[kind] = {"p50": pick(0.5), "p99": pick(0.99)}
        json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
