"""The Semantic duplicates view: what each eps removes (overall, and in the clusters it hits hardest), the
groups at an eps largest first, a group's members with the kept one marked, and the curator's overrule. The
same library calls as ``altlens semdedup`` and ``altlens select --semdedup`` (:mod:`curation.structure.semdedup`)."""
from __future__ import annotations

import gradio as gr

from app.charts import curve, fmt_reward
from app.curate import Curate
from app.curate_ui import SamplePanel, _who
from app.handlers import UserError, as_float, as_int
from curation.structure import semdedup as sd
from curation.structure.semdedup import DEFAULT_EPS

GROUPS_PER_PAGE = 20


class SemanticDesk:
    """Handlers for the Semantic duplicates view; the overrule is refused on a ``--read-only`` server."""

    def __init__(self, c: Curate):
        self.c, self.h, self.ws = c, c.h, c.ws

    def _eps(self, eps) -> float:
        eps = as_float(eps, "eps")
        if not 0 < eps < 1:
            raise UserError("eps is between 0 and 1 (0.05: cosine 0.95)")
        if self.ws.get_meta("semdedup") is None:
            raise UserError("no semantic dedup yet; run 'altlens semdedup --workspace WS' first")
        return eps

    def curve(self, eps) -> tuple:
        """(eps curve rows, a picture of it with ``eps`` marked, the clusters ``eps`` hits hardest)."""
        eps = self._eps(eps)
        points = sd.stored_curve(self.ws, tuple(sorted(set(sd.EPS_GRID) | {round(eps, 4)})))
        rows = [[p["eps"], round(1 - p["eps"], 4), p["removed"], f"{p['share']:.1%}", p["worst_cluster"],
                 f"{p['worst_cluster_share']:.1%}"] for p in points]
        picture = curve([p["eps"] for p in points], {"all samples": [p["share"] for p in points],
                                                     "hardest-hit cluster": [p["worst_cluster_share"] for p in points]},
                        "share of samples removed", "eps", mark=eps)
        hardest = [[r["cluster"], r["size"], r["removed"], f"{r['share']:.1%}"] for r in sd.per_cluster(self.ws, eps)]
        return rows, picture, hardest

    def groups(self, eps, page) -> tuple:
        """A page of semantic-duplicate groups at ``eps``, largest first: (table rows, note, first group's id)."""
        eps = self._eps(eps)
        page = as_int(page or 0, "page", 0, 10**6)
        found = sd.groups(self.ws, eps, limit=GROUPS_PER_PAGE, offset=page * GROUPS_PER_PAGE)
        rows = []
        for g in found["page"]:
            kept = g["members"][0]
            others = " | ".join(f"#{m['id']}: {(m.get('alt') or '')[:60]}" for m in g["members"][1:4])
            more = f" (+{g['size'] - 4} more)" if g["size"] > 4 else ""
            rows.append([g["group"], g["size"], f"#{kept['id']}" + (" (curator)" if g["overruled"] else ""),
                         (kept.get("alt") or "")[:80], fmt_reward(kept.get("reward")), others + more])
        note = (f"{found['groups']} groups holding {found['in_groups']} samples at eps {eps:g} "
                f"(cosine ≥ {1 - eps:g}); a selection with this eps keeps one per group "
                f"({found['in_groups'] - found['groups']} dropped) · kept by {found['keep']} · page {page + 1}")
        return rows, note, (found["page"][0]["group"] if found["page"] else None)

    def group(self, group, eps) -> tuple:
        """One group's members as tiles, the kept one first and marked: (tiles, ids, captions table)."""
        eps = as_float(eps, "eps")
        group = as_int(group, "group")
        found = sd.groups(self.ws, eps, only=group)["page"]
        if not found:
            raise UserError(f"no group {group} at eps {eps:g}")
        members = found[0]["members"][:48]
        tiles, ids, table = [], [], []
        for m in members:
            path = self.h.thumb(m.get("thumb"))
            mark = "★ kept" if m["kept"] else f"cos {m['cos_to_kept']:.3f} to #{found[0]['kept']}"
            if path:
                tiles.append((path, f"#{m['id']} · {mark} · reward {fmt_reward(m.get('reward'))}"))
                ids.append(m["id"])
            table.append([m["id"], "kept" if m["kept"] else "dropped", "" if m["kept"] else f"{m['cos_to_kept']:.3f}",
                          fmt_reward(m.get("reward")), m.get("alt") or ""])
        return tiles, ids, table

    def overrule(self, keep, eps, who: str = "local") -> str:
        """Keep sample ``keep`` instead of the member its group's policy kept."""
        self.c._writable()
        eps = as_float(eps, "eps")
        try:
            result = sd.overrule(self.ws, as_int(keep, "sample id"), eps, who=who)
        except ValueError as exc:
            raise UserError(str(exc)) from None
        return (f"group {result['group']}: #{result['kept']} is kept instead of #{result['instead_of']} "
                "(selections with --semdedup apply it)")


def semantic_tab(c: Curate, friendly) -> None:
    """Semantic duplicates: groups at an eps, largest first; a group's members with the kept one marked; the
    curator can keep another member instead."""
    desk = SemanticDesk(c)
    with gr.Row():
        eps = gr.Slider(0.01, 0.2, value=DEFAULT_EPS, step=0.005, label="eps (a pair is a duplicate at cosine ≥ 1 − eps)",
                        elem_id="semantic-eps")
        page = gr.Number(value=0, precision=0, minimum=0, label="Page (20 groups each)")
        show = gr.Button("Show groups", variant="primary", elem_id="semantic-show")
    with gr.Row():
        curve = gr.Dataframe(headers=["eps", "cosine ≥", "removed", "share", "hardest-hit cluster", "its share"],
                             label="What each eps removes (one run answers every eps)", interactive=False,
                             elem_id="semantic-curve", scale=3)
        picture = gr.Image(label="Share removed by eps", interactive=False, elem_id="semantic-curve-picture",
                           height=260, scale=2)
    clusters = gr.Dataframe(headers=["cluster", "size", "removed", "share"], max_height=240,
                            label="Clusters this eps hits hardest", interactive=False, elem_id="semantic-clusters")
    note = gr.Textbox(label="Groups", interactive=False, elem_id="semantic-note")
    table = gr.Dataframe(headers=["group", "size", "kept", "kept alt-text", "reward", "others"],
                         label="Groups, largest first (click a row to see its members)", interactive=False,
                         wrap=True, elem_id="semantic-groups")
    group = gr.Number(value=None, precision=0, label="Group", interactive=False)
    ids = gr.State([])
    members = gr.Gallery(label="Members (★ kept; the others with their cosine to the member kept now)",
                         columns=8, height=260, allow_preview=False, object_fit="contain",
                         elem_id="semantic-members", elem_classes=["tile-gallery"])
    captions = gr.Dataframe(headers=["sample", "", "cosine to kept", "reward", "alt-text"], label="Their captions",
                            interactive=False, wrap=True, elem_id="semantic-captions")
    with gr.Row():
        keep = gr.Number(value=None, precision=0, label="Keep sample # instead", elem_id="semantic-keep")
        overrule = gr.Button("Keep this one instead", elem_id="semantic-overrule")
    said = gr.Textbox(label="Overruled", interactive=False, elem_id="semantic-said")
    SamplePanel(c, friendly, "semantic").open_ids(members, ids)

    def listing(e, p):
        table_rows, picture_now, cluster_rows = friendly(desk.curve)(e)
        rows, text, first = friendly(desk.groups)(e, p)
        tiles, member_ids, caps = friendly(desk.group)(first, e) if first is not None else ([], [], [])
        return table_rows, picture_now, cluster_rows, rows, text, first, tiles, member_ids, caps
    def open_group(evt: gr.SelectData, rows, e):
        row = evt.index[0] if isinstance(evt.index, (list, tuple)) else evt.index
        chosen = rows.iloc[row, 0] if hasattr(rows, "iloc") else rows[row][0]
        return (chosen, *friendly(desk.group)(chosen, e))
    def do_overrule(k, e, p, g, request: gr.Request):
        text = friendly(desk.overrule)(k, e, _who(request))
        rows, summary, _ = friendly(desk.groups)(e, p)
        return (text, rows, summary, *friendly(desk.group)(g, e))
    show.click(listing, [eps, page], [curve, picture, clusters, table, note, group, members, ids, captions])
    table.select(open_group, [table, eps], [group, members, ids, captions])
    overrule.click(do_overrule, [keep, eps, page, group], [said, table, note, members, ids, captions])
