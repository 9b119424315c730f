"""The seed papers' claims: kept for callers of ``kdbench.claims``; the code lives in
:mod:`kdbench.board.claims`."""
from kdbench.board.claims import (ALPHA, CLAIMS, COLUMNS, NON_DISTILLED, STATEMENTS, UNICAM,  # noqa: F401
                                  claims_table, compare, scorecard)
