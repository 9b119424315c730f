"""Renderers of the board: :mod:`.text` (shared cell formatting), :mod:`.markdown`,
:mod:`.latex` (pandas Styler), :mod:`.html` (a self-contained, sortable page)."""
