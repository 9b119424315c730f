"""leaderboard.md and claims.md (pandas ``DataFrame.to_markdown``, i.e. tabulate's
GitHub-style pipe tables). Every text that comes from the profile or the runs is
HTML-escaped (Markdown passes raw HTML through: a ``<script>`` in a description must not)
and has its ``|`` escaped."""
from __future__ import annotations

from kdbench.board.render import text as T
from kdbench.board import trees as tree_table
from kdbench.board.claims import scorecard
from kdbench.board.published import OURS_TEXT


def esc(s) -> str:
    """& and < as entities (no tag, no entity can start), | escaped for the pipe tables."""
    return str(s).replace("&", "&amp;").replace("<", "&lt;").replace("|", "\\|")


#: Markdown's own syntax: links and images ([x](url), ![x](url)), emphasis (*, _, ~), code
#: (`), headings (#) and the backslash itself; a backslash before each makes it plain
MARKDOWN_SYNTAX = "\\`*_[]~!#"


def esc_text(s) -> str:
    """Free text from the profile (its description, the title) as plain text, as the HTML
    page shows it: :func:`esc`, Markdown's syntax characters backslashed (no link, no
    emphasis: ``[x](javascript:...)`` stays text), line breaks as spaces (no heading or
    list can start)."""
    text = "".join("\\" + c if c in MARKDOWN_SYNTAX else c for c in str(s))
    return " ".join(esc(text).splitlines())


def _table(frame, aligns) -> str:
    frame = frame.map(esc)
    frame.columns = [esc(c) for c in frame.columns]
    return frame.to_markdown(index=False, colalign=aligns, disable_numparse=True)


def overall_markdown(overall, note: str, profile_note: str = "") -> list:
    """The "Overall" section's lines (overall.csv rendered; the profile figure named)."""
    if overall is None or len(overall) == 0:
        return []
    frame = T.overall_frame(overall)
    lines = ["## Overall", "", esc(note), "", _table(frame, ["left", "right", "right", "right", "right", "right"]), ""]
    if profile_note:
        lines += [esc(profile_note) + " Figure: performance_profile.png; data: performance_profile.csv.", ""]
    return lines


def render_markdown(board, title: str = "kdbench leaderboard", note: str = "", reproduction=None, trees=None,
                    overall=None, overall_note: str = "", profile_note: str = "") -> str:
    lines = [f"# {esc_text(title)}", ""]
    if note:
        lines += [esc_text(note), ""]
    lines += [esc(T.notes(board)) + " Best student top-1 per table in bold.", ""]
    lines += overall_markdown(overall, overall_note, profile_note)
    columns = T.columns_for(board)
    aligns = ["left" if k in ("text", "hparams") else "right" for _, _, k in columns]
    current = None
    for d, t, s, g in T.cells(board):
        if d != current:
            lines += [f"## {esc(d)}", ""]
            current = d
        lines += [f"### {esc(t)} → {esc(s)}", ""]
        lines += [f"**Note:** {esc_text(n)}" for n in T.cell_notes(g)] + ([""] if T.cell_notes(g) else [])
        frame = T.display_frame(g, columns)
        best = T.best_index(g)
        if best is not None:
            frame.loc[best, "Top-1 %"] = f"**{frame.loc[best, 'Top-1 %']}**"
        lines += [_table(frame, aligns), ""]
    if trees is not None and len(trees):
        frame = tree_table.display(trees)
        lines += ["## Teacher trees", "", esc(tree_table.NOTE), "", _table(frame, ["left"] * 3 + ["right"] * (frame.shape[1] - 3)),
                  ""]
    if reproduction is not None and len(reproduction):
        lines += ["## Reproduction scorecard", "", REPRO_NOTE, "", _table(reproduction_frame(reproduction),
                                                                         REPRO_ALIGN), ""]
    return "\n".join(lines)


REPRO_NOTE = ("Published top-1 (params/published/) against our number of the same selection: a published "
              "last-epoch number (or one whose selection is unknown: the row says so) against our top1, our last "
              "epoch; a best-epoch-on-test number against our top1_best_test, the max over epochs of our test "
              "top-1 (recorded only with the recipe's test_every_epoch; the like-for-like yardstick for papers "
              "that select on the test split, never a ranking metric; not recorded = our runs did not score the "
              "test split every epoch). Ours: mean over seeds [95 % t-interval]. Runs: how many runs the "
              "published number averages. reproduces = the published value lies inside our interval; below / "
              "above = our interval lies entirely below / above it; no CI = fewer than two seeds; reference "
              "(other recipe) = the same architecture family trained under another recipe (resolution, data, "
              "schedule): shown for scale, no verdict.")
#: the reproduction scorecard's columns and their Markdown alignment
REPRO_COLUMNS = ["Dataset", "Pair", "Method", "Published %", "Selection", "Runs", "Ours % [95 % CI]", "Our number",
                 "Δ [our 95 % CI]", "Outcome", "Source"]
REPRO_ALIGN = ["left"] * 3 + ["right", "left", "right", "right", "left", "right", "left", "left"]


def _ours_text(r) -> str:
    if T.isnan(r["ours_mean"]):
        return T.DASH
    ci = "" if T.isnan(r["ours_ci_lo"]) else f" [{r['ours_ci_lo'] * 100:.2f}, {r['ours_ci_hi'] * 100:.2f}]"
    return f"{r['ours_mean'] * 100:.2f}{ci}"


def reproduction_frame(rep):
    """The reproduction scorecard (:func:`kdbench.board.published.scorecard`) as strings."""
    import pandas as pd

    rows = []
    for _, r in rep.iterrows():
        sel = str(r["published_selection"])
        runs = T.DASH if T.isnan(r["published_runs"]) else str(r["published_runs"])
        rows.append([r["dataset"], f"{r['teacher']} → {r['student']}", r["method"],
                     T.fmt(r["published_top1"] * 100, 2), sel, runs, _ours_text(r),
                     OURS_TEXT.get(sel, str(r["ours_metric"])),
                     T.fmt_delta_ci(r["delta_vs_published"], r["delta_vs_published_ci_lo"],
                                    r["delta_vs_published_ci_hi"]), r["outcome"], r["published_source"]])
    return pd.DataFrame(rows, columns=REPRO_COLUMNS)


def scorecard_frame(card):
    """The claims scorecard as strings: one row per claim, one column per cell."""
    import pandas as pd

    rows = []
    for r in card["rows"]:
        row = [r["statement"]]
        for label in card["cells"]:
            e = r["entries"].get(label)
            if e is None:
                row.append(T.DASH)
                continue
            detail = "" if e.get("folded") or not e["detail"] else f" ({e['detail']})"
            row.append(f"{T.entry_text(e, r['metric'])} **{e['verdict']}**{detail}")
        rows.append(row)
    return pd.DataFrame(rows, columns=["Claim"] + list(card["cells"]))


def render_claims_markdown(claims, card=None) -> str:
    lines = ["# Claims", ""]
    if claims is None or len(claims) == 0:
        return "\n".join(lines + ["No claim could be tested on these runs.", ""])
    card = card if card is not None else scorecard(claims)
    if card["rows"] and card["cells"]:
        lines += ["## Scorecard", "", T.SCORECARD_NOTE, ""]
        frame = scorecard_frame(card)
        lines += [_table(frame, ["left"] * len(frame.columns)), ""]
    lines += ["## Every test", "", "One row per claim and cell (UniCAM: one row per distilled method); p_value "
              "uncorrected, p_holm Holm-corrected within the cell; `test` says which test gave p.", ""]
    cols = list(claims.columns)
    body = claims.copy().astype(object)
    for c in cols:
        body[c] = [_claim_cell(c, v) for v in claims[c]]
    lines += [_table(body, ["left"] * len(cols)), ""]
    return "\n".join(lines)


def _claim_cell(col, v) -> str:
    if col == "holds":
        return T.DASH if T.isnan(v) or v is None else ("yes" if bool(v) else "no")
    if isinstance(v, float):
        return T.fmt_p(v) if col in ("p_value", "p_holm") else T.fmt(v, 4)
    return T.DASH if v is None or T.isnan(v) else str(v)
