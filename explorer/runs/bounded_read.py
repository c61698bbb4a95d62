"""Reading results files that may come from a stranger, within limits enforced while reading.

Every results file the explorer opens (an upload on the Results tab, `import`, a path typed in a
private app) is read through here, so a small file cannot pin a CPU or fill memory:
  - size: the file's bytes, checked before anything is parsed;
  - rows and decoded bytes: counted batch by batch as they are read, so reading stops at the limit,
    not after it (a dictionary-encoded Parquet column of 83 KB can decode to gigabytes);
  - time: a wall-clock deadline checked between batches, and inside SQLite by a progress handler
    that aborts the running statement; a cancel event (a visitor who left) stops it the same way;
  - SQLite: opened read-only (and immutable for uploads: no journal is replayed, nothing written);
    the `answers` table must be a plain table (not a view, virtual table or one with generated
    columns) and a file with triggers is refused, so no code stored in the file runs;
  - JSON: parsed whole, so it is held to a tenth of the memory budget; nesting too deep is refused.
Each limit that is hit raises ResultFileError naming the file and the limit.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import pandas as pd

MB = 1024 * 1024
CSV_CHUNK_ROWS = 5_000
SQLITE_FETCH_ROWS = 1_000
SQLITE_PROGRESS_STEPS = 10_000  # virtual-machine steps between deadline checks (well under a millisecond)
PARQUET_BATCH_BYTES = 32 * MB  # the most one Parquet batch may decode to, from the file's own sizes
JSON_MEMORY_FACTOR = 10  # parsed JSON takes up to ~10x its text in Python objects


class ResultFileError(ValueError):
    """A results file that cannot be read as answers; the message names the file, column and row."""


@dataclass(frozen=True)
class ReadLimits:
    """What one read may take. The defaults suit a private machine; public_limits() a public Space."""

    max_file_bytes: int = 2048 * MB
    max_rows: int = 2_000_000
    max_memory_bytes: int = 4096 * MB
    max_seconds: float = 300.0
    cancel: Optional[threading.Event] = None
    immutable: bool = False  # SQLite: treat the file as unchanging (an upload nobody writes to)

    def start(self) -> "ReadBudget":
        return ReadBudget(self)


def public_limits(max_upload_bytes: int, cancel: Optional[threading.Event] = None) -> ReadLimits:
    """Limits for a visitor's upload on a public deployment: the upload limit, 200,000 answers (the
    study's full cross product is ~20,000), 256 MB decoded, 20 s."""
    return ReadLimits(
        max_file_bytes=max_upload_bytes,
        max_rows=200_000,
        max_memory_bytes=256 * MB,
        max_seconds=20.0,
        cancel=cancel,
        immutable=True,
    )


class ReadBudget:
    """One read's running totals against its limits; shared by every file of a folder."""

    def __init__(self, limits: ReadLimits):
        self.limits = limits
        self.deadline = time.monotonic() + limits.max_seconds
        self.rows = 0
        self.bytes = 0

    # ------------------------------------------------------------ checks
    def stop_reason(self) -> Optional[str]:
        if self.limits.cancel is not None and self.limits.cancel.is_set():
            return "reading was cancelled"
        if time.monotonic() > self.deadline:
            return f"reading took longer than the {self.limits.max_seconds:g} s limit"
        return None

    def check_time(self, path: Path) -> None:
        reason = self.stop_reason()
        if reason:
            raise ResultFileError(f"{path.name}: {reason}")

    def check_file(self, path: Path) -> int:
        """The file's size, refused above max_file_bytes."""
        size = path.stat().st_size
        if size > self.limits.max_file_bytes:
            raise ResultFileError(
                f"{path.name}: {_size(size)} is above the {_size(self.limits.max_file_bytes)} file size limit"
            )
        return size

    def expect_rows(self, path: Path, rows: int) -> None:
        if self.rows + rows > self.limits.max_rows:
            raise ResultFileError(f"{path.name}: more than {self.limits.max_rows:,} answers (the row limit)")

    def add(self, path: Path, rows: int, nbytes: int) -> None:
        """Count what was just read; raises when a limit is passed."""
        self.expect_rows(path, rows)
        self.rows += rows
        self.bytes += int(nbytes)
        if self.bytes > self.limits.max_memory_bytes:
            raise ResultFileError(
                f"{path.name}: its contents take more than {_size(self.limits.max_memory_bytes)} in memory "
                "(the memory limit); it may be a compressed or dictionary-encoded bomb"
            )
        self.check_time(path)


def _size(n: float) -> str:
    return f"{n / MB:.1f} MB" if n >= MB else f"{n / 1024:.0f} KB"


# ---------------------------------------------------------------- CSV
def read_csv_text(path: Path, budget: ReadBudget) -> pd.DataFrame:
    """Every cell as text, read CSV_CHUNK_ROWS rows at a time within the budget."""
    budget.check_file(path)
    chunks = []
    try:
        # Every cell as text: an answer that reads "NA" or "None" stays an answer.
        with pd.read_csv(path, dtype=str, keep_default_na=False, chunksize=CSV_CHUNK_ROWS) as reader:
            for chunk in reader:
                budget.add(path, len(chunk), chunk.memory_usage(deep=True).sum())
                chunks.append(chunk)
    except pd.errors.EmptyDataError:
        raise ResultFileError(f"{path}: the file is empty (no header row)") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise ResultFileError(f"{path}: not a readable CSV file ({exc})") from None
    if not chunks:
        return pd.DataFrame()
    return pd.concat(chunks, ignore_index=True) if len(chunks) > 1 else chunks[0].reset_index(drop=True)


# ---------------------------------------------------------------- JSON
def read_json_records(path: Path, budget: ReadBudget) -> Any:
    """A JSON document (a list of records) or JSON lines, within the budget; deep nesting refused."""
    budget.check_file(path)
    if path.stat().st_size * JSON_MEMORY_FACTOR > budget.limits.max_memory_bytes:
        allowed = budget.limits.max_memory_bytes // JSON_MEMORY_FACTOR
        raise ResultFileError(
            f"{path.name}: a JSON file above {_size(allowed)} is too large to parse here; export it as Parquet or CSV"
        )
    try:
        if path.suffix.lower() in (".jsonl", ".ndjson"):
            records = []
            with path.open(encoding="utf-8") as fh:
                for line in fh:
                    if line.strip():
                        records.append(json.loads(line))
                        if len(records) % CSV_CHUNK_ROWS == 0:
                            budget.add(path, CSV_CHUNK_ROWS, 0)
            budget.add(path, len(records) % CSV_CHUNK_ROWS, 0)
            return records
        records = json.loads(path.read_text(encoding="utf-8"))
    except RecursionError:
        raise ResultFileError(f"{path.name}: not an answers file (JSON nested too deeply)") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ResultFileError(f"{path}: not valid JSON ({exc})") from None
    if isinstance(records, list):
        budget.add(path, len(records), 0)
    return records


# ---------------------------------------------------------------- Parquet
def read_parquet(path: Path, budget: ReadBudget) -> pd.DataFrame:
    """A Parquet file in batches sized from its metadata, counted as they decode."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    budget.check_file(path)
    try:
        pfile = pq.ParquetFile(path)
        meta = pfile.metadata
        budget.expect_rows(path, meta.num_rows)
        # A decoded value is at most its column chunk's uncompressed size (its page, or its dictionary).
        widest = [0] * meta.num_columns
        total = 0
        for g in range(meta.num_row_groups):
            group = meta.row_group(g)
            for c in range(group.num_columns):
                size = max(0, group.column(c).total_uncompressed_size)
                widest[c] = max(widest[c], size)
                total += size
        if budget.bytes + total > budget.limits.max_memory_bytes:
            raise ResultFileError(
                f"{path.name}: its columns hold {_size(total)} uncompressed, above the "
                f"{_size(budget.limits.max_memory_bytes)} memory limit"
            )
        row_bound = max(1, sum(widest))
        batch_rows = int(min(8_192, max(1, PARQUET_BATCH_BYTES // row_bound)))
        batches = []
        for batch in pfile.iter_batches(batch_size=batch_rows, use_threads=False):
            budget.add(path, batch.num_rows, batch.nbytes)
            batches.append(batch)
        schema = pfile.schema_arrow
        table = pa.Table.from_batches(batches, schema=schema) if batches else schema.empty_table()
        return table.to_pandas()
    except ResultFileError:
        raise
    except (OSError, ValueError, pa.ArrowException) as exc:
        raise ResultFileError(f"{path}: not a readable .parquet file ({exc})") from None


# ---------------------------------------------------------------- SQLite
def read_sqlite_answers(path: Path, budget: ReadBudget, schema_version: int) -> pd.DataFrame:
    """The `answers` table of an explorer store, read-only, with the checks in this module's docstring.

    schema_version: the newest store schema this explorer reads (a newer file is refused).
    """
    budget.check_file(path)
    query = "mode=ro&immutable=1" if budget.limits.immutable else "mode=ro"
    try:
        conn = sqlite3.connect(f"{path.resolve().as_uri()}?{query}", uri=True, timeout=1.0, check_same_thread=False)
    except sqlite3.Error as exc:
        raise ResultFileError(f"{path.name}: cannot be opened as an SQLite database ({exc})") from None
    try:
        # No single value above the memory limit; a statement past the deadline (or cancelled) aborts.
        conn.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, int(min(budget.limits.max_memory_bytes, 1_000_000_000)))
        conn.set_progress_handler(lambda: 1 if budget.stop_reason() else 0, SQLITE_PROGRESS_STEPS)
        conn.execute("PRAGMA trusted_schema = OFF")
        conn.execute("PRAGMA query_only = ON")
        _check_sqlite_schema(conn, path, schema_version)
        (count,) = conn.execute("SELECT COUNT(*) FROM answers").fetchone()
        budget.expect_rows(path, int(count))
        cursor = conn.execute("SELECT * FROM answers ORDER BY id")
        columns = [d[0] for d in cursor.description]
        rows: list[tuple] = []
        while True:
            chunk = cursor.fetchmany(SQLITE_FETCH_ROWS)
            if not chunk:
                break
            nbytes = sum(len(v) if isinstance(v, (str, bytes)) else 8 for row in chunk for v in row)
            budget.add(path, len(chunk), nbytes)
            rows.extend(chunk)
        return pd.DataFrame.from_records(rows, columns=columns)
    except sqlite3.Error as exc:
        reason = budget.stop_reason()
        if reason:
            raise ResultFileError(f"{path.name}: {reason}") from None
        raise ResultFileError(f"{path.name}: not a readable results store ({exc})") from None
    finally:
        conn.close()


def _check_sqlite_schema(conn: sqlite3.Connection, path: Path, schema_version: int) -> None:
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version > schema_version:
        raise ResultFileError(
            f"{path.name}: written by a newer explorer (store schema v{version}; this version "
            f"reads up to v{schema_version})"
        )
    entries = conn.execute("SELECT type, name, sql FROM sqlite_master").fetchall()
    triggers = [name for kind, name, _ in entries if kind == "trigger"]
    if triggers:
        raise ResultFileError(
            f"{path.name}: has triggers ({_shown(triggers)}); a results store has none, so it is not opened"
        )
    kinds = {name: (kind, sql or "") for kind, name, sql in entries}
    if "answers" not in kinds:
        tables = sorted(name for kind, name, _ in entries if kind == "table")
        raise ResultFileError(
            f"{path.name}: an SQLite file but not an explorer results store "
            f"(no 'answers' table; it has {_shown(tables) or 'no tables'})"
        )
    kind, sql = kinds["answers"]
    if kind != "table" or sql.lstrip().upper().startswith("CREATE VIRTUAL"):
        raise ResultFileError(
            f"{path.name}: 'answers' is a {'virtual table' if kind == 'table' else kind}, "
            "not a plain table, so it is not read"
        )
    hidden = [row[1] for row in conn.execute("PRAGMA table_xinfo(answers)") if row[6] in (2, 3)]
    if hidden:
        raise ResultFileError(
            f"{path.name}: 'answers' has generated columns ({_shown(hidden)}); a results "
            "store has none, so it is not read"
        )


def _shown(names: list, limit: int = 3) -> str:
    text = ", ".join(str(n)[:40] for n in names[:limit])
    return text + (f" and {len(names) - limit} more" if len(names) > limit else "")
