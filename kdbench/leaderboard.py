"""The leaderboard's public names, kept for callers of ``kdbench.leaderboard``: the code
lives in the :mod:`kdbench.board` package (read its docstring for the map)."""
from kdbench.board import build  # noqa: F401
from kdbench.board.aggregate import aggregate, board_columns  # noqa: F401
from kdbench.board.claims import claims_table as claims_for  # noqa: F401
from kdbench.board.compare import compare, format_compare  # noqa: F401
from kdbench.board.records import (CELL, CONSTANTS, KEYS, METRICS, collect_records, eval_path,  # noqa: F401
                                   expected_runs, runs_frame)
from kdbench.board.render.html import render_html  # noqa: F401
from kdbench.board.render.latex import render_latex  # noqa: F401
from kdbench.board.render.markdown import render_claims_markdown, render_markdown  # noqa: F401
from kdbench.board.render.text import DISPLAY, PERCENT  # noqa: F401
from kdbench.board.tracking import log_to_mlflow  # noqa: F401
from kdbench.board.write import BOARD_FILES, DVC_METRICS, metrics_tree, write_board  # noqa: F401
