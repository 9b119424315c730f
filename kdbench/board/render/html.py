"""leaderboard.html: one self-contained page (inline CSS, JS and figures, nothing
fetched). Every text is escaped. Sections: the tables (one sortable table per dataset
and pair, teacher row first), the claims scorecard (full claims table folded away), the
reproduction scorecard when published numbers exist, the figures, every run."""
from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import Dict, Optional

from kdbench.board.overall import NOTE as OVERALL_NOTE
from kdbench.board.render import text as T
from kdbench.board.stats import ALPHA
from kdbench.board.render.markdown import REPRO_NOTE, reproduction_frame
from kdbench.board.render.markdown import _claim_cell
from kdbench.board.claims import scorecard
from kdbench.board import trees as tree_table

e = html.escape

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:1.5rem auto;max-width:1360px;
     padding:0 1rem;color:#1d2433;line-height:1.4}
h1{margin-bottom:.2rem} h2{border-bottom:2px solid #dde3ea;padding-bottom:.2rem;margin-top:2rem}
h3{margin:1.2rem 0 .3rem;font-weight:600}
.note{color:#5a6578;font-size:.86rem;max-width:1100px} .warn{color:#8a4b00}
.wrap{overflow-x:auto}
table{border-collapse:collapse;font-size:.78rem;margin:.3rem 0 1rem}
th,td{padding:.25rem .35rem;border-bottom:1px solid #e6eaef;text-align:right;white-space:nowrap}
th{white-space:normal;vertical-align:bottom;max-width:6.5rem}
th:first-child,td:first-child{text-align:left;max-width:16rem}
th{background:#f3f6f9;cursor:pointer;user-select:none;position:sticky;top:0}
th:hover{background:#e3e9f0} th.asc::after{content:" ▲"} th.desc::after{content:" ▼"}
span.hp{display:block;white-space:normal;max-width:15rem;color:#5a6578;font-size:.7rem;font-style:normal;
        font-weight:400}
span.ci{display:block;font-size:.7rem;color:#5a6578;font-weight:400}
tr:hover td{background:#f8fafc} tr.best td{font-weight:650} tr.base td:first-child{color:#5a6578}
tr.teacher td{background:#f6f4fb;font-style:italic}
td.pos{color:#11793b;font-weight:600} td.neg{color:#b4232a;font-weight:600} td.ns{color:#5a6578}
table.overall{font-size:.84rem} table.overall td,table.overall th{padding:.3rem .7rem}
figure.profile img{max-width:min(100%,1300px)}
table.card{font-size:.82rem;width:100%;table-layout:fixed}
table.card th{cursor:default;white-space:normal;text-align:center}
table.card th:first-child{width:22%;text-align:left}
table.card td{white-space:normal;text-align:center;vertical-align:top;padding:.35rem .4rem}
table.card td:first-child{text-align:left}
.claim small{color:#5a6578;display:block}
.v{display:inline-block;border-radius:.6rem;padding:0 .5rem;font-weight:650;font-size:.76rem;margin-top:.15rem}
.v-holds,.v-reproduces{background:#dcf3e4;color:#0c5d2d} .v-refuted,.v-below,.v-above{background:#fbe1e1;color:#8f1c22}
.v-inconclusive,.v-no-CI{background:#fdf1d4;color:#7a5600} .v-no-data{background:#eef0f3;color:#5a6578}
.d{display:block;font-variant-numeric:tabular-nums} .x{display:block;color:#5a6578;font-size:.72rem}
figure{margin:1rem 0} figure img{max-width:100%;border:1px solid #e6eaef}
figcaption{color:#5a6578;font-size:.9rem}
details{margin:1rem 0} summary{cursor:pointer;font-weight:600}
nav a{margin-right:1rem}
"""

JS = """
document.querySelectorAll('table.sortable').forEach(function(t){
  t.querySelectorAll('th').forEach(function(th,i){
    th.addEventListener('click',function(){
      var asc=!th.classList.contains('asc');
      t.querySelectorAll('th').forEach(function(h){h.classList.remove('asc','desc');});
      th.classList.add(asc?'asc':'desc');
      var body=t.tBodies[0], rows=Array.prototype.slice.call(body.rows);
      rows.sort(function(a,b){
        var x=a.cells[i].getAttribute('data-v'), y=b.cells[i].getAttribute('data-v');
        if(x===''&&y!=='') return 1; if(y===''&&x!=='') return -1;
        var nx=parseFloat(x), ny=parseFloat(y), r;
        r=(!isNaN(nx)&&!isNaN(ny))?nx-ny:String(x).localeCompare(String(y));
        return asc?r:-r;
      });
      rows.forEach(function(r){body.appendChild(r);});
    });
  });
});
"""


def _badge(verdict: str) -> str:
    return f'<span class="v v-{e(verdict.replace(" ", "-"))}">{e(verdict)}</span>'


def html_table(frame, columns, *, row_class=None, hparams_line: bool = True) -> str:
    """A sortable table; columns: (column, header, kind) like text.DISPLAY. With
    ``hparams_line`` the hyperparameters column is shown as a small line under the method."""
    if hparams_line:
        columns = [c for c in columns if c[2] != "hparams"]
        columns = [(c, "Method · hyperparameters (source)" if c == "method" else h, k) for c, h, k in columns]
    out = ['<div class="wrap"><table class="sortable"><thead><tr>']
    out += [f"<th>{e(h)}</th>" for _, h, _ in columns]
    out.append("</tr></thead><tbody>")
    for i, row in frame.iterrows():
        cls = row_class(i, row) if row_class else ""
        out.append(f'<tr class="{e(cls)}">' if cls else "<tr>")
        for c, _, k in columns:
            shown = e(T.cell_text(row, c, k))
            tdc = _delta_class(row, c) if k in ("delta", "deltaci") else ""
            if k == "deltaci" and " [" in shown:   # the CI on a second, smaller line: narrower tables
                d, ci = shown.split(" [", 1)
                shown = f'{d}<span class="ci">[{ci}</span>'
            if c == "method" and hparams_line:       # the hyperparameters under the method's name
                hp = T.hparams_display(row.get("hparams"), row.get("hparams_source"))
                if hp != T.DASH:
                    shown += f'<span class="hp">{e(hp)}</span>'
            out.append(f'<td data-v="{e(T.sort_value(row, c, k))}"{tdc}>{shown}</td>')
        out.append("</tr>")
    out.append("</tbody></table></div>")
    return "".join(out)


def _delta_class(row, col: str) -> str:
    """A Δ's colour by its verdict, never by its sign alone: green / red where the
    Holm-corrected p (``<col>_p_holm``) is below 0.05 (for the published Δ: our interval
    lies above / below the published value), grey where it is not significant or untested."""
    d = row[col]
    if T.isnan(d):
        return ""
    if col == "delta_vs_published":
        verdict = row.get("reproduces")
        significant = verdict is not None and not T.isnan(verdict) and not bool(verdict)
    else:
        p = row.get(f"{col}_p_holm")
        significant = p is not None and not T.isnan(p) and p < ALPHA
    if not significant or d == 0:
        return ' class="ns"'
    return ' class="pos"' if d > 0 else ' class="neg"'


def plain_table(frame, css_class: str = "sortable") -> str:
    out = [f'<div class="wrap"><table class="{css_class}"><thead><tr>']
    out += [f"<th>{e(str(c))}</th>" for c in frame.columns]
    out.append("</tr></thead><tbody>")
    for _, row in frame.iterrows():
        out.append("<tr>" + "".join(f'<td data-v="{e(str(v))}">{e(str(v))}</td>' for v in row) + "</tr>")
    out.append("</tbody></table></div>")
    return "".join(out)


def scorecard_html(card) -> str:
    out = ['<table class="card"><thead><tr><th>Claim</th>']
    out += [f"<th>{e(c)}</th>" for c in card["cells"]]
    out.append("</tr></thead><tbody>")
    for r in card["rows"]:
        out.append(f'<tr><td class="claim">{e(r["statement"])}<small>{e(r["paper"])} · {e(r["metric"])}</small></td>')
        for label in card["cells"]:
            en = r["entries"].get(label)
            if en is None:
                out.append(f"<td>{_badge('no data')}</td>")
                continue
            detail = "" if en.get("folded") or not en["detail"] else f'<span class="x">{e(en["detail"])}</span>'
            out.append(f'<td><span class="d">{e(T.entry_text(en, r["metric"]))}</span>{_badge(en["verdict"])}'
                       f"{detail}</td>")
        out.append("</tr>")
    out.append("</tbody></table>")
    return "".join(out)


def reproduction_html(rep) -> str:
    frame = reproduction_frame(rep)
    out = [f'<p class="note">{e(REPRO_NOTE)}</p><div class="wrap"><table class="sortable"><thead><tr>']
    out += [f"<th>{e(c)}</th>" for c in frame.columns]
    out.append("</tr></thead><tbody>")
    for _, row in frame.iterrows():
        cells = [f"<td>{e(str(v))}</td>" if c != "Outcome" else f"<td>{_badge(str(v))}</td>"
                 for c, v in row.items()]
        out.append("<tr>" + "".join(cells) + "</tr>")
    out.append("</tbody></table></div>")
    return "".join(out)


def _img(path: Path) -> str:
    if not path.is_file():
        return ""
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img alt="{e(path.name)}" src="data:image/png;base64,{data}">'


def _claims_detail(claims) -> str:
    body = claims.copy().astype(object)
    for c in claims.columns:
        body[c] = [_claim_cell(c, v) for v in claims[c]]
    return plain_table(body)


CAPTIONS = {"fig_accuracy": "Top-1 per method: mean with its 95 % CI over seeds (large dot), the seeds (small "
                            "dots), one panel per dataset and pair; one colour per method in every figure.",
            "fig_profile": "Performance profiles: for each method, the fraction of the cells it ran in where its "
                           "mean is within δ of the cell's best, as δ grows (higher and further left is better).",
            "fig_agreement": "Top-1 against teacher-student agreement (mean over seeds).",
            "fig_ood": "Out-of-distribution against in-distribution top-1 (mean over seeds)."}


DELTA_NOTE = ("Δ in green / red: significantly better / worse (Holm-corrected p < 0.05; the published Δ: our "
              "95 % CI excludes the published value); grey: not significant, whatever its sign.")


def overall_html(overall, figure: Optional[Path]) -> str:
    """The "Overall" section: the table (overall.csv), then the performance profile."""
    if overall is None or len(overall) == 0:
        return ""
    frame = T.overall_frame(overall)
    out = ['<h2 id="overall">Overall</h2>', f'<p class="note">{e(OVERALL_NOTE)}</p>', plain_table(frame, "sortable overall")]
    img = _img(Path(figure)) if figure is not None else ""
    if img:
        out.append(f'<figure class="profile">{img}<figcaption>{e(CAPTIONS["fig_profile"])}</figcaption></figure>')
    return "".join(out)


def _nav(datasets, has_overall: bool, has_trees: bool, has_repro: bool) -> str:
    nav = ["<nav>", '<a href="#claims">claims</a>'] + (['<a href="#overall">overall</a>'] if has_overall else [])
    nav += [f'<a href="#ds-{e(d)}">{e(d)}</a>' for d in datasets]
    nav += (['<a href="#trees">teacher trees</a>'] if has_trees else [])
    nav += (['<a href="#reproduction">reproduction</a>'] if has_repro else [])
    nav += ['<a href="#figures">figures</a>', '<a href="#runs">runs</a></nav>']
    return "".join(nav)


def render_html(board, runs, claims=None, figures: Optional[Dict[str, Path]] = None,
                title: str = "kdbench leaderboard", note: str = "", reproduction=None, card=None, trees=None,
                overall=None) -> str:
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             '<meta name="viewport" content="width=device-width, initial-scale=1">',
             f"<title>{e(title)}</title><style>{CSS}</style></head><body>", f"<h1>{e(title)}</h1>"]
    if note:
        parts.append(f'<p class="note">{e(note)}</p>')
    parts.append(f'<p class="note">{len(board)} rows from {len(runs)} runs. {e(T.notes(board))} {e(DELTA_NOTE)} '
                 "Click a column header to sort.</p>")
    datasets = list(dict.fromkeys(board["dataset"]))
    has_repro = reproduction is not None and len(reproduction) > 0
    figures = dict(figures or {})
    profile_fig = figures.pop("fig_profile", None)
    has_overall = overall is not None and len(overall) > 0
    parts.append(_nav(datasets, has_overall, trees is not None and len(trees) > 0, has_repro))

    parts.append('<h2 id="claims">Claims</h2>')
    if claims is None or len(claims) == 0:
        parts.append('<p class="note">No claim could be tested on these runs.</p>')
    else:
        card = card if card is not None else scorecard(claims)
        parts.append(f'<p class="note">{e(T.SCORECARD_NOTE)}</p>')
        parts.append(scorecard_html(card))
        parts.append("<details><summary>every claim test (claims.csv)</summary>")
        parts.append(_claims_detail(claims))
        parts.append("</details>")
    parts.append(overall_html(overall, profile_fig))

    columns = T.columns_for(board)
    current = None
    for d, t, s, g in T.cells(board):
        if d != current:
            parts.append(f'<h2 id="ds-{e(d)}">{e(d)}</h2>')
            current = d
        parts.append(f"<h3>{e(t)} → {e(s)}</h3>")
        parts += [f'<p class="note warn">{e(n)}</p>' for n in T.cell_notes(g)]
        best = T.best_index(g)

        def row_class(i, row, best=best):
            cls = []
            if i == best:
                cls.append("best")
            if row["method"] in ("vanilla", "kd"):
                cls.append("base")
            if row["method"] == "teacher":
                cls.append("teacher")
            return " ".join(cls)

        parts.append(html_table(g, columns, row_class=row_class))

    if trees is not None and len(trees):
        parts.append(f'<h2 id="trees">Teacher trees</h2><p class="note">{e(tree_table.NOTE)}</p>')
        parts.append(plain_table(tree_table.display(trees)))
    if has_repro:
        parts.append('<h2 id="reproduction">Reproduction scorecard</h2>')
        parts.append(reproduction_html(reproduction))

    parts.append('<h2 id="figures">Figures</h2>')
    for key, path in figures.items():
        img = _img(Path(path))
        if img:
            parts.append(f"<figure>{img}<figcaption>{e(CAPTIONS.get(key, ''))}</figcaption></figure>")

    parts.append('<h2 id="runs">Runs</h2><details><summary>every run (one row per seed)</summary>')
    run_cols = [(c, c, "runtext" if c in ("dataset", "teacher", "student", "method", "seed", "config_hash",
                                          "hparams_source") else "num") for c in
                ["dataset", "teacher", "student", "method", "seed", "top1", "top1_sel", "top1_ood", "agreement",
                 "expl_sim", "epg", "fss", "rs", "ece", "nll", "train_s", "hparams_source", "config_hash"]
                if c in runs.columns]
    parts.append(_runs_table(runs, run_cols))
    parts.append("</details>")
    parts.append(f"<script>{JS}</script></body></html>")
    return "\n".join(parts) + "\n"


def _runs_table(runs, cols) -> str:
    out = ['<div class="wrap"><table class="sortable"><thead><tr>']
    out += [f"<th>{e(h)}</th>" for _, h, _ in cols]
    out.append("</tr></thead><tbody>")
    for _, row in runs.iterrows():
        out.append("<tr>")
        for c, _, k in cols:
            v = row[c]
            if k == "runtext":
                txt = T.DASH if T.isnan(v) else str(v)
                out.append(f'<td data-v="{e(txt)}">{e(txt)}</td>')
            else:
                fv = None if T.isnan(v) else float(v)
                out.append(f'<td data-v="{"" if fv is None else repr(fv)}">{e(T.fmt(fv))}</td>')
        out.append("</tr>")
    out.append("</tbody></table></div>")
    return "".join(out)
