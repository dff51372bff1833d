"""The one data-access module: a workspace directory and its DuckDB file (schema, versions, cursors).

Layout of a workspace::

    WS/altlens.duckdb       samples, captions, sources, embedding chunks, runs, meta
    WS/embeddings/image/    float16 .npy chunks, row i = samples.id i
    WS/embeddings/text/     float16 .npy chunks, row i = captions.id i
    WS/index/image.faiss    FAISS index over ok samples' image embeddings (ids = samples.id)
    WS/thumbs/ab/UID.webp   re-encoded thumbnails, the only files the UI serves
    WS/model/               the embedding model's config, so later commands reload the same model

DuckDB allows one read-write process or many read-only ones. Each thread gets
its own cursor. SQL takes ``?`` parameters only.
"""
from __future__ import annotations

import json
import logging
import re
import threading
import time
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

import duckdb

from indexer.errors import WorkspaceError
from indexer.files import sweep_temp
from indexer.schema import PRODUCT_TABLES, SCHEMA_VERSION, SEQUENCES, TABLES, create_statements

DB_NAME = "altlens.duckdb"
LOCK_WAIT_S = 600.0  # how long a command waits for another process's hold on the workspace
LOCK_NOTICE_S = 2.0  # after this long, say that it is waiting
BROKEN = (duckdb.IOException, duckdb.InternalException, duckdb.FatalException, duckdb.SerializationException)
DISK_WORDS = ("no space left", "could not write", "disk quota", "read-only file system")

log = logging.getLogger(__name__)

# One write at a time per workspace file in this process. DuckDB lets one process write, but its threads share
# that process's connection: two transactions that each read ``max(id) + 1`` would take the same ids and the
# same embedding chunk, and the one that loses at COMMIT has already replaced the winner's vectors on disk.
_WRITE_LOCKS: dict[Path, threading.RLock] = {}
_WRITE_LOCKS_GUARD = threading.Lock()


def write_lock(db_path: Path) -> threading.RLock:
    """The lock every transaction on ``db_path`` holds in this process (threads of a server, a thread pool)."""
    with _WRITE_LOCKS_GUARD:
        return _WRITE_LOCKS.setdefault(Path(db_path), threading.RLock())


def now() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


class Workspace:
    """A workspace directory; ``create=True`` makes it if missing.

    The DuckDB file is opened lazily and can be let go: DuckDB lets one process
    write or several read, never both, so altlens processes take turns. Opening
    waits up to ``lock_wait`` seconds for another process's hold (saying so after
    a moment). Commands hold the file while they read and commit and call
    :meth:`release` before long computations; a ``per_request`` workspace (the web
    server's) holds it only while a :meth:`session` is open, so a request never
    keeps a CLI writer out for longer than itself.
    """

    def __init__(self, root: str | Path, read_only: bool = False, create: bool = False,
                 lock_wait: float = LOCK_WAIT_S, per_request: bool = False):
        self.root = Path(root).resolve()
        self.read_only, self.lock_wait, self.per_request = read_only, lock_wait, per_request
        if not self.db_path.exists():
            if not create:
                raise WorkspaceError(f"no altlens workspace at {str(self.root)!r} (missing {DB_NAME}); "
                                     "create one with 'altlens index SOURCE --workspace DIR'")
            if read_only:
                raise WorkspaceError("cannot create a workspace read-only")
            self.root.mkdir(parents=True, exist_ok=True)
        self._guard = threading.RLock()
        self._con: duckdb.DuckDBPyConnection | None = None
        self._generation = 0
        self._sessions = 0
        self._local = threading.local()
        with self.session():
            if not read_only:
                self._migrate()
                self.sweep()
            self._check_version()

    # ------------------------------------------------------------ paths
    @property
    def db_path(self) -> Path:
        return self.root / DB_NAME

    def fingerprint(self) -> tuple:
        """Changes whenever anyone commits to the workspace (the database file and its write-ahead log), so a
        server can cache what it computed from the data and notice a CLI command's writes."""
        out = []
        for path in (self.db_path, self.db_path.with_name(DB_NAME + ".wal")):
            try:
                st = path.stat()
                out += [st.st_mtime_ns, st.st_size]
            except FileNotFoundError:
                out += [0, 0]
        return tuple(out)

    @property
    def thumbs_dir(self) -> Path:
        return self.root / "thumbs"

    @property
    def index_path(self) -> Path:
        return self.root / "index" / "image.faiss"

    def emb_dir(self, kind: str) -> Path:
        return self.root / "embeddings" / kind

    @property
    def model_dir(self) -> Path:
        return self.root / "model"

    # ------------------------------------------------------------ holding the file
    @contextmanager
    def session(self):
        """Hold the DuckDB file for a block (opening it, waiting for other processes, if needed)."""
        with self._guard:
            if self._con is None:
                self._con = self._open()
                self._generation += 1
            self._sessions += 1
        try:
            yield self
        finally:
            with self._guard:
                self._sessions -= 1
                if self._sessions == 0 and self.per_request:
                    self._disconnect()

    def release(self) -> None:
        """Let go of the file now (unless a session holds it) so other altlens processes can use it; the next
        query opens it again. Stages call this after a commit, before long computations."""
        with self._guard:
            if self._sessions == 0:
                self._disconnect()

    def _disconnect(self) -> None:
        if self._con is not None:
            self._con.close()
            self._con = None

    def _open(self) -> duckdb.DuckDBPyConnection:
        started, delay, told = time.monotonic(), 0.02, False
        while True:
            try:
                return duckdb.connect(str(self.db_path), read_only=self.read_only)
            except duckdb.IOException as exc:
                if "lock" not in str(exc).lower():
                    raise WorkspaceError(_unreadable(self.db_path, exc)) from exc
                waited = time.monotonic() - started
                if waited >= self.lock_wait:
                    raise WorkspaceError(f"{self.root} is busy: {_holder(exc)} is using it and did not let go "
                                         f"within {self.lock_wait:.0f} s; try again when it has finished") from exc
                if not told and waited >= LOCK_NOTICE_S:
                    log.warning("waiting for %s: %s is using it", self.root, _holder(exc))
                    told = True
                time.sleep(delay)
                delay = min(delay * 2, 0.5)
            except duckdb.Error as exc:
                raise WorkspaceError(_unreadable(self.db_path, exc)) from exc

    # ------------------------------------------------------------ queries
    def cursor(self) -> duckdb.DuckDBPyConnection:
        """This thread's cursor on the open connection (DuckDB connections are not shared across threads).
        Use it inside :meth:`session` or :meth:`transaction`."""
        with self._guard:
            if self._con is None:
                if self.per_request:
                    raise RuntimeError("a per-request workspace is used outside a session")
                self._con = self._open()
                self._generation += 1
            con, generation = self._con, self._generation
        if getattr(self._local, "generation", None) != generation:
            self._local.cursor, self._local.generation = con.cursor(), generation
        return self._local.cursor

    def _run(self, sql: str, params) -> duckdb.DuckDBPyConnection:
        try:
            return self.cursor().execute(sql, params or [])
        except duckdb.Error as exc:
            _raise_if_unusable(self.db_path, exc)
            raise

    def execute(self, sql: str, params: list | tuple | None = None) -> None:
        with self.session():
            self._run(sql, params)

    def executemany(self, sql: str, rows: list) -> None:
        with self.session():
            try:
                self.cursor().executemany(sql, rows)
            except duckdb.Error as exc:
                _raise_if_unusable(self.db_path, exc)
                raise

    def rows(self, sql: str, params: list | tuple | None = None) -> list[tuple]:
        with self.session():
            return self._run(sql, params).fetchall()

    def row(self, sql: str, params: list | tuple | None = None) -> tuple | None:
        with self.session():
            found = self._run(sql, params).fetchall()  # fully fetched: DuckDB blocks a cursor with a pending result
            return found[0] if found else None

    def scalar(self, sql: str, params: list | tuple | None = None):
        found = self.row(sql, params)
        return found[0] if found else None

    def dicts(self, sql: str, params: list | tuple | None = None) -> list[dict]:
        with self.session():
            cur = self._run(sql, params)
            names = [d[0] for d in cur.description]
            return [dict(zip(names, row)) for row in cur.fetchall()]

    def numpy(self, sql: str, params: list | tuple | None = None) -> dict:
        """Result columns as numpy arrays (masked where NULL), fetched in one go."""
        with self.session():
            return self._run(sql, params).fetchnumpy()

    @contextmanager
    def transaction(self):
        """A cursor inside BEGIN ... COMMIT (ROLLBACK on any error); a damaged or full disk is one clear error.
        Transactions on one workspace run one at a time in this process (see :func:`write_lock`), so ids
        allocated inside one, and the files named after them, belong to it alone."""
        with self.session(), write_lock(self.db_path):
            cur = self.cursor()
            cur.execute("BEGIN TRANSACTION")
            try:
                yield cur
            except BaseException as exc:
                try:
                    cur.execute("ROLLBACK")
                except duckdb.Error:
                    pass  # a broken connection has no transaction left to roll back
                if isinstance(exc, duckdb.Error):
                    _raise_if_unusable(self.db_path, exc)
                raise
            try:
                cur.execute("COMMIT")
            except duckdb.Error as exc:
                _raise_if_unusable(self.db_path, exc)
                raise

    def insert_arrow(self, table: str, arrow, replace: bool = False, cur=None) -> None:
        """Bulk insert an Arrow table whose columns name ``table``'s (values travel as data, not SQL)."""
        if table not in TABLES:
            raise ValueError(f"unknown table {table!r}")
        with self.session():
            cur = cur or self.cursor()
            columns = ", ".join(arrow.column_names)
            cur.register("_altlens_rows", arrow)
            try:
                verb = "INSERT OR REPLACE" if replace else "INSERT"
                cur.execute(f"{verb} INTO {table} ({columns}) SELECT {columns} FROM _altlens_rows")
            finally:
                cur.unregister("_altlens_rows")

    def close(self) -> None:
        with self._guard:
            self._disconnect()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # ------------------------------------------------------------ schema
    def sweep(self) -> int:
        """Remove temp files that killed altlens processes left in the workspace's folders; returns how many."""
        folders = [self.root / "index", self.root / "maps", self.root / "reward", self.model_dir,
                   self.thumbs_dir / ".staging"]
        return sum(sweep_temp(folder) for folder in folders)

    def _migrate(self) -> None:
        """Create every product table and id sequence that is missing (all of them in a new workspace)."""
        with self.transaction() as cur:
            for statement in create_statements():
                cur.execute(statement)
            for name, (table, column) in SEQUENCES.items():
                start = int(cur.execute(f"SELECT coalesce(max({column}) + 1, 0) FROM {table}").fetchall()[0][0])
                cur.execute(f"CREATE SEQUENCE IF NOT EXISTS {name} START WITH {start} MINVALUE 0")
            cur.execute("INSERT INTO meta VALUES ('schema_version', ?) ON CONFLICT DO NOTHING", [str(SCHEMA_VERSION)])
            cur.execute("INSERT INTO meta VALUES ('created_at', ?) ON CONFLICT DO NOTHING", [now().isoformat()])

    def _check_version(self) -> None:
        try:
            found = int(self.scalar("SELECT value FROM meta WHERE key = 'schema_version'"))
        except (duckdb.CatalogException, TypeError, ValueError) as exc:
            raise WorkspaceError(f"{self.root} is not an altlens workspace (no schema version)") from exc
        if found > SCHEMA_VERSION:
            raise WorkspaceError(f"workspace {self.root} has schema version {found}, newer than this altlens "
                                 f"understands ({SCHEMA_VERSION}); upgrade altlens to open it")
        if self.read_only:
            present = {r[0] for r in self.rows("SELECT table_name FROM information_schema.tables")}
            columns = set(self.rows("SELECT table_name, column_name FROM information_schema.columns"))
            missing = sorted(t.name for t in PRODUCT_TABLES if t.name not in present)
            missing += sorted(f"{t.name}.{c.split()[0]}" for t in PRODUCT_TABLES if t.name in present
                              for c in t.added if (t.name, c.split()[0]) not in columns)
            if missing:
                raise WorkspaceError(f"workspace {self.root} was made by an older altlens and lacks the tables or "
                                     f"columns {', '.join(missing[:4])}; open it once for writing (any command "
                                     "that writes, such as 'altlens score') to add them")

    def has_table(self, name: str) -> bool:
        return bool(self.scalar("SELECT count(*) FROM information_schema.tables WHERE table_name = ?", [name]))

    def require(self, table: str, what: str | None = None) -> None:
        """Raise a one-line error naming the command to run first when ``table`` is still empty."""
        if table not in TABLES:
            raise ValueError(f"unknown table {table!r}")
        if self.scalar(f"SELECT count(*) FROM (SELECT 1 FROM {table} LIMIT 1)") == 0:
            raise WorkspaceError(f"no {what or table} in {self.root} yet; run 'altlens {TABLES[table].owner} "
                                 f"--workspace {self.root}' first")

    def get_meta(self, key: str, default=None):
        value = self.scalar("SELECT value FROM meta WHERE key = ?", [key])
        return json.loads(value) if value is not None else default

    def set_meta(self, key: str, value, cur=None) -> None:
        (cur or self.cursor()).execute(
            "INSERT INTO meta VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            [key, json.dumps(value)])

    # ------------------------------------------------------------ common queries
    def next_id(self, table: str) -> int:
        if table not in ("samples", "captions", "runs"):
            raise ValueError(f"no id sequence for table {table!r}")
        return int(self.scalar(f"SELECT coalesce(max(id) + 1, 0) FROM {table}"))

    def source_stats(self) -> list[dict]:
        """Per source: seen, ok, failed and failures by reason (seen == ok + failed by construction)."""
        return self.dicts("""
            SELECT source, count(*) AS seen, count_if(status = 'ok') AS ok, count_if(status <> 'ok') AS failed
            FROM samples GROUP BY source ORDER BY source""")

    def status_counts(self) -> dict[str, int]:
        return dict(self.rows("SELECT status, count(*) FROM samples GROUP BY status ORDER BY status"))


def _holder(exc: Exception) -> str:
    """Who holds the file, from DuckDB's lock message ("... held in /usr/bin/python (PID 123) ...")."""
    found = re.search(r"PID (\d+)", str(exc))
    return f"another altlens process (PID {found.group(1)})" if found else "another process"


def _raise_if_unusable(path: Path, exc: Exception) -> None:
    """Raise a damaged file or a full disk as one WorkspaceError; any other DuckDB error (a bug) is left to the
    caller to re-raise as it was."""
    if isinstance(exc, BROKEN) or any(word in str(exc).lower() for word in DISK_WORDS):
        raise WorkspaceError(_unreadable(path, exc)) from exc


def _unreadable(path: Path, exc: Exception) -> str:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    if any(word in str(exc).lower() for word in DISK_WORDS):
        return f"no space left on the device holding {path}; nothing of this step was committed: free space and run it again"
    return (f"cannot use {path}: the file is damaged or not an altlens workspace ({text}); restore it from a "
            "backup, or index the sources into a new workspace")
