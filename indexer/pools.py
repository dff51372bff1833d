"""Pools that ship their own embeddings -> per-file blocks of metadata rows and the pool's vectors, row-aligned.

Two layouts, as the field ships them:

- ``datacomp``: ``metadata/*.parquet`` with a ``.npz`` of the same stem and row order beside it
  (keys ``b32_img``/``b32_txt``: OpenAI ViT-B-32, ``l14_img``/``l14_txt``: OpenAI ViT-L-14);
- ``clip-retrieval`` (LAION-5B and every ``clip-retrieval inference`` run): ``img_emb/img_emb_{N}.npy``,
  ``text_emb/text_emb_{N}.npy`` and ``metadata/metadata_{N}.parquet``, row i of the three one sample.

Every file is checked before anything is read for the workspace (row counts, dimension, dtype, keys), and a
mismatch is one line naming the file. Blocks are streamed: a parquet file is read a batch at a time and its
vectors are memory-mapped (an ``.npz`` member stored uncompressed is mapped in place), so memory holds a block,
never the pool.
"""
from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from indexer.errors import SourceError

LAYOUTS = ("datacomp", "clip-retrieval")
DATACOMP_EMBEDDINGS = {"l14": "ViT-L-14", "b32": "ViT-B-32"}  # --embeddings -> the OpenAI model that made them
VECTOR_DTYPES = (np.float16, np.float32)
NUMERIC = (pa.types.is_integer, pa.types.is_floating)
# columns that are identities or text, never scores, even when a pool stores them as numbers
NOT_SCORES = {"uid", "key", "id", "index", "sha256"}


@dataclass(frozen=True)
class Columns:
    """Which metadata column holds what, in one layout."""

    uid: tuple[str, ...]
    caption: tuple[str, ...]
    url: tuple[str, ...]
    width: tuple[str, ...]
    height: tuple[str, ...]
    uid_pattern: str = r"^[0-9a-f]{32}$"  # what a usable pool uid looks like (lower-cased first where hex)
    uid_rule: str = "32 hex digits"
    sha256: tuple[str, ...] = ("sha256",)
    key: tuple[str, ...] = ()  # the column naming each row's image in the pool (else FILE-STEM:ROW)


COLUMNS = {
    "datacomp": Columns(uid=("uid",), caption=("text",), url=("url",), width=("original_width",),
                        height=("original_height",)),
    # LAION's key ("000001234") or an img2dataset uid; safe as a WebDataset key and a file name
    "clip-retrieval": Columns(uid=("uid", "key"), caption=("caption", "text"), url=("url",),
                              width=("original_width", "width"), height=("original_height", "height"),
                              uid_pattern=r"^[A-Za-z0-9_-]{1,64}$", uid_rule="1-64 letters, digits, - or _",
                              key=("image_path",)),
}


@dataclass(frozen=True)
class PoolFile:
    """One metadata file and the vectors of its rows."""

    metadata: Path
    image: Path  # a .npy, or the .npz holding ``image_key``
    text: Path | None
    rows: int
    dim: int
    image_key: str | None = None
    text_key: str | None = None

    @property
    def stem(self) -> str:
        return self.metadata.stem


@dataclass
class Block:
    """Rows ``start`` .. ``start + len`` of one pool file: its metadata and its vectors (as the pool stores them)."""

    file: PoolFile
    start: int
    meta: pa.Table
    image: np.ndarray
    text: np.ndarray | None


def pool_files(layout: str, folder: str | Path, embeddings: str = "l14") -> list[PoolFile]:
    """Every file of the pool at ``folder``, checked; a missing or inconsistent file raises SourceError."""
    folder = Path(folder)
    if layout not in LAYOUTS:
        raise SourceError(f"unknown pool layout {layout!r}; allowed: {', '.join(LAYOUTS)}")
    if not folder.is_dir():
        raise SourceError(f"{folder} is not a folder")
    files = _datacomp(folder, embeddings) if layout == "datacomp" else _clip_retrieval(folder)
    if not files:
        raise SourceError(f"{folder} holds no {layout} pool (no metadata parquet files found)")
    dims = {f.dim for f in files}
    if len(dims) > 1:
        raise SourceError(f"{folder}: the pool's files disagree on the embedding dimension ({sorted(dims)})")
    return files


def _datacomp(folder: Path, embeddings: str) -> list[PoolFile]:
    if embeddings not in DATACOMP_EMBEDDINGS:
        raise SourceError(f"unknown --embeddings {embeddings!r}; allowed: {', '.join(DATACOMP_EMBEDDINGS)}")
    meta_dir = folder / "metadata" if (folder / "metadata").is_dir() else folder
    files = []
    for parquet in sorted(meta_dir.glob("*.parquet")):
        npz = parquet.with_suffix(".npz")
        if not npz.is_file():
            raise SourceError(f"{npz}: missing (DataComp ships a .npz of the same stem beside each parquet; "
                              "download them with --download_npz)")
        rows = _parquet_rows(parquet)
        image_key, text_key = f"{embeddings}_img", f"{embeddings}_txt"
        shapes = _npz_shapes(npz)
        if image_key not in shapes:
            raise SourceError(f"{npz}: has no {image_key!r} array (it holds {', '.join(sorted(shapes)) or 'none'})")
        dim = _check_shape(npz, image_key, shapes[image_key], rows)
        if text_key in shapes:
            _check_shape(npz, text_key, shapes[text_key], rows, dim)
        files.append(PoolFile(parquet, npz, npz if text_key in shapes else None, rows, dim, image_key,
                              text_key if text_key in shapes else None))
    return files


def _clip_retrieval(folder: Path) -> list[PoolFile]:
    files = []
    for parquet in sorted((folder / "metadata").glob("metadata_*.parquet")):
        part = parquet.stem[len("metadata_"):]
        image, text = folder / "img_emb" / f"img_emb_{part}.npy", folder / "text_emb" / f"text_emb_{part}.npy"
        if not image.is_file():
            raise SourceError(f"{image}: missing (clip-retrieval writes img_emb_{part}.npy beside {parquet.name})")
        rows = _parquet_rows(parquet)
        dim = _check_shape(image, "", _npy_shape(image), rows)
        if text.is_file():
            _check_shape(text, "", _npy_shape(text), rows, dim)
        files.append(PoolFile(parquet, image, text if text.is_file() else None, rows, dim))
    return files


def _parquet_rows(path: Path) -> int:
    try:
        return pq.ParquetFile(path).metadata.num_rows
    except (OSError, pa.ArrowException) as exc:
        raise SourceError(f"{path}: not a readable parquet file ({exc})") from None


def _check_shape(path: Path, key: str, shape_dtype: tuple, rows: int, dim: int | None = None) -> int:
    shape, dtype = shape_dtype
    where = f"{path}" + (f" [{key}]" if key else "")
    if dtype not in [np.dtype(d) for d in VECTOR_DTYPES]:
        raise SourceError(f"{where}: vectors of dtype {dtype}, expected float16 or float32")
    if len(shape) != 2:
        raise SourceError(f"{where}: an array of shape {shape}, expected rows x dimension")
    if shape[0] != rows:
        raise SourceError(f"{where}: {shape[0]} rows, its metadata parquet has {rows}")
    if dim is not None and shape[1] != dim:
        raise SourceError(f"{where}: dimension {shape[1]}, the image vectors have {dim}")
    return int(shape[1])


def _npy_shape(path: Path) -> tuple:
    """(shape, dtype) from a .npy header; a file shorter than its header promises is refused."""
    try:
        with open(path, "rb") as fh:
            shape, dtype, offset = _read_npy_header(fh)
    except (OSError, ValueError) as exc:
        raise SourceError(f"{path}: not a readable .npy file ({exc})") from None
    needed = offset + int(np.prod(shape)) * dtype.itemsize
    if path.stat().st_size < needed:
        raise SourceError(f"{path}: truncated ({path.stat().st_size} bytes, its header needs {needed})")
    return shape, dtype


def _read_npy_header(fh) -> tuple[tuple, np.dtype, int]:
    version = np.lib.format.read_magic(fh)
    read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    shape, fortran, dtype = read(fh)
    if fortran:
        raise ValueError("Fortran-ordered arrays are not read")
    return shape, dtype, fh.tell()


def _npz_shapes(path: Path) -> dict[str, tuple]:
    """Each array of an .npz: (shape, dtype), read from the member headers only."""
    try:
        with zipfile.ZipFile(path) as zf:
            out = {}
            for info in zf.infolist():
                if info.filename.endswith(".npy"):
                    with zf.open(info) as fh:
                        shape, dtype, _ = _read_npy_header(fh)
                    out[info.filename[:-4]] = (shape, dtype)
            return out
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise SourceError(f"{path}: not a readable .npz file ({exc})") from None


def vectors(path: Path, key: str | None) -> np.ndarray:
    """The array in a .npy, or member ``key`` of an .npz: memory-mapped where the bytes lie in the file as they
    are (an .npy, or an uncompressed .npz member), loaded otherwise."""
    if key is None:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo(f"{key}.npy")
        if info.compress_type != zipfile.ZIP_STORED:
            with zf.open(info) as fh:
                return np.lib.format.read_array(fh, allow_pickle=False)
    with open(path, "rb") as fh:
        fh.seek(info.header_offset)
        local = fh.read(30)
        start = info.header_offset + 30 + int.from_bytes(local[26:28], "little") + int.from_bytes(local[28:30], "little")
        fh.seek(start)
        shape, dtype, offset = _read_npy_header(fh)
    return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape)


def blocks(file: PoolFile, start: int, rows: int) -> Iterator[Block]:
    """The file's rows from ``start`` on, ``rows`` at a time, with their vectors."""
    image = vectors(file.image, file.image_key)
    text = vectors(file.text, file.text_key) if file.text is not None else None
    parquet = pq.ParquetFile(file.metadata)
    offset = 0
    for batch in parquet.iter_batches(batch_size=rows):
        stop = offset + batch.num_rows
        if stop > start:
            cut = max(start - offset, 0)
            meta = pa.Table.from_batches([batch]).slice(cut)
            lo = offset + cut
            yield Block(file, lo, meta, np.array(image[lo:stop]), None if text is None else np.array(text[lo:stop]))
        offset = stop


def column(meta: pa.Table | pa.Schema, names: tuple[str, ...]) -> str | None:
    """The first of ``names`` that ``meta`` (a table or a schema) has."""
    have = meta.names if isinstance(meta, pa.Schema) else meta.column_names
    return next((n for n in names if n in have), None)


def score_columns(schema: pa.Schema, layout: str) -> list[str]:
    """The numeric metadata columns that become imported scores (similarities, sizes, NSFW, aesthetics)."""
    skip = NOT_SCORES | set(COLUMNS[layout].uid)
    return [f.name for f in schema if any(t(f.type) for t in NUMERIC) and f.name not in skip]

