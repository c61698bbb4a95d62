"""bench/bench_speed.py runs end to end on a small case: the study's loop and the engine give the
same tokens and first-token logits, with and without shared-prefix decoding, and the answer-length
mix makes rows stop at different lengths."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"


@pytest.fixture(scope="module")
def bench_speed():
    sys.path.insert(0, str(BENCH))
    try:
        import bench_speed

        yield bench_speed
    finally:
        sys.path.remove(str(BENCH))


def test_bench_speed_reports_identical_answers_memory_and_logits(bench_speed, tmp_path, capsys):
    args = ["--architectures", "llava", "--images", "1", "--prompts", "3", "--max-new-tokens", "40"]
    args += ["--modes", "prefix,prefix-copies", "--overhead-repeats", "1", "--threads", "1"]
    args += ["--length-mix", "--workdir", str(tmp_path), "--samples", str(tmp_path / "none")]
    assert bench_speed.main(args) == 0
    out = capsys.readouterr().out
    assert "identical 100%" in out and "prefix-copies" in out
    assert "prefix (shared prefix) x3" in out and "prefix (copy per row) x3" in out
    gap = float(re.search(r"first-token logits within (\S+?);", out).group(1))
    assert gap < 1e-4
    shared, copies = (float(x) for x in re.findall(r"KV cache of the largest batch ([\d.]+) MB", out))
    assert shared < copies
    lengths = re.search(r"answer tokens: min (\d+), median (\d+), max (\d+)", out).groups()
    assert "length mix: tokens [" in out
    if "length mix: tokens []" not in out:  # the model's own picks allowed a mix
        assert int(lengths[0]) < int(lengths[2])


def test_length_mix_picks_end_tokens_from_the_models_own_choices(bench_speed):
    import answer_checks  # bench/ is on sys.path while the fixture holds

    """Rows whose greedy picks first reach token 7 at steps 2, 5 and 9 (and row 3 never): token 7
    becomes an end token, and the rows would stop at 2, 5, 9 and the limit. Steps before
    min_new_tokens are not counted (generate() does not let an answer end there)."""
    from types import SimpleNamespace

    import torch

    picks = [  # per step, each row's argmax
        [1, 1, 1, 1],
        [7, 2, 2, 2],
        [3, 3, 3, 3],
        [3, 3, 3, 3],
        [3, 7, 3, 3],
        [3, 3, 3, 3],
        [3, 3, 3, 3],
        [3, 3, 3, 3],
        [3, 3, 7, 3],
        [3, 3, 3, 3],
    ]

    class Model(torch.nn.Module):
        generation_config = SimpleNamespace(eos_token_id=0)

        def forward(self, step):
            logits = torch.zeros(len(picks[step]), 1, 10)
            logits[torch.arange(len(picks[step])), 0, torch.tensor(picks[step])] = 1.0
            return SimpleNamespace(logits=logits)

    model = Model()
    backend = SimpleNamespace(forget_reused=lambda: None)
    backend.generate = lambda requests: [model(step) for step in range(len(picks))]
    lm = SimpleNamespace(model=model)
    chosen = answer_checks.mix_answer_lengths(backend, lm, ["r"] * 4, max_new_tokens=10)
    assert chosen[0] == 7 and model.generation_config.eos_token_id[:2] == [0, 7]
    model.generation_config.eos_token_id = 0
    late = answer_checks.mix_answer_lengths(backend, lm, ["r"] * 4, max_new_tokens=10, min_new_tokens=4)
    assert 7 in late  # still mixes rows 1 and 2 (steps 5 and 9); row 0's step 2 is too early to count
