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
import threading
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

import duckdb

from indexer.errors import WorkspaceError
from indexer.schema import PRODUCT_TABLES, SCHEMA_VERSION, TABLES, create_statements

DB_NAME = "altlens.duckdb"


def now() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


class Workspace:
    """A workspace directory; ``create=True`` makes it if missing."""

    def __init__(self, root: str | Path, read_only: bool = False, create: bool = False):
        self.root = Path(root).resolve()
        self.read_only = read_only
        if not (self.root / DB_NAME).exists():
            if not create:
                raise WorkspaceError(f"no altlens workspace at {str(self.root)!r} (missing {DB_NAME}); "
                                     "create one with 'altlens index SOURCE --workspace DIR'")
            if read_only:
                raise WorkspaceError("cannot create a workspace read-only")
            self.root.mkdir(parents=True, exist_ok=True)
        try:
            self._con = duckdb.connect(str(self.root / DB_NAME), read_only=read_only)
        except duckdb.IOException as exc:
            raise WorkspaceError(f"cannot open {self.root / DB_NAME}: {exc} "
                                 "(another altlens process may be writing to it)") from exc
        self._local = threading.local()
        if not read_only:
            self._migrate()
        self._check_version()

    # ------------------------------------------------------------ paths
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

    # ------------------------------------------------------------ connections
    def cursor(self) -> duckdb.DuckDBPyConnection:
        """This thread's cursor (DuckDB connections are not shared across threads)."""
        cur = getattr(self._local, "cursor", None)
        if cur is None:
            cur = self._con.cursor()
            self._local.cursor = cur
        return cur

    def execute(self, sql: str, params: list | tuple | None = None):
        return self.cursor().execute(sql, params or [])

    def rows(self, sql: str, params: list | tuple | None = None) -> list[tuple]:
        return self.execute(sql, params).fetchall()

    def scalar(self, sql: str, params: list | tuple | None = None):
        row = self.execute(sql, params).fetchone()
        return row[0] if row else None

    def dicts(self, sql: str, params: list | tuple | None = None) -> list[dict]:
        cur = self.execute(sql, params)
        names = [d[0] for d in cur.description]
        return [dict(zip(names, row)) for row in cur.fetchall()]

    @contextmanager
    def transaction(self):
        cur = self.cursor()
        cur.execute("BEGIN TRANSACTION")
        try:
            yield cur
        except BaseException:
            cur.execute("ROLLBACK")
            raise
        cur.execute("COMMIT")

    def insert_arrow(self, table: str, arrow, replace: bool = False, cur=None) -> None:
        """Bulk insert an Arrow table whose columns name ``table``'s (values travel as data, not SQL)."""
        if table not in TABLES:
            raise ValueError(f"unknown table {table!r}")
        cur = cur or self.cursor()
        columns = ", ".join(arrow.column_names)
        cur.register("_altlens_rows", arrow)
        try:
            verb = "INSERT OR REPLACE" if replace else "INSERT"
            cur.execute(f"{verb} INTO {table} ({columns}) SELECT {columns} FROM _altlens_rows")
        finally:
            cur.unregister("_altlens_rows")

    def close(self) -> None:
        self._con.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # ------------------------------------------------------------ schema
    def _migrate(self) -> None:
        """Create every product table that is missing (all of them in a new workspace)."""
        with self.transaction() as cur:
            for statement in create_statements():
                cur.execute(statement)
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
            missing = sorted(t.name for t in PRODUCT_TABLES if t.name not in present)
            if missing:
                raise WorkspaceError(f"workspace {self.root} was made by an older altlens and lacks the tables "
                                     f"{', '.join(missing[:4])}; open it once for writing (any command that writes, "
                                     "such as 'altlens score') to add them")

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
