"""The sample card: one sample's image beside its alt-text, best synthetic and fused caption, with scores,
labels and tags, as HTML every view shows the same way.

Captions are untrusted text: every value goes through :func:`html.escape`, and the
only markup is this module's own. The image is the workspace thumbnail, served
by Gradio from the thumbnail folder (``/gradio_api/file=``); nothing else is linked.
"""
from __future__ import annotations

from html import escape
from urllib.parse import quote

from indexer.schema import CURATOR

SOURCES = (("alt", "alt-text"), ("syn", "best synthetic"), ("fused", "fused"))

CARD_CSS = """
.al-card { display: flex; gap: 14px; align-items: flex-start; font-size: 14px; line-height: 1.35; }
.al-card .al-img { flex: 0 0 220px; }
.al-card .al-img img { width: 220px; height: 220px; object-fit: contain; image-rendering: pixelated;
  border-radius: 6px; background: #0001; }
.al-card .al-cols { flex: 1 1 auto; display: grid; grid-template-columns: repeat(3, minmax(0, 1fr)); gap: 10px;
  min-width: 0; }
.al-card .al-col { border: 1px solid #8884; border-radius: 6px; padding: 8px; min-width: 0;
  overflow-wrap: anywhere; max-height: 230px; overflow-y: auto; }
.al-card .al-head { font-weight: 600; font-size: 12px; text-transform: uppercase; opacity: .75; }
.al-card .al-text { margin: 4px 0 6px 0; }
.al-card .al-scores, .al-card .al-meta, .al-card .al-lost { font-size: 12px; opacity: .85; }
.al-card .al-lost { color: #b4231b; }
.al-card .al-none { opacity: .6; font-style: italic; }
.al-card-meta { font-size: 12px; margin-top: 6px; opacity: .9; }
.al-card-meta .al-badge { display: inline-block; padding: 1px 7px; border-radius: 9px; margin-right: 4px;
  background: #8882; }
.al-card-meta .al-good { background: #2ba05a33; }
.al-card-meta .al-bad { background: #d6272833; }
#review-actions { position: sticky; bottom: 0; z-index: 20; background: var(--background-fill-primary);
  padding: 6px 0; border-top: 1px solid #8884; }
"""

# after a tile opens its card below a gallery, bring the card on screen (the JS of a .then() step)
SCROLL_TO = "() => document.getElementById('%s')?.scrollIntoView({block: 'start'})"


def _num(value, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def lost_text(caption: dict) -> str:
    """"purple → yellow": the claim the image rejected and the variant it preferred ("red ⇄ blue" for an
    exchange between two objects); empty if none lost."""
    if not caption.get("lost_claim"):
        return ""
    return f"{caption['lost_claim']} \u2192 {caption.get('lost_to') or ''}".replace("<->", " \u21c4 ")


def best_of(captions: list[dict], kind: str) -> tuple[dict | None, int, int]:
    """The caption of ``kind`` with the highest clip_score (for a curator's captions: the latest), how many
    captions of that kind there are, and how many of them differ."""
    mine = [c for c in captions if c["source_kind"] == kind]
    if not mine:
        return None, 0, 0
    if kind == CURATOR:
        return max(mine, key=lambda c: c["idx"]), len(mine), len({c["text"] for c in mine})
    best = max(mine, key=lambda c: (c["clip_score"] is not None, c["clip_score"] or 0.0, -c["idx"]))
    return best, len(mine), len({c["text"] for c in mine})


def _column(captions: list[dict], kind: str, title: str) -> str:
    best, total, distinct = best_of(captions, kind)
    if best is None:
        return (f'<div class="al-col" data-source="{kind}"><div class="al-head">{title}</div>'
                f'<p class="al-text al-none">none</p></div>')
    repeats = sum(c["text"] == best["text"] for c in captions if c["source_kind"] == kind)
    count = f" · {distinct} distinct of {total}" if total > 1 else ""
    same = f" (×{repeats})" if repeats > 1 else ""
    lost = f'<div class="al-lost">claim that lost: {escape(lost_text(best))}</div>' if best.get("lost_claim") else ""
    # the binding check on its own: a weaker substitution can be the one that lost while an exchange failed too
    exchange = (f' <span title="the caption against its exchanges alone (two claims swapped between the things '
                f'they describe)">(exchange {_num(best["exchange"])})</span>' if best.get("exchange") is not None
                else "")
    text = escape(best["text"]) if best["text"].strip() else '<span class="al-none">(empty)</span>'
    return (f'<div class="al-col" data-source="{kind}" title="{escape(best["producer"] or "", quote=True)}">'
            f'<div class="al-head">{title}{count}</div><p class="al-text">{text}{same}</p>'
            f'<div class="al-scores">clip_score {_num(best["clip_score"])} · contrast {_num(best["contrast"])}'
            f'{exchange} · cycle {_num(best["cycle"], 1)}</div>{lost}'
            f'<div class="al-meta">by {escape(best["producer"] or "?")}</div></div>')


def card_html(detail: dict, thumb_path: str | None, labels: dict) -> str:
    """The card for one sample. ``detail``: :func:`curation.views.gallery.sample_detail`; ``thumb_path``: the
    thumbnail's absolute path inside the served folder (or None); ``labels``: ``alignment``, ``preference``
    (latest values or None) and ``tags`` (a list)."""
    image = (f'<img src="/gradio_api/file={quote(thumb_path)}" alt="sample {int(detail["id"])}">'
             if thumb_path else '<div class="al-none">no thumbnail</div>')
    sources = SOURCES + (((CURATOR, "your caption"),) if any(c["source_kind"] == CURATOR for c in detail["captions"])
                         else ())
    columns = "".join(_column(detail["captions"], kind, title) for kind, title in sources)
    badges = [f'<span class="al-badge">#{int(detail["id"])}</span>']
    if detail.get("cluster") is not None:
        badges.append(f'<span class="al-badge">cluster {int(detail["cluster"])}</span>')
    version = detail.get("reward_version")
    badges.append(f'<span class="al-badge">reward v{int(version)} {_num(detail.get("reward"))}</span>' if version is not None
                  else '<span class="al-badge">no reward yet</span>')
    if labels.get("alignment"):
        value = escape(labels["alignment"])
        badges.append(f'<span class="al-badge al-{value}">labelled {value}</span>')
    else:
        badges.append('<span class="al-badge">not labelled</span>')
    if labels.get("preference"):
        badges.append(f'<span class="al-badge">best caption: {escape(labels["preference"])}</span>')
    badges += [f'<span class="al-badge">tag: {escape(t)}</span>' for t in labels.get("tags", [])]
    return (f'<div class="al-card" data-sample="{int(detail["id"])}"><div class="al-img">{image}</div>'
            f'<div class="al-cols" style="grid-template-columns: repeat({len(sources)}, minmax(0, 1fr))">'
            f'{columns}</div></div><div class="al-card-meta">{"".join(badges)}</div>')
