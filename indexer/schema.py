"""The workspace schema in one place: every DuckDB table, the command whose stage fills it, and the caption sources.

All product tables are created together when a workspace is opened for writing
(see :class:`indexer.store.Workspace`). A plugin that needs a table of its own
(the demo's ``demo_truth``) registers it here and creates it itself; nothing in
the product reads it. ``owner`` is the ``altlens`` command that fills a table, so
a command that finds it empty can say what to run first.
"""
from __future__ import annotations

from dataclasses import dataclass

SCHEMA_VERSION = 1

# Caption source kinds: the web alt-text, synthetic captions from a captioner, the fused caption.
ALT, SYN, FUSED = "alt", "syn", "fused"
SOURCE_KINDS = (ALT, SYN, FUSED)
# a caption a curator wrote or corrected in the app (never replaces another caption; export's best policy prefers it)
CURATOR = "curator"


@dataclass(frozen=True)
class Table:
    """One table: its name, the command that fills it, its columns (DDL), secondary indexes (name, column) and
    the nullable columns added since the table first shipped (a workspace made before gains them when it is
    next opened for writing; their rows read NULL until recomputed)."""

    name: str
    owner: str
    columns: str
    indexes: tuple[tuple[str, str], ...] = ()
    added: tuple[str, ...] = ()

    def statements(self) -> list[str]:
        return [f"CREATE TABLE IF NOT EXISTS {self.name} ({self.columns})",
                *(f"ALTER TABLE {self.name} ADD COLUMN IF NOT EXISTS {column}" for column in self.added),
                *(f"CREATE INDEX IF NOT EXISTS {index} ON {self.name} ({column})" for index, column in self.indexes)]


PRODUCT_TABLES = (
    # altlens index: the data and its embeddings
    Table("meta", "index", "key VARCHAR PRIMARY KEY, value VARCHAR"),
    Table("sources", "index", "source VARCHAR PRIMARY KEY, kind VARCHAR NOT NULL, location VARCHAR NOT NULL, "
                              "added_at TIMESTAMP"),
    Table("samples", "index", """id BIGINT PRIMARY KEY, uid VARCHAR NOT NULL UNIQUE, source VARCHAR NOT NULL,
          key VARCHAR NOT NULL, status VARCHAR NOT NULL, reason VARCHAR, path VARCHAR, member_offset BIGINT,
          member_size BIGINT, width INTEGER, height INTEGER, format VARCHAR, sha256 VARCHAR, url VARCHAR,
          meta_json VARCHAR, caption_status VARCHAR, thumb VARCHAR, ingested_at TIMESTAMP""",
          added=("image_state VARCHAR",)),  # NULL: the image is at hand; 'not_downloaded': an imported row, url only
    Table("captions", "index", """id BIGINT PRIMARY KEY, sample_id BIGINT NOT NULL, uid VARCHAR NOT NULL,
          source_kind VARCHAR NOT NULL, producer VARCHAR NOT NULL, params VARCHAR, idx INTEGER NOT NULL,
          text VARCHAR NOT NULL, status VARCHAR NOT NULL DEFAULT 'ok', created_at TIMESTAMP""", (("captions_sample", "sample_id"),)),
    Table("emb_chunks", "index", "kind VARCHAR NOT NULL, start_id BIGINT NOT NULL, n BIGINT NOT NULL, "
                                 "file VARCHAR NOT NULL, PRIMARY KEY (kind, start_id)"),
    Table("ingest_files", "index", "path VARCHAR PRIMARY KEY, source VARCHAR NOT NULL, size BIGINT, mtime DOUBLE, "
                                   "n_samples BIGINT, error VARCHAR, done_at TIMESTAMP"),
    Table("runs", "index", "id BIGINT PRIMARY KEY, command VARCHAR, args VARCHAR, started_at TIMESTAMP, "
                           "finished_at TIMESTAMP, counts VARCHAR"),
    # altlens import: a pool's numeric metadata columns, each named "LAYOUT.COLUMN" (its origin)
    Table("imported_scores", "import", "name VARCHAR NOT NULL, sample_id BIGINT NOT NULL, value DOUBLE"),
    # altlens caption
    Table("producer_failures", "caption", "sample_id BIGINT NOT NULL, producer VARCHAR NOT NULL, "
                                          "reason VARCHAR NOT NULL, created_at TIMESTAMP"),
    # altlens score (reward versions are also added by 'altlens reward apply')
    Table("caption_scores", "score", "caption_id BIGINT PRIMARY KEY, clip_score DOUBLE, cosine DOUBLE, "
                                     "cycle DOUBLE, computed_at TIMESTAMP"),
    Table("sample_scores", "score", "sample_id BIGINT PRIMARY KEY, agreement DOUBLE, computed_at TIMESTAMP"),
    Table("sample_source_scores", "score", "sample_id BIGINT PRIMARY KEY, alt DOUBLE, syn DOUBLE, fused DOUBLE"),
    Table("contrast_sets", "score", "word VARCHAR NOT NULL, alternative VARCHAR NOT NULL, similarity DOUBLE, "
                                    "text_similarity DOUBLE, image_effect DOUBLE, tested INTEGER, kept BOOLEAN, "
                                    "decided BIGINT, PRIMARY KEY (word, alternative)"),
    Table("caption_contrast", "score", "caption_id BIGINT PRIMARY KEY, contrast DOUBLE, claims INTEGER, "
                                       "variants INTEGER, lost_claim VARCHAR, lost_to VARCHAR, computed_at TIMESTAMP",
          added=("substitution DOUBLE", "exchange DOUBLE")),
    Table("reward_versions", "score", "version INTEGER PRIMARY KEY, kind VARCHAR NOT NULL, provenance VARCHAR, "
                                      "created_at TIMESTAMP"),
    Table("rewards", "score", "sample_id BIGINT NOT NULL, version INTEGER NOT NULL, value DOUBLE, "
                              "PRIMARY KEY (sample_id, version)"),
    # altlens map
    Table("clusters", "map", "sample_id BIGINT PRIMARY KEY, cluster INTEGER NOT NULL, distance DOUBLE"),
    Table("map_coords", "map", "sample_id BIGINT PRIMARY KEY, x DOUBLE, y DOUBLE"),
    Table("cluster_summaries", "map", """cluster INTEGER PRIMARY KEY, size BIGINT, exemplars VARCHAR,
          terms VARCHAR, reward VARCHAR, flagged_share DOUBLE, diversity VARCHAR, computed_at TIMESTAMP"""),
    Table("dup_groups", "map", "sample_id BIGINT PRIMARY KEY, group_id BIGINT NOT NULL, "
                               "representative BOOLEAN NOT NULL, similarity DOUBLE, method VARCHAR"),
    # altlens semdedup: per clustered sample, its highest cosine to a member the keep policy prefers (any eps)
    Table("semdedup", "semdedup", """sample_id BIGINT PRIMARY KEY, cluster INTEGER NOT NULL, rank INTEGER NOT NULL,
          max_sim DOUBLE, duplicate_of BIGINT, keep VARCHAR NOT NULL, computed_at TIMESTAMP"""),
    # a curator's choice of which member of a semantic-duplicate group to keep (the latest per group counts)
    Table("semdedup_overrides", "semdedup", "id BIGINT PRIMARY KEY, keep_id BIGINT NOT NULL, instead_of BIGINT NOT NULL, "
                                            "eps DOUBLE, who VARCHAR, created_at TIMESTAMP"),
    # altlens label (and the browser's label buttons)
    Table("labels", "label", "id BIGINT PRIMARY KEY, sample_id BIGINT NOT NULL, kind VARCHAR NOT NULL, "
                             "value VARCHAR NOT NULL, who VARCHAR NOT NULL, view VARCHAR, created_at TIMESTAMP NOT NULL"),
    # altlens concept: scores for what the reward does not cover (zero-shot, trained on tags, imported heads)
    Table("concepts", "concept", "name VARCHAR PRIMARY KEY, prompt VARCHAR, created_at TIMESTAMP"),
    Table("concept_versions", "concept", "name VARCHAR NOT NULL, version INTEGER NOT NULL, kind VARCHAR NOT NULL, "
                                         "provenance VARCHAR, created_at TIMESTAMP, PRIMARY KEY (name, version)"),
    Table("concept_scores", "concept", "name VARCHAR NOT NULL, version INTEGER NOT NULL, sample_id BIGINT NOT NULL, "
                                       "value DOUBLE, PRIMARY KEY (name, version, sample_id)"),
    # altlens select: the alt-text's most likely language (the DataComp and LAION presets keep English)
    Table("caption_languages", "select", "sample_id BIGINT NOT NULL, lang VARCHAR NOT NULL"),
    # altlens select --preset image-based: each sample's nearest centre of a centroids file (named by its hash)
    Table("centroid_assignments", "select", "centroids VARCHAR NOT NULL, sample_id BIGINT NOT NULL, "
                                            "centroid INTEGER NOT NULL"),
    # altlens select
    Table("selections", "select", "name VARCHAR PRIMARY KEY, rule VARCHAR NOT NULL, counts VARCHAR NOT NULL, "
                                  "created_at TIMESTAMP"),
    Table("selection_members", "select", "name VARCHAR NOT NULL, sample_id BIGINT NOT NULL"),
)

TABLES: dict[str, Table] = {t.name: t for t in PRODUCT_TABLES}

# Id sequences (name -> table, column): ids that concurrent writers take without colliding.
SEQUENCES = {"label_ids": ("labels", "id"), "semdedup_override_ids": ("semdedup_overrides", "id")}


def register_table(table: Table) -> Table:
    """Make a plugin's own table known (so bulk inserts accept it); the plugin creates it."""
    known = TABLES.get(table.name)
    if known is not None and known != table:
        raise ValueError(f"table {table.name!r} is defined already (owner {known.owner!r})")
    TABLES[table.name] = table
    return table


def create_statements() -> list[str]:
    """Every product table's CREATE statements, in dependency-free order."""
    return [statement for table in PRODUCT_TABLES for statement in table.statements()]
