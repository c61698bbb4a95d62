"""Memory of a batch's KV cache at the study's shapes: what reserving max_new_tokens+1 positions per row
up front took, what the engine reserves now (prefix_reuse.initial_room: what the batch can reach when
small, else an eighth of the prompt, grown as decoding goes on), what a 2,048-token answer grows to, and
the study's per-call loop (one row), and with shared-prefix decoding (shared_prefix.py: each image's
prefix once, only each row's own tokens per row). A batch holds the prompts of --images images (the
engine's batches: transformers_backend.SHARED_PREFIX_IMAGES); on a GPU a batch of several images is
split (where the image changes) before its prefill when its cache at the limit would not fit. Weights from
model_manager.KNOWN_PARAMS. Computed from the real models' configs (layers, KV heads, head size) with
prefix_reuse.kv_cache_bytes; nothing is loaded.

  python bench/bench_memory.py                  # 3 images x 12 rows (the study's prompts), bf16, 24 GB
  python bench/bench_memory.py --images 1 --max-new-tokens 512 --gpu-gb 80
"""

from __future__ import annotations

import argparse
from types import SimpleNamespace

import bench_cases  # noqa: F401  (makes the repo importable)
from study_models import full_sizes

# Prompt widths in tokens: image tokens plus template and question (LLaVA-1.6's AnyRes tops out near 2,900).
WIDTHS = {"llava_next": 2950, "llava": 620, "gemma3": 300}
OWN = 45  # of which a row's own tokens after the image (template and question), about
WEIGHTS = {
    "llava_next": "llava-hf/llava-v1.6-mistral-7b-hf",
    "llava": "wnkh/llava-med-v1.5-mistral-7b-hf",
    "gemma3": "google/gemma-3-4b-it",
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=12, help="prompts per image")
    parser.add_argument("--images", type=int, default=None, help="images per batch (default: the engine's)")
    parser.add_argument("--max-new-tokens", type=int, default=2048)
    parser.add_argument("--gpu-gb", type=float, default=24.0)
    args = parser.parse_args()

    import torch

    from explorer.models.backends.prefix_reuse import initial_room, kv_cache_bytes, positions_at_limit
    from explorer.models.backends.transformers_backend import SHARED_PREFIX_IMAGES
    from explorer.models.manager import GB, known_params, weight_bytes

    images = args.images
    print(
        f"{args.rows} rows per image, {images or 'the engine' + chr(39) + 's'} images per batch, "
        f"max_new_tokens {args.max_new_tokens}, bf16, one {args.gpu_gb:g} GB GPU"
    )
    print(
        "| architecture | weights GB | rows | KV up front (old) GB | KV at start, copy per row GB | KV at 2,048 tokens, "
        "copy per row GB | KV at start, shared prefix GB | KV at 2,048 tokens, shared prefix GB "
        "| per-call loop GB | weights + KV at start fit? | batch kept whole on the GPU? |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for arch, size in full_sizes().items():
        config = SimpleNamespace(
            num_attention_heads=size.text_heads,
            num_key_value_heads=size.text_kv_heads,
            hidden_size=size.text_hidden,
            num_hidden_layers=size.text_layers,
            head_dim=size.text_hidden // size.text_heads,
        )
        model = SimpleNamespace(
            config=SimpleNamespace(text_config=config, get_text_config=lambda decoder=True, c=config: c),
            dtype=torch.bfloat16,
        )
        n_images = images or SHARED_PREFIX_IMAGES.get(arch, 1)
        rows = n_images * args.rows
        width = WIDTHS[arch]
        old = kv_cache_bytes(model, rows, width + args.max_new_tokens + 1)
        now = kv_cache_bytes(model, rows, width + initial_room(args.max_new_tokens, width))
        full = kv_cache_bytes(model, rows, width + args.max_new_tokens)
        loop = kv_cache_bytes(model, 1, width + args.max_new_tokens)
        prefixes = n_images * kv_cache_bytes(model, 1, width - OWN)
        start = prefixes + kv_cache_bytes(model, rows, OWN + initial_room(args.max_new_tokens, width))
        grown = prefixes + kv_cache_bytes(model, rows, OWN + args.max_new_tokens)
        weights = weight_bytes(known_params(WEIGHTS[arch]), "bfloat16")
        fits = (weights + start) / GB <= args.gpu_gb
        # The backend's check for a batch of several images (_prepare_prefix): every prefix and the rows'
        # storage grown by eighths to max_new_tokens, within 90% of what the weights leave.
        room = initial_room(args.max_new_tokens, width)
        worst = prefixes + kv_cache_bytes(model, rows, positions_at_limit(OWN, args.max_new_tokens, room))
        whole = n_images == 1 or worst <= 0.9 * (args.gpu_gb * GB - weights)
        print(
            f"| {arch} | {weights / GB:.1f} | {rows} ({n_images} x {args.rows}) | {old / GB:.2f} | {now / GB:.2f} | "
            f"{full / GB:.2f} | {start / GB:.2f} | {grown / GB:.2f} | {loop / GB:.2f} | "
            f"{'yes' if fits else 'no'} ({(weights + start) / GB:.1f} GB) | "
            f"{'yes' if whole else 'no: split before prefill'} |"
        )
    print(
        "\nKV at start grows by an eighth at a time only while some row is still generating; answers that stop "
        "early never reach the 2,048-token columns. Gemma 3's sliding-window layers are counted as full (an "
        "upper bound: the per-call loop's keep at most the window, 1,024 positions)."
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
