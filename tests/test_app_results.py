"""Results-tab handlers called directly: this app's store opens with its disagreement gallery."""

from __future__ import annotations

import pandas as pd
from PIL import Image

from explorer.app.context import AppSettings, SharedExplorer
from explorer.app.results import ResultsHandlers


def test_the_store_opens_with_a_gallery_of_disagreements_whose_images_the_app_has(tmp_path, monkeypatch):
    for i, cls in enumerate(("negative", "positive")):
        (tmp_path / "samples" / "pneumonia" / cls).mkdir(parents=True)
        Image.new("L", (64, 64), 40 + 150 * i).save(tmp_path / "samples" / "pneumonia" / cls / f"{cls}.png")
    shared = SharedExplorer(
        AppSettings(preset="demo", samples_dir=tmp_path / "samples", store_path=tmp_path / "s.sqlite")
    )
    ex = shared.get()
    case = ex.example_cases("pneumonia")[0]
    # Answers stored as if by a sweep: the base says positive, its medical twin negative, on one prompt.
    frame = pd.DataFrame(
        [
            dict(
                model=m,
                task="pneumonia",
                case_id=case.case_id,
                image_hash=case.image_hash,
                label=case.label,
                prompt_id="abnormal",
                prompt_family="abnormal",
                prompt_text="Is this image abnormal?",
                verdict=v,
                answer=v,
            )
            for m, v in (("demo-llava", "positive"), ("demo-llava-med", "negative"))
        ]
    )
    monkeypatch.setattr(
        type(ex),
        "browsable_answers",
        lambda self: frame.assign(pair=["llava", "llava"], role=["base", "medical"], prompt_kind="closed", error=None),
    )
    out = ResultsHandlers(shared).open_store()
    gallery, note = out[7], out[8]
    assert [caption for _, caption in gallery] == ["base≠medical ×1"]
    assert gallery[0][0].size == case.image.size and "1 case where" in note
    ex.close()
