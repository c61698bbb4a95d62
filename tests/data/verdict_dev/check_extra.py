"""Validate extra.jsonl and extra_refusals.jsonl (the project's extensions of the verdict development set).

Checks fields, id uniqueness across both files, gold values, the options format,
and that no response repeats inside or across the two files or against
../shared/verdict-dev/answers.jsonl when that file is present; then prints the
combined counts. Standard library only.

    python tests/data/verdict_dev/check_extra.py [--base PATH] [--verify-git MIRROR_ROOT]

--verify-git re-reads every response from a local git mirror
(MIRROR_ROOT/<owner>+<name>/repo, the layout `fetch` produces) and compares it
byte for byte with the source file at the cited commit.
"""
import argparse
import collections
import json
import re
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
FIELDS = ["id", "source_repo", "source_path", "source_commit", "source_key", "model",
          "question", "options", "yes_means", "response", "gold", "notes"]
GOLDS = {"YES", "NO", "OPTION_A", "OPTION_B", "REFUSAL", "HEDGE", "OFF_TOPIC"}
OPTIONS_RE = re.compile(r"^A\) [^|]+\|B\) [^|]+$")
ID_RE = re.compile(r"^(ext\d{4}|exr\d{3})$")
COMMIT_RE = re.compile(r"^[0-9a-f]{40}$")


def default_base():
    # tests/data/verdict_dev -> repo root -> its parent holds shared/
    return HERE.parents[2].parent / "shared" / "verdict-dev" / "answers.jsonl"


def load(path):
    rows = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as error:
                    raise SystemExit(f"{path}:{number}: not JSON ({error})")
    return rows


def check_row(row, errors):
    where = row.get("id", "?")
    if list(row) != FIELDS:
        errors.append(f"{where}: fields {list(row)} != {FIELDS}")
        return
    if not ID_RE.match(row["id"]):
        errors.append(f"{where}: id must look like ext0001 or exr001")
    if not COMMIT_RE.match(row["source_commit"]):
        errors.append(f"{where}: source_commit is not 40 lowercase hex digits")
    for field in ("source_repo", "source_path", "source_key", "model", "question", "response"):
        if not isinstance(row[field], str) or not row[field]:
            errors.append(f"{where}: {field} is empty")
    if row["gold"] not in GOLDS:
        errors.append(f"{where}: gold {row['gold']!r} not in {sorted(GOLDS)}")
    if row["yes_means"] not in ("positive", "negative"):
        errors.append(f"{where}: yes_means must be positive or negative")
    if row["options"] and not OPTIONS_RE.match(row["options"]):
        errors.append(f"{where}: options {row['options']!r} is not 'A) x|B) y'")
    if row["gold"].startswith("OPTION") and not row["options"]:
        errors.append(f"{where}: {row['gold']} without options")
    if row["options"] and row["gold"] in ("YES", "NO"):
        errors.append(f"{where}: YES/NO gold on an either/or row (a bare yes/no there is OFF_TOPIC)")


def verify_git(rows, mirror_root, errors):
    blobs = {}
    for row in rows:
        key = (row["source_repo"], row["source_commit"], row["source_path"])
        if key not in blobs:
            git_dir = Path(mirror_root) / row["source_repo"].replace("/", "+") / "repo"
            done = subprocess.run(["git", "-C", str(git_dir), "show", f"{key[1]}:{key[2]}"],
                                  capture_output=True)
            blobs[key] = done.stdout.decode("utf-8") if done.returncode == 0 else None
        text = blobs[key]
        if text is None:
            errors.append(f"{row['id']}: cannot read {key} from {mirror_root}")
        elif json.dumps(row["response"], ensure_ascii=False)[1:-1] not in text \
                and json.dumps(row["response"])[1:-1] not in text:
            errors.append(f"{row['id']}: response not found verbatim in {key[2]}@{key[1][:8]}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--extra", default=str(HERE / "extra.jsonl"))
    # a second extension file, kept apart because it has its own sources and ids
    parser.add_argument("--refusals", default=str(HERE / "extra_refusals.jsonl"))
    parser.add_argument("--base", default=str(default_base()))
    parser.add_argument("--verify-git", metavar="MIRROR_ROOT")
    args = parser.parse_args()

    extra = load(args.extra)
    refusals = load(args.refusals) if Path(args.refusals).is_file() else []
    extra_only = len(extra)
    extra = extra + refusals
    errors = []
    for row in extra:
        check_row(row, errors)
    ids = collections.Counter(row.get("id") for row in extra)
    errors += [f"{key}: id used {n} times" for key, n in ids.items() if n > 1]
    responses = collections.Counter(row.get("response") for row in extra)
    errors += [f"response repeated {n} times in the extension files: {key[:60]!r}"
               for key, n in responses.items() if n > 1]

    base = []
    if Path(args.base).is_file():
        base = load(args.base)
        known = {row["response"] for row in base}
        errors += [f"{row['id']}: response already in {args.base}" for row in extra
                   if row.get("response") in known]
    else:
        print(f"note: {args.base} not found; checked extra.jsonl alone")
    if args.verify_git:
        verify_git(extra, args.verify_git, errors)

    combined = base + extra
    golds = collections.Counter(row["gold"] for row in combined)
    print(f"extra rows: {extra_only}   extra_refusals rows: {len(refusals)}"
          f"   base rows: {len(base)}   combined: {len(combined)}")
    print("combined gold counts: " + ", ".join(f"{g}={golds.get(g, 0)}" for g in sorted(GOLDS)))
    print(f"combined REFUSAL+HEDGE: {golds['REFUSAL'] + golds['HEDGE']}")
    print(f"combined rows with options: {sum(1 for row in combined if row['options'])}"
          f" (picking an option: {golds['OPTION_A'] + golds['OPTION_B']})")
    print("extra gold counts: " + ", ".join(
        f"{g}={n}" for g, n in sorted(collections.Counter(r['gold'] for r in extra[:extra_only]).items())))
    print("extra_refusals gold counts: " + ", ".join(
        f"{g}={n}" for g, n in sorted(collections.Counter(r['gold'] for r in refusals).items())))
    if errors:
        print(f"{len(errors)} problem(s):")
        for error in errors:
            print("  " + error)
        return 1
    print("ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
