"""Old stores are re-read by the current answer reader (`python -m explorer rescore`), never mixed."""

from __future__ import annotations

import subprocess
import sys

from PIL import Image

from explorer.cases.images import content_hash
from explorer.catalog.presets import load_catalog
from explorer.prompts.messages import build_request
from explorer.prompts.variants import closed_variant
from explorer.runs.store import Store, answer_row
from explorer.schema import Case, Response, Verdict, request_fingerprint
from explorer.scoring.verdicts import RULES_METHOD

IDENTITY = {"backend": "fake", "id": "org/demo-gemma", "revision": "abc", "dtype": "float32"}


def _row(catalog, i: int, family: str, text: str, verdict: Verdict):
    task = catalog.task("pneumonia")
    variant = closed_variant(task, family, False, catalog.one_word_suffix)
    img = Image.new("RGB", (6, 6), (i, i, i))
    case = Case(
        case_id=f"pneumonia:test:{i}",
        task="pneumonia",
        image=img,
        image_hash=content_hash(img),
        label="positive",
        source="test",
    )
    request = build_request(catalog.model("demo-gemma"), variant, case, "paper", None)
    return answer_row(
        fingerprint=request_fingerprint(request, IDENTITY),
        request=request,
        case=case,
        variant=variant,
        model_identity=IDENTITY,
        backend="fake",
        response=Response(text=text),
        verdict=verdict,
        run_id="run-1",
    )


def test_rescore_rereads_old_rule_verdicts_and_leaves_judged_ones(tmp_path):
    catalog = load_catalog()
    path = tmp_path / "old.sqlite"
    with Store(path) as store:
        # An old reader called this a hedge; the current one reads the stated finding.
        store.record_answer(
            _row(
                catalog,
                1,
                "evidence",
                "There is a consolidation in the right lower lobe.",
                Verdict("hedge", method="rules", detail="old reader"),
            )
        )
        store.record_answer(
            _row(
                catalog,
                2,
                "normal",
                "Yes, the chest X-ray looks normal.",
                Verdict("negative", method="rules", detail="old reader"),
            )
        )
        store.record_answer(
            _row(
                catalog,
                3,
                "evidence",
                "Whatever the judge said.",
                Verdict("positive", method="judge:gpt-5", detail="POSITIVE"),
            )
        )
    before = subprocess.run(
        [sys.executable, "-m", "explorer", "metrics", "--store", str(path), "--all"],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert "2 answers were read by an older answer reader" in before.stderr
    done = subprocess.run(
        [sys.executable, "-m", "explorer", "rescore", "--store", str(path)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert "re-read 2 answers" in done.stdout and "1 changed" in done.stdout and "hedge -> positive: 1" in done.stdout
    with Store(path) as store:
        rows = {r["case_id"]: r for r in store.answers()}
    assert rows["pneumonia:test:1"]["verdict"] == "positive"
    assert rows["pneumonia:test:1"]["verdict_method"] == RULES_METHOD
    assert rows["pneumonia:test:2"]["verdict"] == "negative"
    assert rows["pneumonia:test:3"]["verdict_method"] == "judge:gpt-5"  # a judge's verdict is kept
    # A second run has nothing left to re-read.
    again = subprocess.run(
        [sys.executable, "-m", "explorer", "rescore", "--store", str(path)], capture_output=True, text=True, timeout=120
    )
    assert "re-read 0 answers" in again.stdout
    after = subprocess.run(
        [sys.executable, "-m", "explorer", "metrics", "--store", str(path), "--all"],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert "older answer reader" not in after.stderr


def test_rescore_names_a_missing_store(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "explorer", "rescore", "--store", str(tmp_path / "nope.sqlite")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2 and "nope.sqlite: no such results store" in done.stderr
