"""The results store: provenance round-trip, the cache rules, errors, integrity, concurrency."""

from __future__ import annotations

import json
import sqlite3
import threading
from dataclasses import replace

import pytest
from PIL import Image

from explorer.cases.images import content_hash
from explorer.catalog.presets import load_catalog
from explorer.prompts.messages import build_request
from explorer.prompts.variants import closed_variant
from explorer.runs.store import SCHEMA_VERSION, Store, StoreError, answer_row, variant_from_row
from explorer.schema import Case, GenerationSettings, Response, Verdict, request_fingerprint

IDENTITY = {"backend": "fake", "id": "org/demo-gemma", "revision": "abc123", "dtype": "bfloat16"}


def identity(model: str) -> dict:
    return {**IDENTITY, "id": f"org/{model}"}


@pytest.fixture(scope="module")
def catalog():
    return load_catalog()


@pytest.fixture()
def store(tmp_path):
    s = Store(tmp_path / "results.sqlite")
    yield s
    s.close()


def _case(i: int = 0, label="positive") -> Case:
    img = Image.new("RGB", (6, 6), (i, 2 * i % 256, 3 * i % 256))
    return Case(
        case_id=f"pneumonia:test:{i}",
        task="pneumonia",
        image=img,
        image_hash=content_hash(img),
        label=label,
        source="test folder",
        row_id=i,
    )


def _row(
    catalog,
    i=0,
    *,
    family="normal",
    text="Yes.",
    error=None,
    generation=None,
    verdict=None,
    run_id="run-1",
    model="demo-gemma",
):
    task = catalog.task("pneumonia")
    variant = closed_variant(task, family, True, catalog.one_word_suffix)
    case = _case(i)
    request = build_request(catalog.model(model), variant, case, "paper", generation)
    fp = request_fingerprint(request, identity(model))
    response = Response(
        text="" if error else text,
        error=error,
        latency_s=0.25,
        input_tokens=300,
        output_tokens=3,
        p_positive=None if error else 0.2,
    )
    if verdict is None and not error:
        verdict = Verdict("negative", evidence="Yes", span=(0, 3), method="rules", detail="yes to 'normal'")
    return answer_row(
        fingerprint=fp,
        request=request,
        case=case,
        variant=variant,
        model_identity=identity(model),
        backend="fake",
        response=response,
        verdict=verdict,
        run_id=run_id,
    )


def test_round_trip_keeps_full_provenance(store, catalog):
    row = _row(catalog)
    stored, written = store.record_answer(row)
    assert written
    got = store.get(stored["id"])
    assert got["fingerprint"] == row["fingerprint"] and len(got["fingerprint"]) == 64
    assert json.loads(got["model_identity"]) == IDENTITY
    assert got["backend"] == "fake" and got["model"] == "demo-gemma" and got["run_id"] == "run-1"
    assert got["task"] == "pneumonia" and got["case_id"] == "pneumonia:test:0" and got["label"] == "positive"
    assert got["image_hash"] == _case(0).image_hash and got["source"] == "test folder" and got["row_id"] == 0
    assert got["prompt_id"] == "normal_ow" and got["prompt_family"] == "normal" and got["prompt_kind"] == "closed"
    assert got["prompt_text"] == "Is this image normal?\nAnswer in one word."
    assert got["one_word"] == 1 and got["custom"] == 0
    assert json.loads(got["polarity"]) == {"yes_means": "negative", "options": []}
    assert got["prompt_format"] == catalog.model("demo-gemma").prompt_format("paper")
    assert json.loads(got["generation"])["max_new_tokens"] == 24
    assert got["answer"] == "Yes." and got["error"] is None
    assert (got["verdict"], got["verdict_method"], got["evidence"]) == ("negative", "rules", "Yes")
    assert (got["evidence_start"], got["evidence_end"]) == (0, 3) and got["verdict_detail"] == "yes to 'normal'"
    assert got["p_positive"] == pytest.approx(0.2) and got["latency_s"] == pytest.approx(0.25)
    assert (got["input_tokens"], got["output_tokens"]) == (300, 3)
    versions = json.loads(got["versions"])
    assert {"python", "explorer"} <= set(versions)
    assert got["created_at"]
    # The prompt variant, polarity included, can be rebuilt for re-judging.
    variant = variant_from_row(got)
    assert variant.yes_means == "negative" and variant.text == got["prompt_text"] and variant.one_word


def test_multiple_choice_polarity_round_trips(store, catalog):
    task = catalog.task("pneumonia")
    variant = closed_variant(task, "mc_neg_first", False, catalog.one_word_suffix)
    case = _case(3)
    request = build_request(catalog.model("demo-gemma"), variant, case)
    row = answer_row(
        fingerprint=request_fingerprint(request, IDENTITY),
        request=request,
        case=case,
        variant=variant,
        model_identity=IDENTITY,
        backend="fake",
        response=Response(text="A"),
        verdict=None,
        run_id=None,
    )
    stored, _ = store.record_answer(row)
    assert variant_from_row(stored) == variant  # A means NEGATIVE here, and the store remembers it


def test_same_fingerprint_is_stored_once(store, catalog):
    first, written1 = store.record_answer(_row(catalog, text="Yes."))
    second, written2 = store.record_answer(_row(catalog, text="No."))  # a racing writer's duplicate
    assert written1 and not written2
    assert second["id"] == first["id"] and second["answer"] == "Yes."
    assert store.count() == 1


def test_deterministic_answer_is_served_from_cache(store, catalog):
    row = _row(catalog)
    assert store.lookup(row["fingerprint"]) is None
    store.record_answer(row)
    hit = store.lookup(row["fingerprint"])
    assert hit is not None and hit["answer"] == "Yes."
    assert store.lookup(_row(catalog, i=1)["fingerprint"]) is None  # another image: a miss


def test_sampled_answers_are_kept_but_never_served(store, catalog):
    sampled = GenerationSettings(max_new_tokens=24, do_sample=True, temperature=0.7)
    a = _row(catalog, generation=sampled, text="Yes.")
    b = _row(catalog, generation=sampled, text="No.")
    assert a["fingerprint"] == b["fingerprint"] and a["deterministic"] == 0
    store.record_answer(a)
    store.record_answer(b)
    assert store.count() == 2  # both samples kept
    assert store.lookup(a["fingerprint"]) is None
    # Greedy and sampled settings never share a cache key.
    assert _row(catalog)["fingerprint"] != a["fingerprint"]


def test_error_rows_are_stored_not_served_and_replaced_on_retry(store, catalog):
    failed = _row(catalog, error="HTTP 503: server busy")
    stored, written = store.record_answer(failed)
    assert written and stored["error"] == "HTTP 503: server busy" and stored["verdict"] is None
    assert store.lookup(failed["fingerprint"]) is None
    assert store.has_error(failed["fingerprint"])
    assert store.count(include_errors=False) == 0 and store.count() == 1
    retried, written = store.record_answer(_row(catalog))
    assert written and retried["id"] == stored["id"] and retried["error"] is None
    assert store.lookup(failed["fingerprint"])["answer"] == "Yes."
    assert store.count() == 1 and not store.has_error(failed["fingerprint"])


def test_rejudged_verdict_keeps_the_raw_answer(store, catalog):
    stored, _ = store.record_answer(_row(catalog, text="Yes, it looks normal to me."))
    store.update_verdict(
        stored["id"],
        Verdict("negative", evidence="looks normal", span=(10, 22), method="judge:gpt-5", detail="says normal"),
    )
    got = store.get(stored["id"])
    assert got["answer"] == "Yes, it looks normal to me."
    assert (got["verdict_method"], got["evidence_start"], got["evidence_end"]) == ("judge:gpt-5", 10, 22)
    with pytest.raises(StoreError):
        store.update_verdict(999_999, Verdict("positive"))


def test_answers_frame_has_metric_columns_and_filters(store, catalog):
    for i in range(3):
        store.record_answer(_row(catalog, i=i, model="demo-gemma"))
        store.record_answer(_row(catalog, i=i, model="demo-medgemma"))
    store.record_answer(_row(catalog, i=5, model="demo-gemma", error="boom"))
    frame = store.answers_frame(catalog=catalog)
    needed = {
        "model",
        "task",
        "prompt_id",
        "prompt_family",
        "case_id",
        "label",
        "verdict",
        "p_positive",
        "pair",
        "role",
        "fingerprint",
        "model_identity",
        "prompt_text",
        "generation",
        "versions",
        "error",
    }
    assert needed <= set(frame.columns)
    assert len(frame) == 7
    assert set(frame.loc[frame.model == "demo-medgemma", "role"]) == {"medical"}
    assert set(frame["pair"]) == {"demo-gemma"}
    assert len(store.answers_frame(catalog=catalog, include_errors=False)) == 6
    assert len(store.answers_frame(catalog=catalog, model="demo-gemma")) == 4
    assert (
        len(store.answers_frame(catalog=catalog, model=["demo-gemma", "demo-medgemma"], case_id="pneumonia:test:1"))
        == 2
    )
    empty = store.answers_frame(catalog=catalog, task="brain_tumor")
    assert empty.empty and needed <= set(empty.columns)
    with pytest.raises(ValueError):
        store.answers_frame(catalog=catalog, colour="red")


def test_run_view_uses_each_items_own_case(store, catalog):
    stored, _ = store.record_answer(
        _row(catalog),
        {
            "run_id": "r1",
            "model": "demo-gemma",
            "task": "pneumonia",
            "case_id": "pneumonia:test:0",
            "prompt_id": "normal_ow",
            "label": "positive",
        },
    )
    # A later run asks the same image under another name (an upload): same answer, its own case id.
    store.link_run_item(
        {
            "run_id": "r2",
            "model": "demo-gemma",
            "task": "pneumonia",
            "case_id": "upload:abc",
            "prompt_id": "normal_ow",
            "label": None,
        },
        stored["id"],
    )
    r2 = store.answers_frame(catalog=catalog, run_id="r2")
    assert list(r2["case_id"]) == ["upload:abc"] and r2["label"].isna().all() and list(r2["cached"]) == [1]
    r1 = store.answers_frame(catalog=catalog, run_id="r1", case_id="pneumonia:test:0")
    assert list(r1["label"]) == ["positive"] and list(r1["cached"]) == [0]
    assert store.answers_frame(catalog=catalog, run_id="r2", case_id="pneumonia:test:0").empty


def test_runs_are_recorded_and_resumable(store):
    store.start_run("r1", {"models": ["m"]}, {"cases": {}}, "hash-a")
    assert store.resumable_run("hash-a") == "r1"
    store.finish_run("r1", "cancelled", {"planned": 3})
    assert store.resumable_run("hash-a") == "r1"
    store.start_run("r1", {"models": ["m"]}, {"cases": {}}, "hash-a")
    store.finish_run("r1", "finished", {"planned": 3})
    assert store.resumable_run("hash-a") is None
    run = store.run("r1")
    assert run["status"] == "finished" and run["plan"] == {"models": ["m"]} and run["summary"]["planned"] == 3
    assert list(store.runs_frame()["run_id"]) == ["r1"]


def test_integrity_and_schema_version(tmp_path, store):
    assert store.integrity_ok() and store.schema_version() == SCHEMA_VERSION
    path = tmp_path / "newer.sqlite"
    Store(path).close()
    with sqlite3.connect(path) as conn:
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(StoreError, match="newer explorer"):
        Store(path)


def test_foreign_files_are_refused_clearly(tmp_path):
    other = tmp_path / "other.sqlite"
    with sqlite3.connect(other) as conn:
        conn.execute("CREATE TABLE patients (id INTEGER)")
    with pytest.raises(StoreError, match="not an explorer results store"):
        Store(other)
    junk = tmp_path / "junk.sqlite"
    junk.write_bytes(b"this is not a database, just text" * 100)
    with pytest.raises(StoreError, match="cannot be opened"):
        Store(junk)
    closed = Store(tmp_path / "ok.sqlite")
    closed.close()
    with pytest.raises(StoreError, match="closed"):
        closed.count()


def test_readers_in_other_threads_see_consistent_data_while_writing(store, catalog):
    rows = [_row(catalog, i=i, model=m) for i in range(100) for m in ("demo-gemma", "demo-medgemma")]
    problems: list[BaseException] = []
    done = threading.Event()
    readers_started = threading.Barrier(4)
    seen_counts: set[int] = set()

    def write():
        readers_started.wait(10)
        try:
            for row in rows:
                store.record_answer(row)
        except BaseException as exc:  # pragma: no cover - reported below
            problems.append(exc)
        finally:
            done.set()

    def read():
        last = 0
        readers_started.wait(10)
        try:
            while not done.is_set():
                n = store.count()
                seen_counts.add(n)
                frame = store.answers_frame(catalog=catalog)
                assert n >= last and len(frame) >= n  # never goes back, never a torn read
                assert frame["answer"].notna().all()
                last = n
        except BaseException as exc:
            problems.append(exc)

    readers = [threading.Thread(target=read) for _ in range(3)]
    writer = threading.Thread(target=write)
    for t in readers:
        t.start()
    writer.start()
    writer.join(60)
    for t in readers:
        t.join(60)
    assert not problems, problems
    assert len(seen_counts) > 1  # the readers really ran while the writer was writing
    assert store.count() == len(rows)
    assert store.integrity_ok()


def test_a_second_process_connection_waits_for_the_write_lock(tmp_path, catalog):
    path = tmp_path / "shared.sqlite"
    a, b = Store(path), Store(path)
    try:
        held = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        held.execute("BEGIN IMMEDIATE")  # another writer holds the lock for a moment
        timer = threading.Timer(0.3, lambda: held.execute("COMMIT"))
        timer.start()
        b.record_answer(_row(catalog))  # waits (busy_timeout) instead of failing
        timer.join()
        held.close()
        assert a.count() == 1
    finally:
        a.close()
        b.close()


def test_generation_settings_change_the_cache_key(catalog):
    short = replace(catalog.model("demo-gemma").generation.settings(), max_new_tokens=5)
    assert _row(catalog)["fingerprint"] != _row(catalog, generation=short)["fingerprint"]
