"""Results and cache in one SQLite file.

One row per answer, with everything that produced it (model identity, exact prompt text, image hash,
generation settings, backend, parser or judge, library versions). The row's request fingerprint is the
cache key: a deterministic (greedy) request that was answered without error is served from here and
never generated again; sampled answers are stored but never served. Errored answers are stored too,
so they show up, and are generated again on the next run.

Concurrency: WAL mode (readers never block the writer), one connection per thread, every write in a
BEGIN IMMEDIATE transaction committed at once, and a busy timeout so a second process waits for the
write lock instead of failing. A killed writer loses at most the item it was writing.
"""

from __future__ import annotations

import json
import platform
import sqlite3
import subprocess
import threading
from datetime import datetime, timezone
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence

import pandas as pd

from explorer.schema import Case, PromptVariant, Request, Response, Verdict

SCHEMA_VERSION = 1
BUSY_TIMEOUT_MS = 30_000

# The cache key (fingerprint) is unique among deterministic answers; sampled answers may repeat one.
# run_items: which answer served each planned item of a run (new or cached), with the item's own
# case and prompt, since a cached answer may have been made for the same image under another case id.
_SCHEMA = """
CREATE TABLE IF NOT EXISTS answers (
    id INTEGER PRIMARY KEY,
    fingerprint TEXT NOT NULL,
    deterministic INTEGER NOT NULL,
    run_id TEXT,
    model TEXT NOT NULL,
    model_identity TEXT NOT NULL,
    backend TEXT,
    task TEXT NOT NULL,
    case_id TEXT,
    image_hash TEXT,
    label TEXT,
    source TEXT,
    row_id INTEGER,
    prompt_id TEXT NOT NULL,
    prompt_family TEXT,
    prompt_kind TEXT,
    prompt_text TEXT NOT NULL,
    one_word INTEGER,
    polarity TEXT,
    custom INTEGER,
    prompt_format TEXT,
    generation TEXT,
    answer TEXT,
    error TEXT,
    verdict TEXT,
    verdict_method TEXT,
    evidence TEXT,
    evidence_start INTEGER,
    evidence_end INTEGER,
    verdict_detail TEXT,
    judged_at TEXT,
    p_positive REAL,
    latency_s REAL,
    input_tokens INTEGER,
    output_tokens INTEGER,
    versions TEXT,
    created_at TEXT NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS answers_fingerprint ON answers(fingerprint) WHERE deterministic = 1;
CREATE INDEX IF NOT EXISTS answers_fingerprint_any ON answers(fingerprint);
CREATE INDEX IF NOT EXISTS answers_cell ON answers(model, task, prompt_id);
CREATE INDEX IF NOT EXISTS answers_run ON answers(run_id);

CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY,
    created_at TEXT NOT NULL,
    finished_at TEXT,
    status TEXT NOT NULL,
    plan_hash TEXT,
    plan TEXT,
    manifest TEXT,
    summary TEXT
);
CREATE INDEX IF NOT EXISTS runs_plan ON runs(plan_hash);

CREATE TABLE IF NOT EXISTS run_items (
    run_id TEXT NOT NULL,
    model TEXT NOT NULL,
    task TEXT NOT NULL,
    case_id TEXT NOT NULL,
    prompt_id TEXT NOT NULL,
    label TEXT,
    answer_id INTEGER NOT NULL REFERENCES answers(id),
    cached INTEGER NOT NULL,
    PRIMARY KEY (run_id, model, task, case_id, prompt_id)
);
"""

# Columns that hold JSON text.
JSON_COLUMNS = ("model_identity", "polarity", "generation", "versions")
# Columns a caller may filter answers_frame / answers on (each takes one value or several).
FILTER_COLUMNS = (
    "model",
    "task",
    "prompt_id",
    "prompt_family",
    "prompt_kind",
    "case_id",
    "image_hash",
    "label",
    "verdict",
    "verdict_method",
    "prompt_format",
    "backend",
    "fingerprint",
)
# What a run item says for itself (it wins over the answer row's own values in a run's view).
RUN_ITEM_COLUMNS = ("model", "task", "case_id", "label", "prompt_id")


class StoreError(RuntimeError):
    """A store that cannot be used (newer schema, not an explorer store, corrupt, closed)."""


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


@lru_cache(maxsize=1)
def library_versions() -> dict[str, str]:
    """Versions that can change an answer; read from package metadata, so nothing heavy is imported."""
    versions = {"python": platform.python_version()}
    for package in ("torch", "transformers", "openai"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            pass
    versions["explorer"] = _explorer_version()
    return versions


def _explorer_version() -> str:
    import sys

    declared = getattr(sys.modules[__package__], "__version__", None)
    if declared:
        return str(declared)
    repo = Path(__file__).resolve().parents[2]
    try:
        out = subprocess.run(
            ["git", "-C", str(repo), "describe", "--always", "--dirty"],
            capture_output=True,
            text=True,
            timeout=5,
        )
        if out.returncode == 0 and out.stdout.strip():
            return "git:" + out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return "unknown"


def _json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def polarity_of(variant: PromptVariant) -> dict[str, Any]:
    polarity = {"yes_means": variant.yes_means, "options": [list(o) for o in variant.options]}
    if variant.parent:  # a generated wording keeps where it came from (its family is prompt_family)
        polarity["parent"] = variant.parent
    return polarity


def variant_from_row(row: dict[str, Any]) -> PromptVariant:
    """The prompt variant an answer was given to, rebuilt from its stored provenance (for re-judging)."""
    polarity = row.get("polarity") or {}
    if isinstance(polarity, str):
        polarity = json.loads(polarity)
    return PromptVariant(
        prompt_id=row["prompt_id"],
        family=row.get("prompt_family") or "",
        text=row["prompt_text"],
        kind=row.get("prompt_kind") or "closed",
        yes_means=polarity.get("yes_means"),
        options=tuple(tuple(o) for o in polarity.get("options") or ()),
        one_word=bool(row.get("one_word")),
        custom=bool(row.get("custom")),
        parent=polarity.get("parent") or "",
    )


def verdict_columns(verdict: Optional[Verdict]) -> dict[str, Any]:
    # A judge.JudgeError (label None) lands as verdict NULL with its method and reason: a judgement
    # that failed is kept as such, never as a verdict, and is judged again later.
    if verdict is None:
        return dict(
            verdict=None,
            verdict_method=None,
            evidence=None,
            evidence_start=None,
            evidence_end=None,
            verdict_detail=None,
            judged_at=None,
        )
    start, end = verdict.span if verdict.span else (None, None)
    return dict(
        verdict=verdict.label,
        verdict_method=verdict.method,
        evidence=verdict.evidence,
        evidence_start=start,
        evidence_end=end,
        verdict_detail=verdict.detail,
        judged_at=utc_now(),
    )


def answer_row(
    *,
    fingerprint: str,
    request: Request,
    case: Case,
    variant: PromptVariant,
    model_identity: dict[str, Any],
    backend: str,
    response: Response,
    verdict: Optional[Verdict],
    run_id: Optional[str],
) -> dict[str, Any]:
    """The full provenance row of one answer, ready for Store.record_answer."""
    hashes = request.image_hashes()
    return dict(
        fingerprint=fingerprint,
        deterministic=int(request.generation.deterministic),
        run_id=run_id,
        model=request.model,
        model_identity=_json(model_identity),
        backend=backend,
        task=case.task,
        case_id=case.case_id,
        image_hash=",".join(hashes) if hashes else case.image_hash,
        label=case.label,
        source=case.source,
        row_id=case.row_id,
        prompt_id=variant.prompt_id,
        prompt_family=variant.family,
        prompt_kind=variant.kind,
        prompt_text=variant.text,
        one_word=int(variant.one_word),
        polarity=_json(polarity_of(variant)),
        custom=int(variant.custom),
        prompt_format=request.prompt_format,
        generation=_json(request.generation.as_dict()),
        answer=response.text,
        error=response.error,
        **verdict_columns(verdict),
        p_positive=response.p_positive,
        latency_s=response.latency_s,
        input_tokens=response.input_tokens,
        output_tokens=response.output_tokens,
        versions=_json(library_versions()),
        created_at=utc_now(),
    )


def _as_list(value: Any) -> list:
    if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        return [value]
    return list(value)


class Store:
    """The results store at `path` (created when missing)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if self.path.is_dir():  # also an empty path, which is "."
            raise StoreError(
                f"{str(path) or '(empty path)'} cannot be opened as a results store: it is a folder, not an SQLite file"
            )
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"{self.path}: cannot create its folder ({exc.strerror or exc})") from None
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._closed = False
        try:
            self._refuse_foreign()
            self._migrate()
        except BaseException:
            self.close()
            raise

    # ------------------------------------------------------------ connections
    def _conn(self) -> sqlite3.Connection:
        if self._closed:
            raise StoreError(f"the results store {self.path} is closed")
        conn = getattr(self._local, "conn", None)
        if conn is None:
            try:
                # Autocommit mode: reads see the latest commit; writes open their own transaction.
                conn = sqlite3.connect(
                    str(self.path),
                    timeout=BUSY_TIMEOUT_MS / 1000,
                    isolation_level=None,
                    check_same_thread=False,
                )
                conn.row_factory = sqlite3.Row
                conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
                conn.execute("PRAGMA foreign_keys = ON")
                mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
                if str(mode).lower() != "wal":
                    raise StoreError(f"{self.path}: cannot use WAL mode (got {mode}); is it on a network drive?")
                # WAL + NORMAL: a committed answer survives a killed process (only power loss can drop
                # the last commits), and commits stay cheap.
                conn.execute("PRAGMA synchronous = NORMAL")
            except sqlite3.DatabaseError as exc:
                raise StoreError(f"{self.path} cannot be opened as a results store: {exc}") from None
            self._local.conn = conn
            with self._lock:
                self._connections.append(conn)
        return conn

    def _write(self):
        return _WriteTransaction(self._conn())

    def close(self) -> None:
        with self._lock:
            self._closed = True
            for conn in self._connections:
                try:
                    conn.close()
                except sqlite3.Error:
                    pass
            self._connections.clear()

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------ schema
    def _refuse_foreign(self) -> None:
        """Refuse an existing file that is not our store through a read-only connection, before
        _conn switches it to WAL mode (which rewrites the file's header)."""
        if not self.path.is_file() or self.path.stat().st_size == 0:
            return
        try:
            conn = sqlite3.connect(self.path.resolve().as_uri() + "?mode=ro", uri=True, timeout=BUSY_TIMEOUT_MS / 1000)
            try:
                self._check_ours(conn)
            finally:
                conn.close()
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"{self.path} cannot be opened as a results store: {exc}") from None

    def _check_ours(self, conn: sqlite3.Connection) -> int:
        """The file's schema version; StoreError when a newer explorer or another program wrote it."""
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"{self.path} was written by a newer explorer (store schema v{version}; this "
                f"version reads up to v{SCHEMA_VERSION}). Update the explorer, or use another --store file."
            )
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if version == 0 and tables and "answers" not in tables:
            raise StoreError(
                f"{self.path} is an SQLite file but not an explorer results store "
                f"(it has tables {', '.join(sorted(tables))}); choose another --store file."
            )
        return version

    def _migrate(self) -> None:
        conn = self._conn()
        try:
            with self._write():
                version = self._check_ours(conn)  # again: the file may have changed since _refuse_foreign
                if version < SCHEMA_VERSION:
                    # Statement by statement: executescript() would commit the open transaction.
                    for statement in _SCHEMA.split(";"):
                        if statement.strip():
                            conn.execute(statement)
                    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"{self.path} cannot be opened as a results store: {exc}") from None

    def schema_version(self) -> int:
        return int(self._conn().execute("PRAGMA user_version").fetchone()[0])

    def integrity_ok(self) -> bool:
        return self.integrity_report() == ["ok"]

    def integrity_report(self) -> list[str]:
        """PRAGMA integrity_check's findings (["ok"] for a sound file)."""
        return [r[0] for r in self._conn().execute("PRAGMA integrity_check")]

    # ------------------------------------------------------------ answers
    def lookup(self, fingerprint: str) -> Optional[dict[str, Any]]:
        """The cached answer to a deterministic request, or None (never an errored or sampled one)."""
        row = (
            self._conn()
            .execute(
                "SELECT * FROM answers WHERE fingerprint = ? AND deterministic = 1 AND error IS NULL",
                (fingerprint,),
            )
            .fetchone()
        )
        return dict(row) if row else None

    def lookup_in_run(self, run_id: str, fingerprint: str) -> Optional[dict[str, Any]]:
        """An answer (sampled or not) made without error by this run: what a resumed run must not redo."""
        row = (
            self._conn()
            .execute(
                "SELECT * FROM answers WHERE run_id = ? AND fingerprint = ? AND error IS NULL ORDER BY id LIMIT 1",
                (run_id, fingerprint),
            )
            .fetchone()
        )
        return dict(row) if row else None

    def has_error(self, fingerprint: str) -> bool:
        """True when the newest stored answer for this fingerprint is an error."""
        row = (
            self._conn()
            .execute("SELECT error FROM answers WHERE fingerprint = ? ORDER BY id DESC LIMIT 1", (fingerprint,))
            .fetchone()
        )
        return bool(row and row["error"] is not None)

    def get(self, answer_id: int) -> Optional[dict[str, Any]]:
        row = self._conn().execute("SELECT * FROM answers WHERE id = ?", (answer_id,)).fetchone()
        return dict(row) if row else None

    def record_answer(
        self, row: dict[str, Any], run_item: Optional[dict[str, Any]] = None
    ) -> tuple[dict[str, Any], bool]:
        """Store one answer (and the run item it serves) in one committed transaction.

        Returns (the stored row, whether this row was written). A deterministic answer is stored once:
        if one without error already exists (another process got there first) it is kept and
        returned; an errored one is replaced by the new attempt. A retried sampled answer of the
        same run replaces that run's errored attempt.
        """
        conn = self._conn()
        columns = [c for c in row if c != "id"]
        with self._write():
            if row["deterministic"]:
                existing = conn.execute(
                    "SELECT id, error FROM answers WHERE fingerprint = ? AND deterministic = 1",
                    (row["fingerprint"],),
                ).fetchone()
            else:
                existing = conn.execute(
                    "SELECT id, error FROM answers WHERE fingerprint = ? AND deterministic = 0 AND run_id IS ? "
                    "AND error IS NOT NULL ORDER BY id DESC LIMIT 1",
                    (row["fingerprint"], row.get("run_id")),
                ).fetchone()
            written = True
            if existing is None:
                cur = conn.execute(
                    f"INSERT INTO answers ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})",
                    [row[c] for c in columns],
                )
                answer_id = cur.lastrowid
            elif existing["error"] is not None:
                answer_id = existing["id"]
                conn.execute(
                    f"UPDATE answers SET {', '.join(f'{c} = ?' for c in columns)} WHERE id = ?",
                    [row[c] for c in columns] + [answer_id],
                )
            else:
                answer_id, written = existing["id"], False
            if run_item is not None:
                self._put_run_item(conn, run_item, answer_id, cached=not written)
        return self.get(answer_id), written

    def link_run_item(self, run_item: dict[str, Any], answer_id: int, cached: bool = True) -> None:
        """Record that a planned item of a run was served by an existing answer."""
        conn = self._conn()
        with self._write():
            self._put_run_item(conn, run_item, answer_id, cached)

    @staticmethod
    def _put_run_item(conn: sqlite3.Connection, item: dict[str, Any], answer_id: int, cached: bool) -> None:
        conn.execute(
            "INSERT OR REPLACE INTO run_items (run_id, model, task, case_id, prompt_id, label, answer_id, cached) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                item["run_id"],
                item["model"],
                item["task"],
                item["case_id"],
                item["prompt_id"],
                item.get("label"),
                answer_id,
                int(cached),
            ),
        )

    def update_verdict(self, answer_id: int, verdict: Optional[Verdict]) -> None:
        """Replace an answer's verdict (re-judging); the raw answer is kept as it was."""
        cols = verdict_columns(verdict)
        with self._write() as conn:
            cur = conn.execute(
                f"UPDATE answers SET {', '.join(f'{c} = ?' for c in cols)} WHERE id = ?",
                [*cols.values(), answer_id],
            )
            if cur.rowcount != 1:
                raise StoreError(f"no answer with id {answer_id} in {self.path}")

    def delete_errors(self, **filters: Any) -> int:
        """Remove errored answers (e.g. after fixing an endpoint, to hide stale failures)."""
        where, params = self._where(filters, include_errors=True)
        with self._write() as conn:
            ids = [
                r[0] for r in conn.execute(f"SELECT id FROM answers a WHERE {where} AND a.error IS NOT NULL", params)
            ]
            conn.executemany("DELETE FROM run_items WHERE answer_id = ?", [(i,) for i in ids])
            conn.executemany("DELETE FROM answers WHERE id = ?", [(i,) for i in ids])
        return len(ids)

    # ------------------------------------------------------------ reading
    def _where(self, filters: dict[str, Any], include_errors: bool, run_items: bool = False) -> tuple[str, list]:
        clauses, params = ["1 = 1"], []
        for key, value in filters.items():
            if value is None:
                continue
            if key not in FILTER_COLUMNS:
                raise ValueError(f"cannot filter answers on {key!r}; filters: {', '.join(FILTER_COLUMNS)}, run_id")
            values = _as_list(value)
            table = "ri" if run_items and key in RUN_ITEM_COLUMNS else "a"
            clauses.append(f"{table}.{key} IN ({', '.join('?' * len(values))})")
            params += values
        if not include_errors:
            clauses.append("a.error IS NULL")
        return " AND ".join(clauses), params

    def answers(
        self, run_id: Optional[str] = None, include_errors: bool = True, **filters: Any
    ) -> list[dict[str, Any]]:
        """Answer rows as dicts (JSON columns as text), oldest first; see answers_frame for filters."""
        where, params = self._where(filters, include_errors, run_items=run_id is not None)
        if run_id is None:
            sql = f"SELECT a.*, NULL AS cached FROM answers a WHERE {where} ORDER BY a.id"
        else:
            # A run's items, each with its own case id, label and prompt id (a cached answer may
            # have been made for the same image and prompt text under other names).
            cols = ", ".join(f"a.{c}" for c in self._columns() if c not in RUN_ITEM_COLUMNS)
            sql = (
                f"SELECT {cols}, {', '.join(f'ri.{c}' for c in RUN_ITEM_COLUMNS)}, ri.cached AS cached "
                f"FROM run_items ri JOIN answers a ON a.id = ri.answer_id WHERE ri.run_id = ? AND {where} "
                "ORDER BY a.id"
            )
            params = [run_id, *params]
        return [dict(r) for r in self._conn().execute(sql, params)]

    def answers_frame(
        self,
        catalog=None,
        run_id: Optional[str] = None,
        include_errors: bool = True,
        **filters: Any,
    ) -> pd.DataFrame:
        """Answers as a DataFrame for metrics and export.

        Columns: every stored column (provenance included, JSON columns as text), `cached` (only with
        run_id), and `pair` / `role` from the catalog's model specs (None for unknown aliases).
        Filters: run_id (that run's planned items only), include_errors, and any of FILTER_COLUMNS
        (one value or a list).
        """
        rows = self.answers(run_id=run_id, include_errors=include_errors, **filters)
        frame = pd.DataFrame(rows) if rows else pd.DataFrame(columns=self._columns() + ["cached"])
        if catalog is None:
            from explorer.catalog.presets import load_catalog

            catalog = load_catalog()
        specs = getattr(catalog, "models", {})
        frame["pair"] = [getattr(specs.get(m), "pair", None) for m in frame["model"]]
        frame["role"] = [getattr(specs.get(m), "role", None) for m in frame["model"]]
        return frame

    def _columns(self) -> list[str]:
        return [r["name"] for r in self._conn().execute("PRAGMA table_info(answers)")]

    def count(self, include_errors: bool = True, **filters: Any) -> int:
        where, params = self._where(filters, include_errors)
        return int(self._conn().execute(f"SELECT COUNT(*) FROM answers a WHERE {where}", params).fetchone()[0])

    # ------------------------------------------------------------ runs
    def start_run(self, run_id: str, plan: dict, manifest: dict, plan_hash: str) -> None:
        """Create a run, or mark an existing (cancelled / interrupted) one running again."""
        with self._write() as conn:
            if conn.execute("SELECT 1 FROM runs WHERE run_id = ?", (run_id,)).fetchone():
                conn.execute(
                    "UPDATE runs SET status = 'running', finished_at = NULL, plan = ?, manifest = ?, plan_hash = ? "
                    "WHERE run_id = ?",
                    (_json(plan), _json(manifest), plan_hash, run_id),
                )
            else:
                conn.execute(
                    "INSERT INTO runs (run_id, created_at, status, plan_hash, plan, manifest) "
                    "VALUES (?, ?, 'running', ?, ?, ?)",
                    (run_id, utc_now(), plan_hash, _json(plan), _json(manifest)),
                )

    def finish_run(self, run_id: str, status: str, summary: Optional[dict] = None) -> None:
        with self._write() as conn:
            conn.execute(
                "UPDATE runs SET status = ?, finished_at = ?, summary = ? WHERE run_id = ?",
                (status, utc_now(), _json(summary or {}), run_id),
            )

    def resumable_run(self, plan_hash: str) -> Optional[str]:
        """The newest unfinished run of this exact plan (cancelled, failed, or killed while running)."""
        row = (
            self._conn()
            .execute(
                "SELECT run_id FROM runs WHERE plan_hash = ? AND status != 'finished' ORDER BY created_at DESC LIMIT 1",
                (plan_hash,),
            )
            .fetchone()
        )
        return row["run_id"] if row else None

    def run(self, run_id: str) -> Optional[dict[str, Any]]:
        row = self._conn().execute("SELECT * FROM runs WHERE run_id = ?", (run_id,)).fetchone()
        if row is None:
            return None
        d = dict(row)
        for key in ("plan", "manifest", "summary"):
            d[key] = json.loads(d[key]) if d.get(key) else None
        return d

    def runs_frame(self) -> pd.DataFrame:
        return pd.read_sql_query(
            "SELECT run_id, created_at, finished_at, status, summary FROM runs ORDER BY created_at",
            self._conn(),
        )

    # ------------------------------------------------------------ side tables (e.g. describe's diagnoses)
    # Other modules keep their own tables in this file through these, so they share the store's
    # per-thread connections, WAL mode, busy timeout and BEGIN IMMEDIATE writes.
    def ensure_tables(self, ddl: str) -> None:
        """Run CREATE TABLE / INDEX IF NOT EXISTS statements (separated by ';') in one write transaction."""
        with self._write() as conn:
            for statement in ddl.split(";"):  # one by one: executescript() would commit mid-transaction
                if statement.strip():
                    conn.execute(statement)

    def fetch_one(self, sql: str, params: Sequence[Any] = ()) -> Optional[dict[str, Any]]:
        """The first row of a query as a dict, or None."""
        row = self._conn().execute(sql, tuple(params)).fetchone()
        return dict(row) if row else None

    def fetch_all(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        """Every row of a query as dicts."""
        return [dict(r) for r in self._conn().execute(sql, tuple(params))]

    def execute_write(self, sql: str, params: Sequence[Any] = ()) -> int:
        """One write statement, committed at once; returns the rows it changed."""
        with self._write() as conn:
            return conn.execute(sql, tuple(params)).rowcount


class _WriteTransaction:
    """BEGIN IMMEDIATE ... COMMIT: takes the write lock up front so two writers never deadlock."""

    def __init__(self, conn: sqlite3.Connection):
        self.conn = conn

    def __enter__(self) -> sqlite3.Connection:
        self.conn.execute("BEGIN IMMEDIATE")
        return self.conn

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.conn.execute("COMMIT")
        elif self.conn.in_transaction:  # SQLite may already have rolled back (e.g. disk full)
            self.conn.execute("ROLLBACK")
