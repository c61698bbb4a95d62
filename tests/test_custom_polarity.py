"""An edited wording is read by its own words, never by the wording it was edited from (issue: a
'Yes' to 'Is this chest X-ray normal?' edited from the evidence prompt was read as pneumonia)."""

from __future__ import annotations

import pytest

from explorer.app.compare import yes_reading_note
from explorer.service.core import Explorer


@pytest.fixture(scope="module")
def ex(tmp_path_factory):
    explorer = Explorer(preset="demo", store_path=tmp_path_factory.mktemp("store") / "s.sqlite")
    yield explorer
    explorer.store.close()


@pytest.mark.parametrize(
    "text,yes_means",
    [
        ("Is this chest X-ray normal?", "negative"),
        ("Is this chest X-ray not normal?", "positive"),
        ("Is there anything abnormal in this X-ray?", "positive"),
        ("Is this chest X-ray ｎｏｒｍａｌ?", "negative"),  # full-width letters
        ("Are the lungs clear?", "negative"),
        ("Is there no pneumonia?", "negative"),
        ("Is pneumonia visible here?", "positive"),
    ],
)
def test_polarity_comes_from_the_words(ex, text, yes_means):
    for based_on in ("evidence", "normal", "abnormal"):
        variant = ex.custom_variant("pneumonia", text, based_on_id=based_on)
        assert variant.custom and variant.yes_means == yes_means, (text, based_on)


def test_the_user_can_flip_the_reading(ex):
    variant = ex.custom_variant("pneumonia", "Is this chest X-ray normal?", "evidence", yes_means="positive")
    assert variant.yes_means == "positive"
    assert "the finding is present" in yes_reading_note(variant)
    auto = ex.custom_variant("pneumonia", "Is this chest X-ray normal?", "evidence")
    assert "normal / absent" in yes_reading_note(auto)
    # The study's own wordings keep their polarity whatever is chosen, and say nothing extra.
    study = ex.custom_variant("pneumonia", ex.variant("pneumonia", "normal").text, "normal", yes_means="positive")
    assert not study.custom and study.yes_means == "negative" and yes_reading_note(study) == ""
