"""Text from files and names, made safe to print on a terminal.

A file name or a cell can hold terminal escape sequences (ESC [ ... that recolour, move the cursor,
rewrite the title or hide the lines before them) and can be megabytes long. Printed raw, a name like
"\\x1b[2K\\x1b[1Aok.csv" erases the error above it. Control characters other than newline and tab are
shown as escapes (\\x1b), and a text longer than `limit` characters is cut with a note.
"""

from __future__ import annotations

import re

MAX_PRINTED_CHARS = 2_000
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def printable(text: object, limit: int = MAX_PRINTED_CHARS) -> str:
    """`text` with control characters escaped and at most `limit` characters (plus a note)."""
    raw = str(text)
    cut = len(raw) - limit
    if cut > 0:
        raw = raw[:limit]
    safe = _CONTROL.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), raw)
    return safe + (f"... ({cut:,} more characters)" if cut > 0 else "")


def short_repr(value: object, limit: int = 80) -> str:
    """repr(value) cut to `limit` characters, for echoing a bad value in an error message."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text):,} characters)"
