"""The LLM judge settles exactly the answers the reader is unsure of; metrics show how the two agree."""

from __future__ import annotations

import subprocess
import sys

from PIL import Image

from explorer.analysis.reader_agreement import rule_judge_agreement
from explorer.cases.images import content_hash
from explorer.catalog.presets import JudgeSpec, load_catalog
from explorer.prompts.messages import build_request
from explorer.prompts.variants import closed_variant
from explorer.runs.store import Store, answer_row
from explorer.schema import Case, PromptVariant, Response, Verdict, request_fingerprint
from explorer.scoring.unsure_judge import UnsureOnlyJudge

EVIDENCE = PromptVariant("evidence", "evidence", "Does this image contain evidence of pneumonia?", yes_means="positive")


class CountingJudge:
    method = "judge:fake"

    def __init__(self):
        self.seen = []

    def judge_many(self, items):
        self.seen.extend(answer for answer, _, _ in items)
        return [Verdict("positive", method=self.method, detail="POSITIVE") for _ in items]


def test_only_unsure_answers_reach_the_judge():
    judge = CountingJudge()
    wrapped = UnsureOnlyJudge(judge)
    items = [
        ("Yes.", EVIDENCE, "pneumonia"),  # a clear answer
        ("The lungs appear normal.", EVIDENCE, "pneumonia"),  # "normal" only implies no pneumonia
        ("No, there is no consolidation.", EVIDENCE, "pneumonia"),
    ]
    verdicts = wrapped.judge_many(items)
    assert judge.seen == ["The lungs appear normal."]
    assert [v.method for v in verdicts] == ["rules:reader-2", "judge:fake", "rules:reader-2"]
    assert [v.label for v in verdicts] == ["positive", "positive", "negative"]
    assert wrapped.method == "judge:fake"
    assert wrapped.judge("Yes.", EVIDENCE, "pneumonia").method == "rules:reader-2"


def test_presets_accept_the_mixed_method():
    assert JudgeSpec(method="rules+llm").method == "rules+llm"


def test_agreement_between_reader_and_judge():
    rows = [
        {
            "verdict_method": "judge:gpt-5",
            "verdict": "positive",
            "answer": "Yes, there is pneumonia.",
            "prompt_kind": "closed",
            "polarity": '{"yes_means": "positive", "options": []}',
            "prompt_id": "evidence",
            "prompt_family": "evidence",
            "prompt_text": EVIDENCE.text,
        },
        {
            "verdict_method": "judge:gpt-5",
            "verdict": "hedge",
            "answer": "No.",
            "prompt_kind": "closed",
            "polarity": '{"yes_means": "positive", "options": []}',
            "prompt_id": "evidence",
            "prompt_family": "evidence",
            "prompt_text": EVIDENCE.text,
        },
        {
            "verdict_method": "rules:reader-2",
            "verdict": "negative",
            "answer": "No.",
            "prompt_kind": "closed",
            "polarity": '{"yes_means": "positive", "options": []}',
            "prompt_id": "evidence",
            "prompt_family": "evidence",
            "prompt_text": EVIDENCE.text,
        },
    ]
    agreement = rule_judge_agreement(rows)
    assert (agreement.judged, agreement.agree) == (2, 1)
    assert agreement.pairs == {("hedge", "negative"): 1}
    assert "agree on 1 of 2 judged answers (50.0%)" in agreement.lines()[0]


def test_metrics_command_prints_the_agreement(tmp_path):
    catalog = load_catalog()
    task = catalog.task("pneumonia")
    variant = closed_variant(task, "evidence", False, catalog.one_word_suffix)
    identity = {"backend": "fake", "id": "org/x"}
    path = tmp_path / "judged.sqlite"
    with Store(path) as store:
        for i, (text, label) in enumerate([("Yes, there is pneumonia.", "positive"), ("No.", "positive")]):
            img = Image.new("RGB", (4, 4), (i, 0, 0))
            case = Case(
                case_id=f"pneumonia:t:{i}", task="pneumonia", image=img, image_hash=content_hash(img), label="positive"
            )
            request = build_request(catalog.model("demo-gemma"), variant, case, "paper", None)
            store.record_answer(
                answer_row(
                    fingerprint=request_fingerprint(request, identity),
                    request=request,
                    case=case,
                    variant=variant,
                    model_identity=identity,
                    backend="fake",
                    response=Response(text=text),
                    verdict=Verdict(label, method="judge:gpt-5", detail="POSITIVE"),
                    run_id=None,
                )
            )
    done = subprocess.run(
        [sys.executable, "-m", "explorer", "metrics", "--store", str(path), "--all"],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stderr
    assert "rule reader vs LLM judge: agree on 1 of 2 judged answers" in done.stdout
