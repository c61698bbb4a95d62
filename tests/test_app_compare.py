"""Compare-tab handlers called directly: a label belongs to its task."""

from __future__ import annotations

from PIL import Image

from explorer.app.compare import CompareHandlers
from explorer.app.context import AppSettings, SharedExplorer


def test_changing_the_task_resets_the_truth_and_keeps_the_file_name(tmp_path):
    for task in ("brain_tumor", "pneumonia"):
        for i, cls in enumerate(("negative", "positive")):
            (tmp_path / "samples" / task / cls).mkdir(parents=True)
            Image.new("L", (64, 64), 50 + 100 * i).save(tmp_path / "samples" / task / cls / f"{task}_{cls}.png")
    shared = SharedExplorer(
        AppSettings(preset="demo", samples_dir=tmp_path / "samples", store_path=tmp_path / "s.sqlite")
    )
    h = CompareHandlers(shared)
    mri = next(c for c in shared.get().example_cases("brain_tumor") if c.label == "positive")
    # Same task, new truth: the label follows the radio.
    case, _, radio = h.retarget("brain_tumor", "negative", mri)
    assert case.label == "negative" and case.task == "brain_tumor"
    # Another task: the truth is unknown again (and the radio says so); the file name stays.
    case, caption, radio = h.retarget("pneumonia", "positive", mri)
    assert case.task == "pneumonia" and case.label is None and radio == "unknown"
    assert "brain_tumor_positive.png" in case.source and "truth: <b>unknown</b>" in caption
    # Running before the retarget lands: the stale radio is not applied to the new task either.
    resolved = h._resolve(shared.get(), None, "pneumonia", "positive", mri)
    assert resolved.label is None
    shared.get().close()


def test_a_long_prompt_is_shortened_in_headings_not_in_what_is_asked():
    from explorer.app import render

    long = "Is there pneumonia? " * 1000
    short = render.shorten(long)
    assert len(short) < 340 and short.endswith("(20,000 characters)") and long.startswith(short[:250])
    assert render.shorten("Is this image normal?") == "Is this image normal?"
