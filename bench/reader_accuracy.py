"""The answer reader measured on real VLM answers, next to a keyword baseline.

    python bench/reader_accuracy.py [--misses] [--speed] [--files a.jsonl b.jsonl]

Reads the hand-labelled development set: ../shared/verdict-dev/answers.jsonl (when present) plus
tests/data/verdict_dev/*.jsonl (kept in the project, with their sources and licences). Reports exact accuracy (7 classes: YES,
NO, OPTION_A, OPTION_B, REFUSAL, HEDGE, OFF_TOPIC) and lenient accuracy (refusal, hedge and
off-topic merged into one "no answer" class), per class (recall), per source and per model, the
keyword baseline ("yes" without "no" -> YES) on the same rows, and with --misses every miss.
--speed times the reader on 100,000-character answers of hostile shapes, next to the same shapes
at 10,000 characters (a ratio near 1 or below means the cost does not grow with the answer).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections import Counter, defaultdict
from pathlib import Path
from typing import Iterable, Optional

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from explorer.scoring.reader import read_answer

SHARED = ROOT.parent / "shared" / "verdict-dev" / "answers.jsonl"
LOCAL = ROOT / "tests" / "data" / "verdict_dev"
EXTRA = LOCAL / "extra.jsonl"
CLASSES = ("YES", "NO", "OPTION_A", "OPTION_B", "REFUSAL", "HEDGE", "OFF_TOPIC")
ANSWERS = {"YES", "NO", "OPTION_A", "OPTION_B"}


def local_files() -> list[Path]:
    return sorted(LOCAL.glob("*.jsonl"))


def default_files() -> list[Path]:
    return [p for p in (SHARED,) if p.exists()] + local_files()


def load(files: Iterable[Path]) -> list[dict]:
    rows = []
    for path in files:
        for line in Path(path).read_text(encoding="utf-8").splitlines():
            if line.strip():
                row = json.loads(line)
                row.setdefault("file", Path(path).name)
                rows.append(row)
    return rows


def options_of(row: dict) -> Optional[list[str]]:
    if not row.get("options"):
        return None
    return [part.split(")", 1)[1].strip() if ")" in part else part for part in row["options"].split("|")]


def predict(row: dict) -> str:
    reading = read_answer(row["response"], row["question"], options_of(row))
    if reading.label == "answer":
        return {"yes": "YES", "no": "NO"}.get(reading.answer, f"OPTION_{reading.answer}")
    return {"refusal": "REFUSAL", "hedge": "HEDGE"}.get(reading.label, "OFF_TOPIC")


def keyword_baseline(row: dict) -> str:
    """The plain rule a user might write: the one answer word or option text that appears alone."""
    text = row["response"].lower()
    options = options_of(row)
    if options:
        hits = [i for i, option in enumerate(options) if option.lower() in text]
        return f"OPTION_{'AB'[hits[0]]}" if len(hits) == 1 and hits[0] < 2 else "OFF_TOPIC"
    yes = bool(re.search(r"\byes\b", text))
    no = bool(re.search(r"\bno\b", text))
    return "YES" if yes and not no else "NO" if no and not yes else "OFF_TOPIC"


def lenient(label: str) -> str:
    return label if label in ANSWERS else "NO_ANSWER"


def score(rows: list[dict], predictor=predict) -> dict:
    preds = [predictor(r) for r in rows]
    golds = [r["gold"] for r in rows]
    n = len(rows) or 1
    recall = {}
    for c in CLASSES:
        idx = [i for i, g in enumerate(golds) if g == c]
        if idx:
            recall[c] = (sum(preds[i] == c for i in idx) / len(idx), len(idx))
    return {
        "n": len(rows),
        "exact": sum(p == g for p, g in zip(preds, golds)) / n,
        "lenient": sum(lenient(p) == lenient(g) for p, g in zip(preds, golds)) / n,
        "recall": recall,
        "preds": preds,
    }


def _grouped(rows: list[dict], key: str) -> dict[str, list[dict]]:
    groups: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        groups[str(r.get(key, ""))[:60]].append(r)
    return groups


def report(rows: list[dict], show_misses: bool) -> str:
    ours, base = score(rows), score(rows, keyword_baseline)
    yes_no = [r for r in rows if not r.get("options") and r["gold"] in ("YES", "NO")]
    lines = [
        f"rows: {len(rows)}  ({', '.join(f'{k}: {v}' for k, v in sorted(Counter(r['gold'] for r in rows).items()))})",
        f"reader    exact {ours['exact']:.1%}  lenient {ours['lenient']:.1%}",
        f"keywords  exact {base['exact']:.1%}  lenient {base['lenient']:.1%}",
    ]
    if yes_no:
        a, b = score(yes_no), score(yes_no, keyword_baseline)
        lines.append(
            f"yes/no rows ({len(yes_no)}): reader {a['exact']:.1%}  keywords {b['exact']:.1%}  "
            f"(+{(a['exact'] - b['exact']) * 100:.1f} points)"
        )
    lines.append("recall per class (reader / keywords):")
    for c, (value, count) in ours["recall"].items():
        lines.append(f"  {c:<10} {value:6.1%}  / {base['recall'][c][0]:6.1%}   n={count}")
    for key in ("source_repo", "model"):
        lines.append(f"per {key}:")
        for name, group in sorted(_grouped(rows, key).items()):
            s = score(group)
            lines.append(f"  {name:<60} n={s['n']:<4} exact {s['exact']:6.1%}  lenient {s['lenient']:6.1%}")
    if show_misses:
        lines.append("misses:")
        for r, p in zip(rows, ours["preds"]):
            if p != r["gold"]:
                reading = read_answer(r["response"], r["question"], options_of(r))
                lines.append(
                    f"  {r['id']} gold {r['gold']} got {p}: {reading.reason}\n"
                    f"      Q: {r['question'][:100]!r} {r.get('options', '')}\n"
                    f"      A: {r['response'][:220]!r}"
                )
    return "\n".join(lines)


def speed() -> str:
    import time

    shapes = {
        "prose": "There is no evidence of pleural effusion, but it is difficult to determine whether the mass is benign. ",
        "answer words": "Yes. No. ",
        "newlines": "\n",
        "hedges": "it is difficult to determine whether ",
        "refusals": "I'm sorry, I cannot provide a diagnosis of the tumor. ",
        "labels": "A) (B) ",
        "cjk": "是的，",
    }
    lines = ["speed (median of 5; ms): shape, 10k chars, 100k chars, ratio"]
    for name, unit in shapes.items():
        timings = []
        for size in (10_000, 100_000):
            text = (unit * (size // len(unit) + 1))[:size]
            runs = []
            for _ in range(5):
                t0 = time.perf_counter()
                read_answer(text, "Is there a pleural effusion?")
                read_answer(text, "Which does this image show?", ["Tumor", "No tumor"])
                runs.append((time.perf_counter() - t0) / 2)
            timings.append(sorted(runs)[2] * 1000)
        lines.append(f"  {name:<13} {timings[0]:7.1f} {timings[1]:7.1f}   x{timings[1] / timings[0]:.2f}")
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", nargs="*", type=Path, help="JSONL files (default: the development set)")
    parser.add_argument("--misses", action="store_true", help="list every row the reader gets wrong")
    parser.add_argument("--speed", action="store_true", help="also time 100,000-character answers")
    args = parser.parse_args(argv)
    files = args.files or default_files()
    if not files:
        print("no development set found (../shared/verdict-dev or tests/data/verdict_dev)", file=sys.stderr)
        return 1
    print(report(load(files), args.misses))
    if args.speed:
        print(speed())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
