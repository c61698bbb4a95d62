"""The wordings tried on the current image and what each model said to them (Compare's history strip),
with the word-level difference between the last two wordings.

Plain data in gr.State (a list of dicts), rendered here; nothing global, nothing stored.
"""

from __future__ import annotations

import difflib
import re
from html import escape
from typing import Any, Mapping, Optional, Sequence

MAX_ENTRIES = 6  # a strip, not a log: the latest wordings on this image


def entry(prompt_id: str, name: str, text: str, views: Sequence[Any]) -> dict[str, Any]:
    """One row of the strip: a wording, its name and each model's verdict (error when it failed)."""
    return {
        "prompt_id": prompt_id,
        "name": name,
        "text": text,
        "verdicts": {v.model: ("error" if v.error else v.verdict) for v in views},
        "correct": {v.model: v.correct for v in views},
    }


def add(history: Optional[list], new: dict[str, Any], case_key: str) -> list:
    """The strip with `new` on top. A new image starts a new strip (verdicts on another image do not
    compare); running the same wording again replaces its row."""
    rows = [r for r in (history or []) if r.get("case") == case_key and r["prompt_id"] != new["prompt_id"]]
    return [dict(new, case=case_key)] + rows[: MAX_ENTRIES - 1]


def previous_verdicts(history: Optional[list], case_key: str, prompt_id: str) -> dict[str, dict[str, str]]:
    """alias -> {"verdict", "name"} from the last other wording on this image (what a flip is measured from)."""
    for row in history or []:
        if row.get("case") == case_key and row["prompt_id"] != prompt_id:
            return {a: {"verdict": v, "name": row["name"]} for a, v in row["verdicts"].items()}
    return {}


_TOKEN = re.compile(r"\s+|[^\s]+")


def word_diff(old: str, new: str) -> str:
    """`new` with the words not in `old` marked <ins> and the words of `old` it dropped marked <del>."""
    a, b = _TOKEN.findall(old), _TOKEN.findall(new)
    out = []
    for op, i1, i2, j1, j2 in difflib.SequenceMatcher(a=a, b=b, autojunk=False).get_opcodes():
        if op == "equal":
            out.append(escape("".join(b[j1:j2])))
            continue
        if op in ("delete", "replace"):
            out.append(f'<del class="vx-del">{escape("".join(a[i1:i2]))}</del>')
        if op in ("insert", "replace"):
            out.append(f'<ins class="vx-ins">{escape("".join(b[j1:j2]))}</ins>')
    return "".join(out)


def strip(history: Optional[list], case_key: str, models: Sequence[str], names: Mapping[str, str]) -> str:
    """The wordings on this image, newest first, with a verdict chip per model; above them what changed
    between the last two wordings, word by word."""
    rows = [r for r in (history or []) if r.get("case") == case_key]
    if len(rows) < 2:
        return ""
    new, old = rows[0], rows[1]
    diff = (
        f'<div class="vx-diff" id="wording-diff"><span class="vx-diff-label">{escape(old["name"])} &rarr; '
        f"{escape(new['name'])}:</span> {word_diff(old['text'], new['text'])}</div>"
    )
    shown = [m for m in models if any(m in r["verdicts"] for r in rows)]
    head = "".join(f'<th title="{escape(names.get(m, m))}">{escape(names.get(m, m))}</th>' for m in shown)
    body = []
    for i, r in enumerate(rows):
        cells = []
        for m in shown:
            v = r["verdicts"].get(m)
            mark = {True: " &#10003;", False: " &#10007;"}.get(r["correct"].get(m), "")
            cells.append(
                f'<td><span class="vx-chip vx-v-{escape(v or "pending")}" data-verdict="{escape(v or "")}">'
                f"{escape(v or '·')}{mark}</span></td>"
            )
        now = ' class="vx-now"' if i == 0 else ""
        body.append(f'<tr{now}><th title="{escape(r["text"])}">{escape(r["name"])}</th>{"".join(cells)}</tr>')
    return (
        f'<div id="history-strip" class="vx-history">{diff}<table class="vx-history-table"><thead><tr>'
        f"<th>wordings on this image</th>{head}</tr></thead><tbody>{''.join(body)}</tbody></table></div>"
    )
