"""HTML for the app's custom views: answer cards, the variant grid, flip counts, progress, notices.

Pure functions of engine values (AnswerView, ModelSpec, Availability); no gradio here, so they can be
tested and reused. Every piece of user or model text goes through html.escape.
"""

from __future__ import annotations

import ast
import re
from html import escape
from typing import Any, Iterable, Mapping, Optional, Sequence

from explorer.app.names import VERDICT_HELP


def notice(message: str, kind: str = "error") -> str:
    """An inline box next to the control the user just used (kind: error, info, ok)."""
    if not message:
        return ""
    return f'<div class="vx-notice vx-notice-{kind}" role="status">{escape(message)}</div>'


def banner(show: bool) -> str:
    if not show:
        return ""
    return (
        '<div id="noise-banner" class="vx-banner" role="alert"><b>Offline demo models with random weights: '
        "their answers are noise.</b> They show how the explorer works, not what the models know; "
        "<code>--preset paper</code> runs the study's models (needs the Hugging Face Hub).</div>"
    )


def highlighted(answer: str, spans) -> str:
    """The answer with every evidence span wrapped in <mark> (a hedge has two: both sides of the conflict).
    `spans` is one (start, end) pair or a list of them; bad or overlapping ones are skipped."""
    if spans and isinstance(spans[0], int):
        spans = [spans]
    good, end = [], 0
    for span in sorted((int(a), int(b)) for a, b in (spans or [])):
        if span[1] > span[0] >= end and span[1] <= len(answer):
            good.append(span)
            end = span[1]
    out, pos = [], 0
    for a, b in good:
        out.append(escape(answer[pos:a]) + f"<mark class='vx-evidence'>{escape(answer[a:b])}</mark>")
        pos = b
    return "".join(out) + escape(answer[pos:])


_QUOTED = re.compile(r"'(?:[^'\\]|\\.)+'" + r'|"(?:[^"\\]|\\.)+"')  # Python reprs


def evidence_spans(view: Any) -> list[tuple[int, int]]:
    """Where the reader found its evidence: the deciding span, a second span when the reader gives one,
    and for a hedge the other side of the conflict, quoted (as Python reprs) in the verdict's detail."""
    answer = _get(view, "answer") or ""
    spans = [tuple(s) for s in (_get(view, "spans") or []) if s]
    if _get(view, "span"):
        spans.append(tuple(_get(view, "span")))
    if _get(view, "verdict") == "hedge":
        for quoted in _QUOTED.findall(_get(view, "verdict_detail") or ""):
            try:
                text = ast.literal_eval(quoted)
            except (ValueError, SyntaxError):
                continue
            if not isinstance(text, str) or not text.strip():
                continue
            taken = [a for a, _ in spans]
            at = answer.find(text)
            while at >= 0 and at in taken:  # the same words twice: mark the other occurrence
                at = answer.find(text, at + 1)
            if at >= 0:
                spans.append((at, at + len(text)))
    return list(dict.fromkeys(spans))


def verdict_badge(verdict: Optional[str]) -> str:
    v = verdict or "pending"
    tip = VERDICT_HELP.get(v, "")
    return (
        f'<span class="vx-badge vx-v-{escape(v)}" data-verdict="{escape(v)}" title="{escape(tip)}">{escape(v)}</span>'
    )


def correctness(correct: Optional[bool], label: Optional[str]) -> str:
    if correct is None:
        why = (
            "the truth is unknown"
            if not label
            else "neither yes nor no (a refusal, hedge or unclear answer), so neither right nor wrong"
        )
        return f'<span class="vx-mark vx-unscored" title="{why}">not scored</span>'
    if correct:
        return f'<span class="vx-mark vx-right" title="truth: {escape(label or "")}">&#10003; correct</span>'
    return f'<span class="vx-mark vx-wrong" title="truth: {escape(label or "")}">&#10007; wrong</span>'


def _get(view: Any, name: str, default: Any = None) -> Any:
    return getattr(view, name, default) if view is not None else default


def answer_card(
    alias: str,
    title: str,
    role: str,
    view: Any = None,
    partial: Optional[str] = None,
    describe: bool = False,
    previous: Optional[Mapping[str, str]] = None,
    stale: bool = False,
) -> str:
    """One model's card: finished (view), streaming (partial text) or waiting (neither).

    `previous` ({"verdict", "name"}): what this model said to the wording before, so a flip shows on the
    card. `stale`: the view is the answer to the wording before, kept on screen until the new one lands.
    """
    head = (
        f'<div class="vx-card-head"><span class="vx-title">{escape(title)}</span>'
        f'<span class="vx-role vx-role-{escape(role)}">{escape(role)}</span></div>'
    )
    if view is None:
        state = "streaming" if partial else "waiting"
        body = escape(partial) if partial else "waiting for the model&hellip;"
        return (
            f'<div class="vx-card vx-{state}" id="card-{escape(alias)}" data-alias="{escape(alias)}">{head}'
            f'<div class="vx-badges"><span class="vx-badge vx-v-pending">{state}</span></div>'
            f'<div class="vx-answer">{body}</div></div>'
        )
    error = _get(view, "error")
    verdict = None if describe else _get(view, "verdict")
    if error:
        badges = [verdict_badge("error")]
    elif describe:
        badges = ['<span class="vx-badge vx-v-describe" data-verdict="describe">description</span>']
    else:
        badges = [verdict_badge(verdict)]
    if not describe and not error:
        badges.append(correctness(_get(view, "correct"), _get(view, "label")))
    if stale:
        badges.append('<span class="vx-stale-tag">earlier answer: updating&hellip;</span>')
    elif previous and previous.get("verdict") and not describe and not error:
        before = str(previous["verdict"])
        if before != verdict:
            badges.append(
                f'<span class="vx-flipped" title="{escape(str(previous.get("name") or ""))}">'
                f"flipped: was {escape(before)}</span>"
            )
        else:
            badges.append(
                f'<span class="vx-same" title="{escape(str(previous.get("name") or ""))}">same as before</span>'
            )
    meta = [f'<span class="vx-latency">{float(_get(view, "latency_s") or 0):.2f} s</span>']
    if _get(view, "cached"):
        meta.append('<span class="vx-cached" title="from the results store: not generated again">cached</span>')
    if _get(view, "random_weights"):
        meta.append('<span class="vx-noise" title="an offline demo model with random weights">noise model</span>')
    p_pos = _get(view, "p_positive")
    if p_pos is not None and not describe:
        meta.append(
            f'<span class="vx-ppos" title="probability of the positive reading from the first '
            f'answer token">p(yes) {float(p_pos):.2f}</span>'
        )
    answer = _get(view, "answer") or ""
    text = escape(error) if error else highlighted(answer, evidence_spans(view))
    evidence = _get(view, "evidence")
    foot = ""
    if evidence and not describe and not error:
        why = _get(view, "verdict_detail") or ""
        foot = (
            f'<div class="vx-foot">decided by &ldquo;{escape(evidence)}&rdquo;'
            + (f'<span class="vx-why"> &middot; {escape(why)}</span>' if verdict == "hedge" and why else "")
            + "</div>"
        )
    # A stale card is not "done": whoever waits for this run's answers must not count the last run's.
    cls = "vx-stale" if stale else "vx-error" if error else "vx-done"
    return (
        f'<div class="vx-card {cls}" id="card-{escape(alias)}" data-alias="{escape(alias)}" '
        f'data-verdict="{escape("error" if error else str(verdict or ""))}">{head}<div class="vx-badges">{"".join(badges)}</div>'
        f'<div class="vx-meta">{"".join(meta)}</div>'
        f'<div class="vx-answer">{text or "<i>(empty answer)</i>"}</div>{foot}</div>'
    )


def pair_flag(base_view: Any, medical_view: Any) -> str:
    """Base vs medical on this wording: agree, disagree (one says yes, the other no), or differ."""
    if base_view is None or medical_view is None or _get(base_view, "error") or _get(medical_view, "error"):
        return ""
    a, b = _get(base_view, "verdict"), _get(medical_view, "verdict")
    if a == b:
        return f'<div class="vx-pair-flag vx-agree" data-flag="agree">base and medical agree: {escape(str(a))}</div>'
    answered = {a, b} == {"positive", "negative"}
    kind, words = ("disagree", "base and medical DISAGREE") if answered else ("differ", "base and medical differ")
    return (
        f'<div class="vx-pair-flag vx-{kind}" data-flag="{kind}">&#9888; {words}: '
        f"{escape(str(a))} vs {escape(str(b))}</div>"
    )


def cards(
    pairs: Iterable[tuple[Any, Any]],
    selected: Sequence[str],
    views: Mapping[str, Any],
    partial: Mapping[str, str] | None = None,
    heading: str = "",
    describe: bool = False,
    previous: Optional[Mapping[str, Mapping[str, str]]] = None,
    stale: Optional[Mapping[str, Any]] = None,
    names: Optional[Mapping[str, str]] = None,
) -> str:
    """All selected models' cards, grouped by base/medical pair, base first.

    While a new wording runs, `stale` holds the answers to the one before: they stay on screen (dimmed)
    until each model's new text arrives, so nothing blanks and the layout does not jump.
    `previous` (alias -> {"verdict", "name"}) marks flips; `names` (alias -> display name) names models.
    """
    partial, previous, stale, names = partial or {}, previous or {}, stale or {}, names or {}
    groups = []
    for base, medical in pairs:
        members = [m for m in (base, medical) if m.alias in selected]
        if not members:
            continue
        inner = []
        for m in members:
            title = names.get(m.alias, m.title)
            if m.alias in views or m.alias in partial or m.alias not in stale:
                inner.append(
                    answer_card(
                        m.alias,
                        title,
                        m.role,
                        views.get(m.alias),
                        partial.get(m.alias),
                        describe,
                        previous=previous.get(m.alias),
                    )
                )
            else:
                inner.append(answer_card(m.alias, title, m.role, stale[m.alias], None, describe, stale=True))
        flag = "" if describe else pair_flag(views.get(base.alias), views.get(medical.alias))
        groups.append(
            f'<div class="vx-pair" data-pair="{escape(base.pair)}">{flag}'
            f'<div class="vx-pair-cards">{"".join(inner)}</div></div>'
        )
    if not groups:
        return '<div class="vx-empty">Choose at least one model and press Run.</div>'
    head = f'<div class="vx-cards-heading">{heading}</div>' if heading else ""
    return f'<div id="answer-cards">{head}<div class="vx-pairs">{"".join(groups)}</div></div>'


def legend() -> str:
    """The verdict classes in plain words, always visible under the answers (not only in tooltips)."""
    items = "".join(
        f'<div class="vx-legend-item"><span class="vx-badge vx-v-{escape(k)}">{escape(k)}</span> {escape(v)}</div>'
        if k != "not scored"
        else f'<div class="vx-legend-item"><span class="vx-mark vx-unscored">not scored</span> {escape(v)}</div>'
        for k, v in VERDICT_HELP.items()
    )
    return f'<div id="verdict-legend" class="vx-legend">{items}</div>'


def grid(
    variants: Sequence[Any], models: Sequence[Any], views: Mapping[tuple[str, str], Any], running: Optional[set] = None
) -> str:
    """Prompt variants (rows) x models (columns); each cell coloured by verdict, marked right/wrong."""
    if not variants or not models:
        return '<div class="vx-empty">Pick an image in Compare, then press Run grid.</div>'
    running = running or set()
    head = "".join(
        f'<th class="vx-col" title="{escape(m.title)}">{escape(m.alias)}<br><small>{escape(m.role)}</small></th>'
        for m in models
    )
    rows = []
    for v in variants:
        tag = ' <span class="vx-custom">edited</span>' if getattr(v, "custom", False) else ""
        cells = []
        for m in models:
            view = views.get((v.prompt_id, m.alias))
            key = escape(f"{v.prompt_id}|{m.alias}")
            if view is None:
                label = "running&hellip;" if (v.prompt_id, m.alias) in running else "&middot;"
                cells.append(f'<td class="vx-cell vx-v-pending" data-cell="{key}">{label}</td>')
                continue
            verdict = "error" if _get(view, "error") else (_get(view, "verdict") or "unclear")
            mark = {True: " &#10003;", False: " &#10007;"}.get(_get(view, "correct"), "")
            cells.append(
                f'<td class="vx-cell vx-v-{escape(verdict)}" data-cell="{key}" data-verdict="{escape(verdict)}" '
                f'title="click for the full answer">{escape(verdict)}{mark}</td>'
            )
        rows.append(
            f'<tr><th class="vx-row" title="{escape(v.text)}"><code>{escape(v.prompt_id)}</code>{tag}'
            f'<div class="vx-row-text">{escape(v.text)}</div></th>{"".join(cells)}</tr>'
        )
    return (
        f'<table class="vx-grid" id="variant-grid"><thead><tr><th>prompt variant</th>{head}</tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table>"
    )


def flips(counts: Mapping[str, int], n_variants: int) -> str:
    if not counts:
        return ""
    items = "".join(
        f'<div class="vx-flip" data-alias="{escape(a)}"><span class="vx-flip-n">{int(n)}</span>'
        f'<span class="vx-flip-a">{escape(a)}</span></div>'
        for a, n in counts.items()
    )
    return (
        f'<div id="flip-counts"><div class="vx-flip-title">Flips on this image (of {n_variants} variants)</div>'
        f'<div class="vx-flips">{items}</div></div>'
    )


def progress(done: int, total: int, detail: str = "", state: str = "running") -> str:
    pct = 100.0 * done / total if total else 0.0
    return (
        f'<div id="sweep-progress" class="vx-progress vx-{escape(state)}" data-done="{done}" data-total="{total}" '
        f'data-state="{escape(state)}"><div class="vx-bar" style="width:{pct:.1f}%"></div>'
        f'<div class="vx-progress-text">{escape(state)}: {done} / {total}{" &middot; " + escape(detail) if detail else ""}</div></div>'
    )


def model_table(statuses: Iterable[Any], titles: Mapping[str, str]) -> str:
    rows = "".join(
        f'<tr data-alias="{escape(s.alias)}"><td><code>{escape(s.alias)}</code></td>'
        f"<td>{escape(titles.get(s.alias, ''))}</td>"
        f'<td><span class="vx-state vx-state-{escape(s.state)}">{escape(s.state)}</span></td>'
        f"<td>{escape(s.reason)}</td><td>{escape(s.source or '')}</td>"
        f'<td class="vx-nowrap">{_size(s.size_gb)}</td></tr>'
        for s in statuses
    )
    return (
        '<table class="vx-table" id="model-status"><thead><tr><th>alias</th><th>model</th><th>state</th>'
        f"<th>why</th><th>source</th><th>size</th></tr></thead><tbody>{rows}</tbody></table>"
    )


def _size(size_gb) -> str:
    if size_gb is None:
        return ""
    return f"{size_gb * 1000:.0f} MB" if size_gb < 0.1 else f"{size_gb:.1f} GB"


def shorten(text: str, limit: int = 300) -> str:
    """A prompt as a heading: long ones (up to the 20,000-character limit) would push the answers off screen."""
    text = str(text)
    return text if len(text) <= limit else text[: limit - 1].rstrip() + f"… ({len(text):,} characters)"


def case_table(rows: Sequence[Mapping[str, Any]], model_names: Optional[Mapping[str, str]] = None) -> str:
    """Every answer stored for one case: wordings (rows) x models (columns), verdict-coloured; hover for text.
    Models under `model_names` where given, wordings under their names."""
    from explorer.app.names import prompt_name

    model_names = model_names or {}
    if not rows:
        return '<div class="vx-empty">Select a row of the table to see every answer for its case.</div>'
    models = list(dict.fromkeys(str(r["model"]) for r in rows))
    prompts = list(dict.fromkeys(str(r["prompt_id"]) for r in rows))
    text_of = {str(r["prompt_id"]): shorten(r.get("prompt_text") or "") for r in rows}
    cell = {(str(r["prompt_id"]), str(r["model"])): r for r in rows}
    head = "".join(f'<th class="vx-col" data-model="{escape(m)}">{escape(model_names.get(m, m))}</th>' for m in models)
    body = []
    for p in prompts:
        tds = []
        for m in models:
            r = cell.get((p, m))
            if r is None:
                tds.append('<td class="vx-cell vx-v-pending">&middot;</td>')
                continue
            verdict = "error" if r.get("error") else str(r.get("verdict") or "unclear")
            label, answered = r.get("label"), verdict in ("positive", "negative")
            mark = (
                (" &#10003;" if verdict == label else " &#10007;")
                if label in ("positive", "negative") and answered
                else ""
            )
            tip = str(r.get("error") or r.get("answer") or "")
            tds.append(
                f'<td class="vx-cell vx-v-{escape(verdict)}" data-verdict="{escape(verdict)}" '
                f'title="{escape(tip[:600])}">{escape(verdict)}{mark}</td>'
            )
        body.append(
            f'<tr><th class="vx-row" title="{escape(text_of[p])}"><b>{escape(prompt_name(p))}</b>'
            f'<div class="vx-row-text">{escape(text_of[p])}</div></th>{"".join(tds)}</tr>'
        )
    return (
        f'<table class="vx-grid" id="case-answers"><thead><tr><th>wording</th>{head}</tr></thead>'
        f"<tbody>{''.join(body)}</tbody></table>"
    )
