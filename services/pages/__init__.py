"""The reviewer page, served by the gateway (:func:`nicheloop.pages.page_file`)."""

from __future__ import annotations

from pathlib import Path

HERE = Path(__file__).resolve().parent
FILES = frozenset({"review.html", "review.js", "review.css"})
