"""Render the board's HTML page in headless Chromium at a given width, to a PNG: the check
that the page reads in a real browser at 1400 px, with no verdict off-screen.

    python scripts/screenshot_board.py [results/leaderboard/leaderboard.html] [-o board.png]
                                       [--width 1400] [--height 6000] [--browser chromium]

Needs Chromium (Debian/Ubuntu: ``apt-get install -y chromium``; or pass --browser for
chrome / chromium-browser). The page is self-contained (inline CSS, JS and figures), so
nothing is fetched. Prints where the PNG went and, from the page's own layout (a small
script is injected into a temporary copy of the page), whether the claims scorecard, any verdict or any
board table lies beyond the window's width: exit status 1 if so.

Look at the PNG yourself: the scorecard should sit at the top of the claims section, one
row per claim and one column per dataset x pair, each entry a Δ [CI] with its verdict.
"""
from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

CHECK = """
<script>
window.addEventListener('load', function(){
  var w = window.innerWidth, off = [];
  document.querySelectorAll('table.card, .v, h3 + .wrap table').forEach(function(el){
    var r = el.getBoundingClientRect();
    if (r.right > w + 1) off.push(el.className + ' right=' + Math.round(r.right));
  });
  var p = document.createElement('pre'); p.id = 'kdbench-offscreen';
  p.textContent = 'OFFSCREEN:' + off.length + (off.length ? ' ' + off.slice(0, 5).join('; ') : '');
  document.body.insertBefore(p, document.body.firstChild);
});
</script>
"""


def find_browser(name: str | None) -> str:
    for cand in ([name] if name else ["chromium", "chromium-browser", "google-chrome", "chrome"]):
        path = shutil.which(cand)
        if path:
            return path
    sys.exit("no Chromium found: apt-get install -y chromium (or pass --browser PATH)")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("page", nargs="?", type=Path, default=Path("results/leaderboard/leaderboard.html"))
    ap.add_argument("-o", "--out", type=Path, help="PNG to write (default: PAGE with .png, beside it)")
    ap.add_argument("--width", type=int, default=1400)
    ap.add_argument("--height", type=int, default=6000, help="window height: how much of the page is captured")
    ap.add_argument("--browser", help="chromium executable (default: found on PATH)")
    args = ap.parse_args()
    if not args.page.is_file():
        sys.exit(f"{args.page} not found: build the board first (snakemake --cores all, or kdbench leaderboard)")
    out = (args.out or args.page.with_suffix(".png")).resolve()
    browser = find_browser(args.browser)
    common = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
              "--disable-dev-shm-usage", f"--window-size={args.width},{args.height}"]
    with tempfile.TemporaryDirectory() as tmp:
        checked = Path(tmp) / "page.html"
        checked.write_text(args.page.read_text(encoding="utf-8").replace("</body>", CHECK + "</body>"),
                           encoding="utf-8")
        shot = subprocess.run(common + [f"--screenshot={out}", args.page.resolve().as_uri()],
                              capture_output=True, text=True, timeout=120)
        if shot.returncode != 0 or not out.is_file():
            sys.exit(f"chromium failed ({shot.returncode}): {shot.stderr[-2000:]}")
        dom = subprocess.run(common + ["--virtual-time-budget=3000", "--dump-dom", checked.as_uri()],
                             capture_output=True, text=True, timeout=120)
    m = re.search(r"OFFSCREEN:(\d+)([^<]*)", dom.stdout)
    print(f"screenshot ({args.width}x{args.height}) -> {out}")
    if m is None:
        print("could not read the layout check from the page", file=sys.stderr)
        return 0
    n = int(m.group(1))
    print("scorecard, verdicts and tables within the window" if n == 0 else f"{n} element(s) off-screen:{m.group(2)}")
    return 1 if n else 0


if __name__ == "__main__":
    sys.exit(main())
