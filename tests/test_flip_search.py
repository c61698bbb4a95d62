"""Minimal flip search on a fake backend whose answers depend on known words, through the store's cache."""

from __future__ import annotations

from typing import Sequence

import pytest
from PIL import Image

from explorer.cases.images import content_hash
from explorer.catalog.presets import load_catalog
from explorer.probes.flip_search import candidates, find_flip, word_distance
from explorer.prompts.perturb import load_families, task_words
from explorer.prompts.variants import find_variant
from explorer.runs.store import variant_from_row
from explorer.schema import Case, Request, Response
from explorer.service.core import Explorer

CATALOG = load_catalog()
FAMILIES = load_families()
MODEL = "demo-gemma"


class WordBackend:
    """Says "Yes." unless the prompt holds one of `no_words`, then "No."; counts what it generated."""

    name = "fake-words"

    def __init__(self, no_words: Sequence[str] = ()):
        self.no_words = tuple(no_words)
        self.generated: list[str] = []

    def identity(self, model_alias: str) -> dict:
        return {"backend": "fake-words", "id": model_alias, "no_words": list(self.no_words)}

    def generate(self, requests: Sequence[Request], on_text=None) -> list[Response]:
        out = []
        for request in requests:
            text = request.text()
            self.generated.append(text)
            out.append(Response(text="No." if any(w in text for w in self.no_words) else "Yes.", latency_s=0.0))
        return out

    def close(self) -> None:
        pass


@pytest.fixture()
def setup(tmp_path, monkeypatch):
    def make(no_words=()):
        ex = Explorer("demo", store_path=tmp_path / "store.sqlite", catalog=CATALOG)
        backend = WordBackend(no_words)
        monkeypatch.setattr(ex.registry, "for_model", lambda alias: backend)
        image = Image.new("RGB", (16, 16), (120, 30, 30))
        case = Case("brain_tumor:file:x.png", "brain_tumor", image, content_hash(image), label="positive")
        base = ex.variant("brain_tumor", "evidence")
        ask = lambda variants: ex.grid(case, variants, [MODEL])  # noqa: E731 - the app's own path
        return ex, backend, base, ask

    return make


def words():
    return task_words(CATALOG, "brain_tumor", FAMILIES)


def test_word_distance_counts_token_edits():
    assert word_distance("Is this image normal?", "Is this image normal?") == 0
    assert word_distance("Is this image normal?", "Is this image normal??") == 1
    assert word_distance("Is this image normal?", "\nIs this image normal?") == 1
    assert word_distance("Is this image normal?", "Is this image abnormal?") == 1
    assert word_distance("a b c", "c b a") == 2


def test_candidates_come_smallest_first():
    pool = candidates(
        find_variant(CATALOG, "brain_tumor", "evidence"), ["framing", "casing", "polarity_flip", "punctuation"], words()
    )
    keys = [(c.tier, c.distance) for c in pool]
    assert keys == sorted(keys)
    assert pool[0].item.family in ("punctuation", "casing") and pool[-1].item.family in ("framing", "polarity_flip")


def test_the_smallest_flip_is_a_surface_edit_when_the_model_reacts_to_it(setup):
    ex, backend, base, ask = setup(no_words=["??"])  # a doubled question mark turns Yes into No
    result = find_flip(ask, base, words(), MODEL, max_requests=60)
    assert result.found
    assert result.flip.item.family == "punctuation" and result.flip.item.params == {"style": "double_question_mark"}
    assert result.flip.distance == 1
    assert result.flip.item.variant.text == "Does this image contain evidence of tumors??"
    assert (result.base_answer.verdict, result.flip_answer.verdict) == ("positive", "negative")
    assert result.base_answer.answer == "Yes." and result.flip_answer.answer == "No."
    assert "Flip found" in result.message() and "positive into negative" in result.message()
    # Nothing bigger than the flip was asked before it: every earlier candidate is no larger.
    before = [c for c, _ in result.tried[: result.tried.index((result.flip, result.flip_answer))]]
    assert all((c.tier, c.distance) <= (result.flip.tier, result.flip.distance) for c in before)


def test_a_model_that_always_says_yes_flips_only_when_the_question_is_turned_round(setup):
    ex, backend, base, ask = setup(no_words=[])
    result = find_flip(ask, base, words(), MODEL, max_requests=200, batch=8)
    assert result.found and result.flip.item.family == "polarity_flip"
    assert result.flip_answer.answer == "Yes." and result.flip_answer.verdict == "negative"
    # Every edit that keeps the meaning was asked first and read positive.
    kept = [c for c, a in result.tried if c.item.meaning == "kept"]
    assert kept and all(a.verdict == "positive" for c, a in result.tried if c.item.meaning == "kept")


def test_the_budget_bounds_the_requests_and_says_no_flip(setup):
    ex, backend, base, ask = setup(no_words=["radiologist"])  # only a framing flips it: tier 3
    result = find_flip(ask, base, words(), MODEL, max_requests=6, batch=4)
    assert not result.found and result.requests == 6 and len(backend.generated) == 6
    assert result.message().startswith("No flip within 6 requests: 5 of ")
    wide = find_flip(ask, base, words(), MODEL, max_requests=200, families=["typos", "framing"])
    assert wide.found and "radiologist" in wide.flip.item.variant.text


def test_every_answer_goes_through_the_store_cache(setup):
    ex, backend, base, ask = setup(no_words=["??"])
    first = find_flip(ask, base, words(), MODEL, max_requests=60)
    generated = len(backend.generated)
    assert generated == first.requests and first.cached == 0
    second = find_flip(ask, base, words(), MODEL, max_requests=60)
    assert len(backend.generated) == generated  # nothing generated again
    assert second.cached == second.requests == first.requests
    assert second.flip.item.variant.prompt_id == first.flip.item.variant.prompt_id
    stored = ex.store.answers_frame()
    flip_row = stored[stored["prompt_id"] == first.flip.item.variant.prompt_id].iloc[0]
    assert flip_row["prompt_family"] == "punctuation"
    assert variant_from_row(flip_row.to_dict()).parent == "evidence"


def test_bad_requests_say_why(setup):
    ex, backend, base, ask = setup()
    with pytest.raises(ValueError, match="at least 2"):
        find_flip(ask, base, words(), MODEL, max_requests=1)
    with pytest.raises(ValueError, match="paraphrase"):
        find_flip(ask, base, words(), MODEL, families=["paraphrase"])


# ---------------------------------------------------------------- the Variant grid's handlers (no browser)
class Shared:
    def __init__(self, ex):
        self.ex = ex

    def get(self):
        return self.ex


def test_generate_variants_runs_them_grouped_by_family(setup):
    from explorer.app.grid import GridHandlers, empty_state

    ex, backend, base, ask = setup(no_words=["??"])
    handlers = GridHandlers(Shared(ex))
    image_case = _case_of(ex)
    *_, last = handlers.generate_variants(
        image_case, [MODEL], "paper", ["punctuation", "polarity_flip"], ["evidence"], 0, 0, empty_state()
    )
    table, flips, note, state, _ = last
    assert "vx-notice-ok" in note
    groups = [v.family for v in state["variants"]]
    assert groups[0] == "evidence" and set(groups[1:]) == {"punctuation", "polarity_flip"}
    assert len(state["views"]) == len(state["variants"])
    for family, title in (
        ("study", "The study&#x27;s wordings"),
        ("punctuation", "Punctuation"),
        ("polarity_flip", "Asked the other way round"),
    ):
        assert f'data-family="{family}"><th colspan="2">{title}' in table
    assert "Punctuation: double question mark" in table  # a human name, not an id
    assert 'title="Does this image contain evidence of tumors??"' in table  # the full wording on hover
    assert 'data-verdict="negative"' in table and 'data-verdict="positive"' in table
    # a refused request keeps the grid and says why
    *_, refused = handlers.generate_variants(image_case, [MODEL], "paper", [], ["evidence"], 0, 0, state)
    assert "at least one wording family" in refused[2]


def test_the_flip_button_shows_both_wordings_with_the_changed_words(setup):
    from explorer.app.grid import GridHandlers

    ex, backend, base, ask = setup(no_words=["??"])
    handlers = GridHandlers(Shared(ex))
    html = handlers.flip_search(_case_of(ex), MODEL, "evidence", ["punctuation", "casing"], 24, 0, "paper")
    assert 'data-found="true"' in html and "Flip found" in html
    assert '<del class="vx-del">tumors?</del><ins class="vx-ins">tumors??</ins>' in html
    assert html.count('class="vx-flip-side"') == 2 and "Yes." in html and "No." in html
    assert 'data-verdict="positive"' in html and 'data-verdict="negative"' in html
    none = handlers.flip_search(_case_of(ex), MODEL, "evidence", ["casing"], 3, 0, "paper")
    assert 'data-found="false"' in none and "No flip within 3 requests" in none
    bad = handlers.flip_search(_case_of(ex), MODEL, "evidence", ["casing"], 1, 0, "paper")
    assert "between 2 and" in bad


def _case_of(ex):
    image = Image.new("RGB", (16, 16), (120, 30, 30))
    return Case("brain_tumor:file:x.png", "brain_tumor", image, content_hash(image), label="positive")


def test_a_public_demo_caps_what_one_click_generates(setup):
    from dataclasses import replace

    from explorer.app.grid import GridHandlers, empty_state

    ex, backend, base, ask = setup()
    ex.policy = replace(ex.policy, enabled=True, max_sweep_items=5)
    *_, refused = GridHandlers(Shared(ex)).generate_variants(
        _case_of(ex), [MODEL], "paper", ["casing", "punctuation"], ["evidence"], 0, 0, empty_state()
    )
    assert "This sweep has 8 answers; a public demo runs at most 5" in refused[2] and not backend.generated
