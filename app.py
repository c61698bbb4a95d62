"""The Gradio app (also the Hugging Face Space entry point).

    python app.py [--preset demo|paper|FILE] [--samples DIR] [--store PATH] [--host H] [--port N] [--public]

Importing this module builds `demo` without loading any model; the Explorer and the models are created
on first use. Without --preset: "demo" (offline random-weight models) when the Hugging Face Hub is out
of reach or HF_HUB_OFFLINE is set, else "paper". The env vars EXPLORER_PRESET, EXPLORER_SAMPLES,
EXPLORER_STORE and EXPLORER_PUBLIC set the same things for `import app` (a Space).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Optional, Sequence

from explorer.app.context import AppSettings
from explorer.app.layout import build_demo, launch_kwargs, random_weights
from explorer.catalog.presets import PresetError, load_catalog


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--preset", default=None, help="study preset name or YAML file (default: paper, or demo when offline)"
    )
    p.add_argument(
        "--samples",
        default=None,
        help="folder of sample images with task/class subfolders (default: ../shared/samples when it exists)",
    )
    p.add_argument("--store", default=None, help="results store, SQLite (default: runs/explorer.sqlite)")
    p.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"))
    p.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", "7860")))
    p.add_argument("--public", action="store_true", help="public deployment: only uploaded files can be opened")
    p.add_argument("--gpu-concurrency", type=int, default=None, help="generation jobs at once (default 1)")
    return p.parse_args(argv)


def settings_from_args(args: argparse.Namespace) -> AppSettings:
    return AppSettings.from_env(
        preset=args.preset,
        samples_dir=Path(args.samples) if args.samples else None,
        store_path=Path(args.store) if args.store else None,
        public=True if args.public else None,
        gpu_concurrency=args.gpu_concurrency,
    )


def main(argv: Optional[Sequence[str]] = None) -> None:
    global demo
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    args = parse_args(argv)
    settings = settings_from_args(args)
    try:
        demo = build_demo(settings)
    except PresetError as exc:
        raise SystemExit(f"error: {exc}") from None
    print(
        f"preset {settings.preset}; samples {settings.samples_dir or 'none'}; store {settings.store_path}"
        + ("; public mode" if settings.public else "")
    )
    catalog = load_catalog()
    if random_weights(catalog, catalog.study(settings.preset)):
        print(
            "NOTE: the offline demo models have RANDOM WEIGHTS: their answers are noise. "
            "Use --preset paper on a machine that reaches the Hugging Face Hub for the study's models."
        )
    demo.launch(server_name=args.host, server_port=args.port, **launch_kwargs(settings))


if __name__ == "__main__":
    main()
else:
    demo = build_demo(AppSettings.from_env())
