"""A hedge shows both sides of its conflict on the card, even when the quoted words are long."""

from __future__ import annotations

import json
from types import SimpleNamespace

from explorer.app.render import evidence_spans
from explorer.service.core import _conflict_spans


def test_a_stored_hedge_gives_both_conflicting_spans_to_the_card():
    long_side = "there is no consolidation, effusion or any other finding of pneumonia anywhere in either lung field"
    answer = f"Yes. But {long_side}."
    row = {
        "answer": answer,
        "verdict_method": "rules:reader-2",
        "prompt_id": "evidence",
        "prompt_family": "evidence",
        "prompt_text": "Does this image contain evidence of pneumonia?",
        "polarity": json.dumps({"yes_means": "positive", "options": []}),
    }
    spans = _conflict_spans(row, "hedge")
    assert len(spans) == 2 and answer[spans[0][0] : spans[0][1]] == "Yes"
    view = SimpleNamespace(
        answer=answer, verdict="hedge", span=spans[0], spans=spans, verdict_detail="a detail that quotes nothing"
    )
    assert set(evidence_spans(view)) == set(spans)
    # A judge's hedge (AMBIGUOUS) names no words: nothing is re-read.
    assert _conflict_spans({**row, "verdict_method": "judge:gpt-5"}, "hedge") == ()
