"""Decode stage: raw sample -> image checked and preprocessed, caption repaired, thumbnail written.

Every problem becomes a status and a reason on the sample; nothing here raises
for bad data. Status codes: ``ok``, ``empty_file``, ``not_an_image``,
``corrupt_image``, ``decompression_bomb``, ``extreme_aspect``, ``unreadable``,
``missing_image``, ``not_a_file``, ``too_large``, ``truncated``, ``outside_source``,
``remote_url``, ``bad_row``, ``duplicate_key``. Caption status: ``ok``,
``missing``, ``empty``, ``repaired`` (invalid UTF-8, lone surrogates or NUL
replaced by U+FFFD), ``long`` (stored verbatim, cut only for embedding).
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from indexer.files import temp_name
from indexer.paths import file_problem, read_member, text_path

warnings.simplefilter("ignore", Image.DecompressionBombWarning)

LONG_CAPTION = 10_000
# Wider than this is a banner, divider or a crafted file: resizing its short side to the model's input size
# would make its long side MAX_ASPECT times that (a 1 x 600,000 PNG would need gigabytes), so it is refused.
MAX_ASPECT = 40
STAGING = ".staging"  # thumbnails are written here, then renamed into thumbs/ab/


@dataclass(frozen=True)
class DecodeConfig:
    """Limits for decoding; ``max_pixels`` follows Pillow's default bomb limit."""

    max_pixels: int = Image.MAX_IMAGE_PIXELS or 89_478_485
    thumb_size: int = 256
    thumb_dir: str | None = None


def decode_sample(raw: dict, cfg: DecodeConfig, preprocess=None) -> dict:
    """Return the sample dict with ``status``, ``reason``, caption fields, and ``pixels`` when ok."""
    out = {k: v for k, v in raw.items() if k not in ("image", "txt", "json", "__extra_images__")}
    out.update(caption_fields(raw.get("txt")))
    out.update(meta_fields(raw.get("json"), raw.get("url.txt")))
    if "__error__" in raw:
        out["status"], out["reason"] = raw["__error__"]
        return out
    data, problem = _image_bytes(raw)
    if problem:
        out["status"], out["reason"] = problem
        return out
    out["sha256"] = hashlib.sha256(data).hexdigest()
    image, problem = open_image(data, cfg.max_pixels)
    if problem:
        out["status"], out["reason"] = problem
        return out
    width, height = image.info["altlens_size"]
    rgb, turned = to_rgb(image)
    if turned:
        width, height = height, width
    extra = raw.get("__extra_images__")
    out.update(status="ok", reason=f"also held {', '.join(extra[:5])}{' ...' if len(extra) > 5 else ''}: another "
                                   "image member of this key, not indexed" if extra else None,
               width=width, height=height, format=image.format)
    if cfg.thumb_dir:
        out["thumb"] = write_thumbnail(rgb, Path(cfg.thumb_dir), raw["__uid__"], cfg.thumb_size)
    if preprocess is not None:
        out["pixels"] = preprocess(rgb)
    return out


# EXIF orientation -> the turn that shows the picture upright (what ImageOps.exif_transpose applies)
ORIENTATIONS = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
                4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270,
                7: Image.Transpose.TRANSVERSE, 8: Image.Transpose.ROTATE_90}
HIGH_DEPTH = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")


def to_rgb(image: Image.Image) -> tuple[Image.Image, bool]:
    """The picture as a person sees it, in 8-bit RGB: EXIF orientation applied (as browsers and trainers do),
    16-bit grey scaled to 8 bits (Pillow's own conversion clips it, nearly white), 32-bit and float grey
    stretched over their range. Returns the image and whether its sides swapped."""
    try:
        turn = ORIENTATIONS.get(int(image.getexif().get(0x0112, 1) or 1))
    except (OSError, ValueError, TypeError, SyntaxError):
        turn = None
    if image.mode in HIGH_DEPTH:
        values = np.asarray(image, dtype=np.float64)
        top = float(np.nanmax(values)) if values.size else 0.0
        if image.mode == "F" or top > 65535:
            low = float(np.nanmin(values)) if values.size else 0.0
            values = (np.nan_to_num(values, nan=low) - low) / ((top - low) or 1.0) * 255
        elif image.mode != "I" or top > 255:  # 16-bit samples (a 16-bit PNG opens as I;16 or I)
            values = values * (255 / 65535)
        image = Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8), mode="L")
    if turn is not None:
        image = image.transpose(turn)
    return image.convert("RGB"), turn in (Image.Transpose.TRANSPOSE, Image.Transpose.ROTATE_270,
                                          Image.Transpose.TRANSVERSE, Image.Transpose.ROTATE_90)


def _image_bytes(raw: dict) -> tuple[bytes, tuple[str, str] | None]:
    if "image" in raw:
        data = raw["image"]
    elif raw.get("__path__"):
        path = raw["__path__"]
        problem = file_problem(text_path(path))
        if problem:
            return b"", problem
        try:
            data = read_member(path, None, None)
        except OSError as exc:
            return b"", ("unreadable", f"cannot read {path}: {exc.strerror or exc}")
    else:
        return b"", ("missing_image", "sample has no image member")
    if not data:
        return b"", ("empty_file", "image is 0 bytes")
    return data, None


def open_image(data: bytes, max_pixels: int) -> tuple[Image.Image | None, tuple[str, str] | None]:
    """Open and fully decode image bytes, or say why not."""
    try:
        image = Image.open(io.BytesIO(data))
        if image.width * image.height > max_pixels:
            return None, ("decompression_bomb", f"{image.width}x{image.height} exceeds {max_pixels} pixels")
        if max(image.size) > MAX_ASPECT * max(min(image.size), 1):
            return None, ("extreme_aspect", f"{image.width}x{image.height} is wider than {MAX_ASPECT}:1")
        size = image.size
        image.draft("RGB", (512, 512))  # JPEG: decode at a reduced scale, far faster for big photos
        image.load()
        image.info["altlens_size"] = size
    except Image.DecompressionBombError as exc:
        return None, ("decompression_bomb", str(exc))
    except UnidentifiedImageError:
        return None, ("not_an_image", "bytes are not an image Pillow can identify")
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        return None, ("corrupt_image", f"image data is damaged: {exc}")
    return image, None


def repair_text(text: str) -> tuple[str, bool]:
    """Replace lone surrogates and NUL with U+FFFD so the text can be stored; say if anything changed."""
    fixed = text.encode("utf-16", "surrogatepass").decode("utf-16", "replace").replace("\x00", "\ufffd")
    return fixed, fixed != text


def caption_fields(value: bytes | str | None) -> dict:
    """``caption`` text (never None) and ``caption_status`` for a raw caption member."""
    if value is None:
        return {"caption": "", "caption_status": "missing"}
    repaired = False
    if isinstance(value, bytes):
        try:
            value = value.decode("utf-8")
        except UnicodeDecodeError:
            value, repaired = value.decode("utf-8", "replace"), True
    value, fixed = repair_text(value)
    repaired = repaired or fixed
    status = "repaired" if repaired else "empty" if not value.strip() else "long" if len(value) > LONG_CAPTION else "ok"
    return {"caption": value, "caption_status": status}


def meta_fields(raw_json: bytes | None, raw_url: bytes | None) -> dict:
    """Sidecar JSON kept as text (repaired if needed) plus the url when it names one."""
    out: dict = {"meta_json": None, "url": None}
    if raw_json:
        text, _ = repair_text(raw_json.decode("utf-8", "replace") if isinstance(raw_json, bytes) else raw_json)
        out["meta_json"] = text
        try:
            meta = json.loads(text)
            if isinstance(meta, dict) and isinstance(meta.get("url"), str):
                out["url"] = meta["url"]
        except json.JSONDecodeError:
            pass
    if raw_url:
        out["url"] = repair_text(raw_url.decode("utf-8", "replace"))[0].strip()
    return out


def staging_path(thumb_dir: Path, path: Path) -> Path:
    """A thumbnail's temp name, in one staging folder so that leftovers of a killed run are cheap to sweep."""
    (thumb_dir / STAGING).mkdir(parents=True, exist_ok=True)
    return temp_name(thumb_dir / STAGING / path.name)


def thumb_relpath(uid: str) -> str:
    return f"{uid[:2]}/{uid}.webp"


def write_thumbnail(image: Image.Image, thumb_dir: Path, uid: str, size: int) -> str:
    """Re-encode a small WebP (never the original bytes) under ``thumbs/ab/UID.webp``; return its relative path."""
    rel = thumb_relpath(uid)
    path = thumb_dir / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    thumb = image.copy()
    thumb.thumbnail((size, size), Image.LANCZOS)
    tmp = staging_path(thumb_dir, path)
    try:
        thumb.save(tmp, format="WEBP", quality=82)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return rel
