"""CSV cells a spreadsheet would run as a formula, neutralised on export and restored on import.

A cell whose text starts with = + - @ (or a tab or carriage return, which some spreadsheets skip
before such a character) is evaluated by Excel, LibreOffice and Google Sheets when the CSV is opened:
a model's answer, a prompt or an imported file could then run a formula on the reader's machine.
CSV exports therefore prefix such cells with an apostrophe (the OWASP "CSV injection" advice). To
keep this reversible, a cell that already starts with apostrophes followed by one of those
characters gets one more. Only text cells change; numbers stay numbers. Parquet and JSON exports
keep every value as it is; importing our CSV export removes the one added apostrophe.
"""

from __future__ import annotations

import re

import pandas as pd

TRIGGERS = "=+-@\t\r"
_NEEDS_GUARD = re.compile(r"'*[=+\-@\t\r]")
_GUARDED = re.compile(r"'+[=+\-@\t\r]")


def neutralise(value):
    if isinstance(value, str) and _NEEDS_GUARD.match(value):
        return "'" + value
    return value


def restore(value):
    if isinstance(value, str) and _GUARDED.match(value):
        return value[1:]
    return value


def neutralise_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """A copy with every text cell a spreadsheet would evaluate prefixed by an apostrophe."""
    out = frame.copy()
    for column in out.columns:
        if out[column].dtype == object or pd.api.types.is_string_dtype(out[column].dtype):
            out[column] = out[column].map(neutralise)
    return out


def restore_frame(frame: pd.DataFrame) -> pd.DataFrame:
    out = frame.copy()
    for column in out.columns:
        if out[column].dtype == object or pd.api.types.is_string_dtype(out[column].dtype):
            out[column] = out[column].map(restore)
    return out
