"""Finding 1: a results file a visitor uploads cannot pin the server or fill its memory.

Each bomb goes through the Results tab's own upload handler (ResultsHandlers.open_upload) on an app in
public mode, as a visitor's upload would, and must come back quickly with a message in the status
line; the reader's limits are also checked one by one (rows, memory, time, cancel, size, JSON depth).
"""

from __future__ import annotations

import html
import json
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from explorer.app.context import AppSettings, SharedExplorer
from explorer.app.results import ResultsHandlers
from explorer.runs.bounded_read import ReadLimits, public_limits
from explorer.runs.results_files import open_results
from explorer.runs.store import Store
from explorer.runs.study_import import ResultFileError

REPO = Path(__file__).resolve().parent.parent
ANSWER = dict(
    model="demo-gemma",
    task="pneumonia",
    prompt_id="abnormal",
    prompt_family="abnormal",
    label="positive",
    verdict="positive",
)


def _handlers(tmp_path, public: bool = True) -> ResultsHandlers:
    settings = AppSettings(preset="demo", samples_dir=None, store_path=tmp_path / "app.sqlite", public=public)
    return ResultsHandlers(SharedExplorer(settings))


def _status(out) -> str:
    """The status line the Results tab shows after opening a file, as the visitor reads it."""
    return html.unescape(next(v for v in out if isinstance(v, str) and "vx-notice" in v))


def _sql(path: Path, script: str) -> None:
    conn = sqlite3.connect(path)
    try:
        conn.executescript(script)
        conn.commit()
    finally:
        conn.close()  # the last connection checkpoints the WAL into the file: what an upload carries


def _recursive_view(path: Path) -> Path:
    _sql(
        path,
        "CREATE VIEW answers AS WITH RECURSIVE r(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM r) "
        "SELECT x AS id, 'demo-gemma' AS model FROM r;",
    )
    return path


def _store_with(path: Path, extra_sql: str = "") -> Path:
    with Store(path):
        pass
    if extra_sql:
        _sql(path, extra_sql)
    return path


def _dictionary_bomb(path: Path, rows: int = 1_700, width: int = 1_000_000) -> Path:
    """A few KB on disk: one 1 MB string, dictionary-encoded, referenced by every row (no Arrow schema
    stored, so a reader decodes it to plain strings: rows x width bytes)."""
    model = pa.DictionaryArray.from_arrays(pa.array([0] * rows, pa.int32()), pa.array(["x" * width]))
    table = pa.table(
        {
            "model": model,
            **{k: [v] * rows for k, v in ANSWER.items() if k != "model"},
            "case_id": [f"c{i}" for i in range(rows)],
        }
    )
    pq.write_table(table, path, compression="zstd", store_schema=False)
    return path


# ---------------------------------------------------------------- through the Results tab, public mode
def test_an_uploaded_sqlite_whose_answers_is_a_recursive_view_is_refused_at_once(tmp_path):
    handlers = _handlers(tmp_path)
    started = time.perf_counter()
    status = _status(handlers.open_upload(str(_recursive_view(tmp_path / "view.sqlite"))))
    assert time.perf_counter() - started < 5
    assert "view.sqlite" in status and "'answers' is a view" in status and "vx-notice-error" in status
    assert threading.active_count() < 50  # nothing left spinning


@pytest.mark.parametrize(
    "sql,problem",
    [
        ("CREATE TRIGGER t AFTER INSERT ON answers BEGIN SELECT 1; END;", "has triggers"),
        (
            "ALTER TABLE answers RENAME TO real_answers; CREATE VIEW answers AS SELECT * FROM real_answers;",
            "'answers' is a view",
        ),
    ],
    ids=["trigger", "view over a table"],
)
def test_an_uploaded_store_with_code_in_it_is_refused(tmp_path, sql, problem):
    status = _status(_handlers(tmp_path).open_upload(str(_store_with(tmp_path / "s.sqlite", sql))))
    assert problem in status and "vx-notice-error" in status


def test_an_uploaded_store_with_a_generated_column_is_refused(tmp_path):
    path = tmp_path / "gen.sqlite"
    _sql(
        path,
        "CREATE TABLE answers (id INTEGER PRIMARY KEY, model TEXT, answer TEXT GENERATED ALWAYS AS "
        "(printf('%.*c', 900000000, 'x')) VIRTUAL); INSERT INTO answers (model) VALUES ('demo-gemma');",
    )
    status = _status(_handlers(tmp_path).open_upload(str(path)))
    assert "generated columns (answer)" in status


def test_an_uploaded_store_is_read_without_writing_to_it(tmp_path):
    path = _store_with(tmp_path / "mine.sqlite")
    before = path.read_bytes()
    status = _status(_handlers(tmp_path).open_upload(str(path)))
    assert "vx-notice-error" not in status, status
    assert path.read_bytes() == before and not Path(str(path) + "-wal").exists()


def test_a_dictionary_encoded_parquet_bomb_stops_at_the_memory_limit(tmp_path):
    bomb = _dictionary_bomb(tmp_path / "bomb.parquet")
    assert bomb.stat().st_size < 20_000  # tiny on disk; ~1.7 GB decoded
    status = _status(_handlers(tmp_path).open_upload(str(bomb)))
    assert "bomb.parquet" in status and "memory limit" in status


def test_the_parquet_bomb_is_refused_within_bounded_memory(tmp_path):
    """In a fresh process: the peak memory of refusing the bomb stays far below what it decodes to."""
    bomb = _dictionary_bomb(tmp_path / "bomb.parquet")
    script = textwrap.dedent(f"""
        import resource, sys
        sys.path.insert(0, {str(REPO)!r})
        from explorer.runs.bounded_read import public_limits
        from explorer.runs.results_files import open_results
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        try:
            open_results({str(bomb)!r}, limits=public_limits(50 * 2**20))
        except ValueError as exc:
            print("refused:", exc)
        print("grew_mb", (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024)
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120).stdout
    grew = float(out.split("grew_mb")[1])
    assert "refused:" in out and "memory limit" in out
    assert grew < 700, out  # the public memory limit is 256 MB; decoding the whole file would take 1.7 GB


def test_a_json_nested_100k_deep_is_refused_with_one_line(tmp_path):
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    status = _status(_handlers(tmp_path).open_upload(str(deep)))
    assert "deep.json" in status and "nested too deeply" in status


# ---------------------------------------------------------------- each limit, enforced while reading
def _answers_csv(path: Path, rows: int) -> Path:
    pd.DataFrame([{**ANSWER, "case_id": f"c{i}"} for i in range(rows)]).to_csv(path, index=False)
    return path


def test_rows_are_counted_while_reading_csv_and_sqlite(tmp_path):
    limits = ReadLimits(max_rows=1_000)
    assert len(open_results(_answers_csv(tmp_path / "ok.csv", 1_000), limits=limits)) == 1_000
    with pytest.raises(ResultFileError, match=r"big.csv: more than 1,000 answers"):
        open_results(_answers_csv(tmp_path / "big.csv", 12_000), limits=limits)
    store = _store_with(
        tmp_path / "big.sqlite",
        "INSERT INTO answers (fingerprint, deterministic, model, "
        "model_identity, task, prompt_id, prompt_text, created_at) WITH RECURSIVE r(x) AS "
        "(SELECT 1 UNION ALL SELECT x + 1 FROM r LIMIT 1500) SELECT 'f' || x, 0, 'demo-gemma', "
        "'{}', 'pneumonia', 'abnormal', 'p', 'now' FROM r;",
    )
    with pytest.raises(ResultFileError, match="more than 1,000 answers"):
        open_results(store, limits=limits)


def test_a_read_past_its_deadline_or_cancelled_stops(tmp_path):
    store = _store_with(
        tmp_path / "slow.sqlite",
        "INSERT INTO answers (fingerprint, deterministic, model, "
        "model_identity, task, prompt_id, prompt_text, answer, created_at) WITH RECURSIVE r(x) AS "
        "(SELECT 1 UNION ALL SELECT x + 1 FROM r LIMIT 200000) SELECT 'f' || x, 0, 'demo-gemma', "
        "'{}', 'pneumonia', 'abnormal', 'p', 'an answer', 'now' FROM r;",
    )
    started = time.perf_counter()
    with pytest.raises(ResultFileError, match=r"slow.sqlite: reading took longer than the 0.05 s limit"):
        open_results(store, limits=ReadLimits(max_seconds=0.05))
    assert time.perf_counter() - started < 3
    gone = threading.Event()
    gone.set()  # the visitor left
    with pytest.raises(ResultFileError, match="reading was cancelled"):
        open_results(store, limits=ReadLimits(cancel=gone))


def test_a_read_whose_page_closed_is_cancelled(tmp_path, monkeypatch):
    """The visitor leaves mid-read (the app's demo.unload calls end_session): the read stops at its
    next step instead of running on to its limit."""
    import explorer.runs.bounded_read as bounded_read

    monkeypatch.setattr(bounded_read, "SQLITE_FETCH_ROWS", 5)  # a slow read: ~40,000 steps
    store = _store_with(
        tmp_path / "long.sqlite",
        "INSERT INTO answers (fingerprint, deterministic, model, "
        "model_identity, task, case_id, prompt_id, prompt_text, answer, created_at) WITH RECURSIVE "
        "r(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM r LIMIT 190000) SELECT 'f' || x, 0, "
        "'demo-gemma', '{}', 'pneumonia', 'c' || x, 'abnormal', 'p', 'an answer', 'now' FROM r;",
    )
    handlers = _handlers(tmp_path)
    handlers.shared.get()
    visitor = type("Request", (), {"session_hash": "page-1"})()
    result = {}
    reader = threading.Thread(target=lambda: result.update(out=handlers.open_upload(str(store), visitor)))
    reader.start()
    time.sleep(0.3)
    closed = time.perf_counter()
    handlers.shared.end_session("page-1")
    reader.join(20)
    assert not reader.is_alive() and time.perf_counter() - closed < 2
    assert "reading was cancelled" in _status(result["out"])


def test_file_size_and_json_share_of_memory_are_checked_before_parsing(tmp_path):
    csv = _answers_csv(tmp_path / "a.csv", 50)
    with pytest.raises(ResultFileError, match=r"a.csv: .* is above the .* file size limit"):
        open_results(csv, limits=ReadLimits(max_file_bytes=100))
    records = tmp_path / "a.json"
    records.write_text(json.dumps([{**ANSWER, "case_id": f"c{i}"} for i in range(2_000)]))
    with pytest.raises(ResultFileError, match="too large to parse here"):
        open_results(records, limits=ReadLimits(max_memory_bytes=records.stat().st_size * 5))
    assert len(open_results(records, limits=public_limits(50 * 2**20))) == 2_000


def test_the_public_upload_limits_are_the_ones_applied(tmp_path, monkeypatch):
    """The app reads a public upload with public_limits: 200,000 rows, 256 MB, 20 s."""
    seen = []
    import explorer.runs.results_files as rf

    real = rf.open_results
    monkeypatch.setattr(
        rf, "open_results", lambda path, catalog=None, limits=None: seen.append(limits) or real(path, catalog, limits)
    )
    _handlers(tmp_path).open_upload(str(_answers_csv(tmp_path / "a.csv", 3)))
    assert seen and seen[0].max_rows == 200_000 and seen[0].max_memory_bytes == 256 * 2**20
    assert seen[0].max_seconds == 20 and seen[0].immutable
