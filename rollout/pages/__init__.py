"""The operator page, served by the rollout controller (:func:`nicheloop.pages.page_file`)."""

from __future__ import annotations

from pathlib import Path

HERE = Path(__file__).resolve().parent
FILES = frozenset({"operate.html", "operate.js", "operate.css"})
