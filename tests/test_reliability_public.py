"""Finding 13: on a public deployment a visitor sees and measures only the describe runs they started.

Two visitors share one app (one Explorer, one store) in public mode; each has their own session state,
as the Describe & diagnose tab keeps it. Through that tab's handlers, then the engine underneath.
"""

from __future__ import annotations

import html

import numpy as np
import pytest
from PIL import Image

from explorer.app.context import AppSettings, SharedExplorer
from explorer.app.diagnose_view import ALL_RUNS, DiagnoseHandlers
from explorer.service.public import PolicyError

TASK = "pneumonia"


def _samples(root):
    for k, label in enumerate(("negative", "positive")):
        (root / TASK / label).mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((32, 32), 60 + 120 * k, dtype=np.uint8), "L").save(root / TASK / label / "a.png")
    return root


@pytest.fixture()
def make_shared(tmp_path, monkeypatch):
    monkeypatch.setenv("EXPLORER_CACHE", str(tmp_path / "cache"))
    made = []

    def make(public: bool) -> SharedExplorer:
        settings = AppSettings(
            preset="demo", samples_dir=_samples(tmp_path / "samples"), store_path=tmp_path / "app.sqlite", public=public
        )
        made.append(SharedExplorer(settings))
        return made[-1]

    yield make
    for shared in made:
        shared.get().close()


def _last(gen):
    out = None
    for out in gen:
        pass
    return out


def _run_choices(update) -> list[str]:
    return [value for _, value in update["choices"]]


def test_a_visitor_never_lists_or_measures_another_visitors_describe_run(make_shared):
    shared = make_shared(public=True)
    handlers = DiagnoseHandlers(shared)
    args = ([TASK], 1, False, ALL_RUNS, ["demo-gemma"], "demo", ["one_word"])
    # Visitor A runs a describe sweep; their session state now holds the run.
    out_a = _last(handlers.new_sweep(*args, None))
    state_a = out_a[-1]
    (run_a,) = state_a["runs"]
    assert run_a in _run_choices(out_a[5])

    # Visitor B (a fresh session) is not offered it, nor "every stored description".
    _, _, runs_b = handlers.shown(TASK, "demo", None, None, None)
    assert _run_choices(runs_b) == []
    # ...and cannot diagnose it by sending its id (the API takes any value).
    out_b = _last(handlers.stored([TASK], 1, False, run_a, ["demo-gemma"], "demo", ["one_word"], None))
    status = html.unescape(out_b[1])
    assert "only the describe runs you started" in status and "vx-notice-error" in status
    assert _run_choices(handlers.shown(TASK, "demo", None, None, state_a)[2]) == [run_a]

    # The engine enforces the same, whatever a UI sends.
    ex = shared.get()
    assert ex.description_runs().empty and list(ex.description_runs([run_a])["run_id"]) == [run_a]
    for run, own in ((run_a, []), (None, [run_a])):
        with pytest.raises(PolicyError, match="only the describe runs you started"):
            ex.diagnose_run(run, "demo", ["one_word"], own_runs=own)
    assert ex.diagnose_run(run_a, "demo", ["one_word"], own_runs=[run_a]).run_id == run_a


def test_a_private_app_still_lists_every_run(make_shared):
    handlers = DiagnoseHandlers(make_shared(public=False))
    _last(handlers.new_sweep([TASK], 1, False, ALL_RUNS, ["demo-gemma"], "demo", ["one_word"], None))
    choices = _run_choices(handlers.shown(TASK, "demo", None, None, None)[2])
    assert choices[0] == ALL_RUNS and len(choices) == 2
