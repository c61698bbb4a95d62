"""A corpus of bad input, each thrown at the API a user meets: a clear message, no traceback, and a
results store that already holds answers left exactly as it was (integrity check, rows, contents).

The tests build every file themselves. Each entry names its kind, where the user meets it (a CLI
command, which exits 2 with `error: ...` on stderr, or the engine call the app makes and the exception
type it shows) and key words its message must contain. Odd but usable input (animated GIF, CMYK,
16-bit, a PNG named .jpg...) is accepted, and the note the user sees is checked instead.

Set EXPLORER_BAD_INPUT_TABLE=path.md to write the table (kind -> where -> message) after a run.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import json
import os
import shutil
import sqlite3
import struct
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import pytest
from PIL import Image, ImageDraw
from sweep_worker import FakeBackend, small_plan

from explorer.cases import hub as datasets
from explorer.cases.hub import CaseSourceError
from explorer.cases.images import ImageLoadError, image_from_data_url
from explorer.catalog.presets import PRESETS_DIR, Catalog, PresetError, load_catalog
from explorer.cli.main import main
from explorer.runs.store import Store
from explorer.runs.sweep import run_sweep
from explorer.service.core import Explorer
from explorer.service.public import PolicyError, PublicPolicy

TASK = "pneumonia"
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")  # decoders warn about what they tolerate


# ================================================================== the corpus: builders
def encoded(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def noisy(w: int, h: int, mode: str = "RGB", seed: int = 0) -> Image.Image:
    bands = len(Image.new(mode, (1, 1)).getbands())
    data = np.random.default_rng(seed).integers(0, 256, (h, w, bands), dtype=np.uint8)
    return Image.fromarray(data[..., 0] if bands == 1 else data, mode)


def gif_frames(n: int = 3) -> bytes:
    frames = [Image.new("RGB", (32, 32), (i * 80, 255 - i * 80, 30)) for i in range(n)]
    return encoded(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100)


def multipage_tiff(n: int = 3) -> bytes:
    frames = [Image.new("RGB", (32, 32), (i * 80, 255 - i * 80, 30)) for i in range(n)]
    return encoded(frames[0], "TIFF", save_all=True, append_images=frames[1:])


def png_header_only(width: int, height: int) -> bytes:
    """A tiny PNG that declares width x height: a decompression bomb's header."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")
    )


def dicom_bytes(
    photometric: str = "MONOCHROME2",
    samples: int = 1,
    bits: int = 8,
    pixels: bool = True,
    window: Optional[tuple[float, float]] = None,
    rescale: Optional[tuple[float, float]] = None,
    palette: bool = False,
) -> bytes:
    """A small Secondary Capture DICOM file (8x8), with or without pixel data."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=[photometric, str(samples), str(bits)])
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID, "OT"
    if pixels:
        dtype = np.uint16 if bits > 8 else np.uint8
        arr = (np.arange(64).reshape(8, 8) * (400 if bits > 8 else 4)).astype(dtype)
        if samples == 3:
            arr = np.stack([arr, arr[::-1], arr.T], axis=-1)
            ds.PlanarConfiguration = 0
        ds.Rows, ds.Columns, ds.SamplesPerPixel = 8, 8, samples
        ds.PhotometricInterpretation = photometric
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits, bits, bits - 1, 0
        if window:
            ds.WindowCenter, ds.WindowWidth = window
        if rescale:
            ds.RescaleSlope, ds.RescaleIntercept = rescale
        ds.PixelData = arr.tobytes()
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def dicom_with_broken_rows_element() -> bytes:
    """The Rows element's value representation overwritten with letters no DICOM VR has."""
    data = dicom_bytes()
    at = data.find(b"\x28\x00\x10\x00US")
    assert at > 0
    return data[: at + 4] + b"QQ" + data[at + 6 :]


def exif_rotated_jpeg() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    return encoded(noisy(40, 20), "JPEG", exif=exif.tobytes())


def nifti_header() -> bytes:
    head = bytearray(352)
    struct.pack_into("<i", head, 0, 348)
    head[344:348] = b"n+1\x00"
    return bytes(head) + b"\x00" * 64


def zip_bytes() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("word/document.xml", "<w:document/>")
    return buf.getvalue()


STUDY_HEADER = "task,model,row_id,label,label_name,prompt_type,one_word,prompt,response,judgment,pred,correct\n"
STUDY_ROW = "pneumonia,google/medgemma-4b-it,5,1,pneumonia,yesno,False,Is this image abnormal?,Yes.,POSITIVE,1,1\n"
ANSWERS_HEADER = "model,task,prompt_id,prompt_family,case_id,label,verdict,p_positive,answer\n"
ANSWERS_ROW = "demo-gemma,pneumonia,abnormal,abnormal,pneumonia:file:x.png,positive,positive,0.7,Yes.\n"
# Arabic ("Is this image abnormal?") followed by an X-ray and a lungs emoji.
RTL_EMOJI = (
    "\u0647\u0644 \u0647\u0630\u0647 \u0627\u0644\u0635\u0648\u0631\u0629 \u063a\u064a\u0631 "
    "\u0637\u0628\u064a\u0639\u064a\u0629\u061f \U0001fa7b\U0001fac1"
)


# ================================================================== the harness
@dataclass(frozen=True)
class BadInput:
    kind: str
    category: str
    where: str
    run: Callable[[Path, Path], str]  # (a fresh folder, the seeded store) -> the message the user sees
    expect: tuple[str, ...]  # key words of that message, case-insensitive

    def param(self):
        return pytest.param(self, id=self.kind)


def cli(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = main(argv)
        except SystemExit as stop:  # argparse's usage errors
            rc = stop.code
    return rc, out.getvalue(), err.getvalue()


def cli_error(argv: list[str]) -> str:
    rc, out, err = cli(argv)
    assert "Traceback" not in out + err
    assert rc == 2, f"exit {rc}; stdout: {out[-500:]!r}; stderr: {err[-500:]!r}"
    assert "error:" in err
    return err[err.index("error:") :].strip()


def raised(exc_type: type[BaseException], call: Callable[[], object]) -> str:
    with pytest.raises(exc_type) as info:
        call()
    return str(info.value)


def write(folder: Path, name: str, data: bytes | str) -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return path


# ------------------------------------------------------------------ images
def image_refused(name: str, build: Callable[[], bytes]):
    """CLI `ask --images FILE` exits 2, and an upload (what the app calls) raises ImageLoadError."""

    def run(tmp: Path, store: Path) -> str:
        path = write(tmp, name, build())
        message = raised(ImageLoadError, lambda: datasets.upload_case(path, TASK))
        err = cli_error(["ask", "--task", TASK, "--images", str(path), "--store", str(store)])
        assert message in err
        return message

    return run


def image_accepted(name: str, build: Callable[[], bytes], size: Optional[tuple[int, int]] = None):
    """Odd but usable: loaded as RGB; the message is the note the app shows beside the image."""

    def run(tmp: Path, store: Path) -> str:
        case = datasets.upload_case(write(tmp, name, build()), TASK)
        assert case.image.mode == "RGB"
        if size:
            assert case.image.size == size
        notes = case.meta.get("image_notes") or []
        return f"accepted as {case.meta['format']}" + (f"; {'; '.join(notes)}" if notes else "")

    return run


def folder_of_bad_images(tmp: Path, store: Path) -> str:
    write(tmp, "cases/negative/a.png", b"%PDF-1.4")
    write(tmp, "cases/positive/b.png", b"")
    err = cli_error(["ask", "--task", TASK, "--images", str(tmp / "cases"), "--store", str(store)])
    rc, _, full = cli(["ask", "--task", TASK, "--images", str(tmp / "cases"), "--store", str(store)])
    assert "skipped" in full and "PDF" in full and "empty" in full
    return err


def uploaded_folder(tmp: Path, store: Path) -> str:
    (tmp / "dir.png").mkdir()
    return raised(ImageLoadError, lambda: datasets.upload_case(tmp / "dir.png", TASK))


def missing_image(tmp: Path, store: Path) -> str:
    return raised(ImageLoadError, lambda: datasets.upload_case(tmp / "gone.png", TASK))


def text_mode_upload(tmp: Path, store: Path) -> str:
    path = write(tmp, "x.png", encoded(noisy(8, 8), "PNG"))
    with open(path, encoding="latin-1") as fh:  # open() without "rb"
        return raised(ImageLoadError, lambda: datasets.upload_case(fh, TASK))


def bad_data_url(tmp: Path, store: Path) -> str:
    return raised(ImageLoadError, lambda: image_from_data_url("data:image/png,iVBORw0KGgo="))


def public_upload_too_large(tmp: Path, store: Path) -> str:
    policy = PublicPolicy.from_env(environ={"EXPLORER_PUBLIC": "1", "EXPLORER_PUBLIC_MAX_UPLOAD_MB": "1"})
    path = write(tmp, "scan.dcm", b"\x00" * (2 * 2**20))
    return raised(PolicyError, lambda: policy.load_upload(str(path)))


def public_image_too_many_pixels(tmp: Path, store: Path) -> str:
    policy = PublicPolicy.from_env(environ={"EXPLORER_PUBLIC": "1"})
    return raised(ImageLoadError, lambda: policy.load_upload(png_header_only(6000, 5000)))


# ------------------------------------------------------------------ presets
GOOD_STUDY = {
    "name": "mine",
    "models": ["demo-gemma"],
    "tasks": [TASK],
    "cases": {"source": "folder", "per_class": 1},
}


def study_refused(text: str | bytes):
    """A study preset file given to `sweep --preset FILE` (the CLI) and to Catalog.study (the app)."""

    def run(tmp: Path, store: Path) -> str:
        path = write(tmp, "mine.yaml", text)
        message = raised(PresetError, lambda: load_catalog().study(str(path)))
        err = cli_error(["sweep", "--preset", str(path), "--store", str(store)])
        assert message.splitlines()[0] in err or message.splitlines()[-1] in err
        return message.replace("\n", " | ")

    return run


def study_yaml(**changes) -> str:
    import yaml

    data = json.loads(json.dumps(GOOD_STUDY))
    for key, value in changes.items():
        if value is None:
            data.pop(key, None)
        else:
            data[key] = value
    return yaml.safe_dump(data)


def catalog_refused(file: str, edit: Callable[[dict], None]):
    """A presets folder whose tasks.yaml or models.yaml is broken: Catalog(folder) raises PresetError."""

    def run(tmp: Path, store: Path) -> str:
        import yaml

        folder = tmp / "presets"
        shutil.copytree(PRESETS_DIR, folder)
        data = yaml.safe_load((folder / file).read_text())
        edit(data)
        (folder / file).write_text(yaml.safe_dump(data))
        return raised(PresetError, lambda: Catalog(folder)).replace("\n", " | ")

    return run


# ------------------------------------------------------------------ manifests
def manifest(csv_text: str, files: dict[str, bytes] = {}, task: Optional[str] = TASK, expect_error: bool = False):
    """manifest_cases(csv): a CaseSourceError for an unusable manifest, else the skipped rows and notices."""

    def run(tmp: Path, store: Path) -> str:
        for name, data in files.items():
            write(tmp, name, data)
        path = write(tmp, "manifest.csv", csv_text)
        if expect_error:
            return raised(CaseSourceError, lambda: datasets.manifest_cases(path, task))
        report = datasets.manifest_cases(path, task)
        lines = [f"skipped {where}: {why}" for where, why in report.skipped] + list(report.notices)
        assert lines
        return " | ".join(lines)

    return run


def binary_manifest(tmp: Path, store: Path) -> str:
    path = write(tmp, "manifest.csv", bytes(range(256)) * 4)
    return raised(CaseSourceError, lambda: datasets.manifest_cases(path, TASK))


def missing_manifest(tmp: Path, store: Path) -> str:
    return raised(CaseSourceError, lambda: datasets.manifest_cases(tmp / "nope.csv", TASK))


# ------------------------------------------------------------------ prompts (the app's prompt editor)
def prompt_refused(text):
    def run(tmp: Path, store: Path) -> str:
        ex = Explorer(preset="demo", store_path=store, endpoints={})
        try:
            return raised(ValueError, lambda: ex.custom_variant(TASK, text, based_on_id="abnormal"))
        finally:
            ex.close()

    return run


def prompt_accepted(text: str, expect_text: str):
    def run(tmp: Path, store: Path) -> str:
        ex = Explorer(preset="demo", store_path=store, endpoints={})
        try:
            variant = ex.custom_variant(TASK, text, based_on_id="abnormal")
        finally:
            ex.close()
        assert variant.text == expect_text and variant.custom and variant.yes_means == "positive"
        assert all(ch.isprintable() or ch in "\n\t" for ch in variant.text)
        return f"accepted as {variant.text[:40]!r} ({len(variant.text)} characters)"

    return run


# ------------------------------------------------------------------ result files (CLI import)
def import_refused(name: str, data: str | bytes):
    def run(tmp: Path, store: Path) -> str:
        path = write(tmp, name, data)
        err = cli_error(["import", str(path), "--store", str(store)])
        assert name in err
        return err

    return run


def import_missing(tmp: Path, store: Path) -> str:
    return cli_error(["import", str(tmp / "answers.csv"), "--store", str(store)])


# ------------------------------------------------------------------ stores, endpoints, options
def store_refused(build: Callable[[Path], None], command: str = "metrics"):
    """A --store file that is not a usable results store: refused, and the file left as it was."""

    def run(tmp: Path, store: Path) -> str:
        path = tmp / "other.sqlite"
        build(path)
        before = _file_digest(path)
        args = {
            "metrics": ["metrics"],
            "import": ["import", str(tmp / "x.csv")],
            "export": ["export", "--out", str(tmp / "out")],
        }[command]
        err = cli_error(args + ["--store", str(path)])
        assert _file_digest(path) == before, f"refused ({err}), but the file was modified"
        return err

    return run


def _file_digest(path: Path) -> str:
    if path.is_dir():
        return "dir"
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _text_file(path: Path) -> None:
    path.write_text("these are my notes, not a database\n" * 50)


def _foreign_sqlite(path: Path) -> None:
    with contextlib.closing(sqlite3.connect(path)) as conn:
        conn.execute("CREATE TABLE patients (name TEXT)")
        conn.commit()


def _newer_store(path: Path) -> None:
    with contextlib.closing(sqlite3.connect(path)) as conn:
        conn.execute("PRAGMA journal_mode = WAL")  # as every explorer store is
        conn.execute("CREATE TABLE answers (id INTEGER)")
        conn.execute("PRAGMA user_version = 99")
        conn.commit()


def _folder(path: Path) -> None:
    path.mkdir()


def endpoints_refused(text: str):
    def run(tmp: Path, store: Path) -> str:
        path = write(tmp, "endpoints.yaml", text)
        return cli_error(["sweep", "--preset", "demo", "--endpoints", str(path), "--store", str(store)])

    return run


def sweep_refused(*extra: str):
    """`sweep` over the test's own sample folder with one bad option."""

    def run(tmp: Path, store: Path) -> str:
        return cli_error(
            [
                "sweep",
                "--preset",
                "demo",
                "--samples",
                str(SAMPLES),
                "--tasks",
                TASK,
                "--models",
                "demo-gemma",
                "--prompts",
                "abnormal",
                "--per-class",
                "1",
                "--store",
                str(store),
                *(e.format(dead_endpoint=DEAD_ENDPOINT) for e in extra),
            ]
        )

    return run


def metrics_unknown_run(tmp: Path, store: Path) -> str:
    return cli_error(["metrics", "--store", str(store), "--run", "20990101T000000Z-nosuchrun"])


def export_into_a_file(tmp: Path, store: Path) -> str:
    target = write(tmp, "results.txt", "keep me")
    err = cli_error(["export", "--store", str(store), "--out", str(target), "--formats", "csv"])
    assert target.read_text() == "keep me"
    return err


def export_unknown_format(tmp: Path, store: Path) -> str:
    return cli_error(["export", "--store", str(store), "--out", str(tmp / "out"), "--formats", "csv,xlsx"])


# Set by the module fixture: a tiny sample tree the sweep cases can use, and an endpoints file whose
# server refuses connections (so a sweep that should have been refused fails fast, without a model).
SAMPLES: Path = Path()
DEAD_ENDPOINT: Path = Path()


# ================================================================== the corpus
CORPUS: list[BadInput] = [
    # ---- images: refused
    BadInput(
        "corrupt PNG",
        "image",
        "CLI ask --images; upload_case -> ImageLoadError",
        image_refused("corrupt.png", lambda: (lambda b: b[:16] + b"\xff" * 20 + b[36:])(encoded(noisy(32, 32), "PNG"))),
        ("PNG", "corrupt"),
    ),
    BadInput(
        "empty file",
        "image",
        "CLI ask --images; upload_case -> ImageLoadError",
        image_refused("empty.png", lambda: b""),
        ("empty", "0 bytes"),
    ),
    BadInput(
        "truncated JPEG",
        "image",
        "CLI ask --images; upload_case -> ImageLoadError",
        image_refused("cut.jpg", lambda: (lambda b: b[: len(b) * 3 // 5])(encoded(noisy(256, 256), "JPEG"))),
        ("JPEG", "truncated"),
    ),
    BadInput(
        "truncated PNG",
        "image",
        "CLI ask --images; upload_case -> ImageLoadError",
        image_refused("cut.png", lambda: (lambda b: b[: len(b) // 2])(encoded(noisy(64, 64), "PNG"))),
        ("PNG", "truncated"),
    ),
    BadInput(
        "decompression bomb (50000x50000 PNG header)",
        "image",
        "CLI ask --images; upload_case -> ImageLoadError",
        image_refused("bomb.png", lambda: png_header_only(50_000, 50_000)),
        ("too large", "decompression bomb"),
    ),
    BadInput(
        "huge image (108 megapixels)",
        "image",
        "CLI ask --images; upload_case -> ImageLoadError",
        image_refused("huge.png", lambda: png_header_only(12_000, 9_000)),
        ("12000x9000", "megapixel limit"),
    ),
    BadInput(
        "PDF named .png",
        "image",
        "CLI ask --images; upload_case -> ImageLoadError",
        image_refused("scan.png", lambda: b"%PDF-1.7\n1 0 obj\n<<>>\nendobj\n"),
        ("not an image", "PDF"),
    ),
    BadInput(
        "text file named .jpg",
        "image",
        "CLI ask --images; upload_case -> ImageLoadError",
        image_refused("notes.jpg", lambda: b"patient 12, left lung, see report\n"),
        ("not an image", "text file"),
    ),
    BadInput(
        "HTML page saved as .png",
        "image",
        "CLI ask --images; upload_case -> ImageLoadError",
        image_refused("page.png", lambda: b"<!DOCTYPE html><html><body>404</body></html>"),
        ("HTML",),
    ),
    BadInput(
        "SVG drawing",
        "image",
        "CLI ask --images; upload_case -> ImageLoadError",
        image_refused("x.svg", lambda: b"<svg xmlns='http://www.w3.org/2000/svg'/>"),
        ("SVG",),
    ),
    BadInput(
        "Word document (ZIP)",
        "image",
        "CLI ask --images; upload_case -> ImageLoadError",
        image_refused("report.docx", zip_bytes),
        ("ZIP",),
    ),
    BadInput(
        "gzip volume (.nii.gz)",
        "image",
        "CLI ask --images; upload_case -> ImageLoadError",
        image_refused("brain.nii.gz", lambda: gzip.compress(b"\x00" * 400)),
        ("gzip", ".nii.gz"),
    ),
    BadInput(
        "NIfTI volume",
        "image",
        "CLI ask --images; upload_case -> ImageLoadError",
        image_refused("brain.nii", nifti_header),
        ("NIfTI", "slice"),
    ),
    BadInput(
        "HEIC photo",
        "image",
        "CLI ask --images; upload_case -> ImageLoadError",
        image_refused("IMG_0001.heic", lambda: b"\x00\x00\x00\x18ftypheic" + b"\x00" * 64),
        ("HEIC", "JPEG or PNG"),
    ),
    BadInput(
        "binary junk",
        "image",
        "CLI ask --images; upload_case -> ImageLoadError",
        image_refused("junk.bin", lambda: bytes(range(1, 256)) * 8),
        ("not a recognised image format",),
    ),
    BadInput(
        "DICOM without pixel data",
        "image",
        "CLI ask --images; upload_case -> ImageLoadError",
        image_refused("report.dcm", lambda: dicom_bytes(pixels=False)),
        ("DICOM", "no pixel data"),
    ),
    BadInput(
        "DICOM with an unknown photometric interpretation",
        "image",
        "CLI ask --images; upload_case -> ImageLoadError",
        image_refused("odd.dcm", lambda: dicom_bytes(photometric="FOO")),
        ("DICOM", "Photometric Interpretation"),
    ),
    BadInput(
        "DICOM YBR_FULL on one sample per pixel",
        "image",
        "CLI ask --images; upload_case -> ImageLoadError",
        image_refused("ybr.dcm", lambda: dicom_bytes(photometric="YBR_FULL")),
        ("DICOM", "could not be decoded"),
    ),
    BadInput(
        "DICOM pixel data shorter than Rows x Columns",
        "image",
        "CLI ask --images; upload_case -> ImageLoadError",
        image_refused("short.dcm", lambda: dicom_bytes()[:-20]),
        ("DICOM", "corrupt"),
    ),
    BadInput(
        "DICOM PALETTE COLOR without its palette",
        "image",
        "CLI ask --images; upload_case -> ImageLoadError",
        image_refused("palette.dcm", lambda: dicom_bytes(photometric="PALETTE COLOR")),
        ("DICOM", "palette"),
    ),
    BadInput(
        "DICOM with a damaged header element",
        "image",
        "CLI ask --images; upload_case -> ImageLoadError",
        image_refused("broken.dcm", dicom_with_broken_rows_element),
        ("DICOM", "corrupt"),
    ),
    BadInput(
        "damaged animated GIF",
        "image",
        "CLI ask --images; upload_case -> ImageLoadError",
        image_refused("cine.gif", lambda: gif_frames()[:108]),
        ("GIF",),
    ),
    BadInput(
        "damaged multi-page TIFF",
        "image",
        "CLI ask --images; upload_case -> ImageLoadError",
        image_refused("stack.tif", lambda: multipage_tiff()[:141]),
        ("TIFF",),
    ),
    BadInput(
        "manifest row pointing at a damaged GIF",
        "manifest",
        "manifest_cases -> report.skipped",
        manifest(
            "path,label\ncine.gif,positive\nok.png,negative\n",
            {"cine.gif": gif_frames()[:100], "ok.png": encoded(noisy(16, 16), "PNG")},
        ),
        ("cine.gif", "GIF"),
    ),
    BadInput(
        "folder holding only bad files",
        "image",
        "CLI ask --images FOLDER",
        folder_of_bad_images,
        ("no images could be loaded",),
    ),
    BadInput(
        "a folder given as the upload",
        "image",
        "upload_case -> ImageLoadError",
        uploaded_folder,
        ("folder, not an image file",),
    ),
    BadInput("missing image file", "image", "upload_case -> ImageLoadError", missing_image, ("File not found",)),
    BadInput(
        "image opened in text mode",
        "image",
        "upload_case(file object) -> ImageLoadError",
        text_mode_upload,
        ("text mode", "'rb'"),
    ),
    BadInput(
        "data URL without base64",
        "image",
        "image_from_data_url -> ImageLoadError",
        bad_data_url,
        ("Not a base64 data URL",),
    ),
    BadInput(
        "upload over the public byte limit",
        "image",
        "PublicPolicy.load_upload -> PolicyError",
        public_upload_too_large,
        ("too large for this public demo", "1.0 MB limit"),
    ),
    BadInput(
        "image over the public pixel limit",
        "image",
        "PublicPolicy.load_upload -> ImageLoadError",
        public_image_too_many_pixels,
        ("6000x5000", "25 megapixel limit"),
    ),
    # ---- images: odd but usable
    BadInput(
        "animated GIF",
        "image (accepted)",
        "upload_case -> Case.meta['image_notes']",
        image_accepted("cine.gif", gif_frames, (32, 32)),
        ("multi-frame GIF", "first of 3 frames"),
    ),
    BadInput(
        "CMYK JPEG",
        "image (accepted)",
        "upload_case -> Case.meta['image_notes']",
        image_accepted("print.jpg", lambda: encoded(noisy(20, 10, "CMYK"), "JPEG")),
        ("CMYK converted to RGB",),
    ),
    BadInput(
        "16-bit grayscale PNG",
        "image (accepted)",
        "upload_case -> Case.meta['image_notes']",
        image_accepted(
            "xray16.png", lambda: encoded(Image.fromarray(np.arange(600, dtype=np.uint16).reshape(20, 30) * 100), "PNG")
        ),
        ("16-bit", "scaled to 8 bits"),
    ),
    BadInput(
        "PNG named .jpg (wrong extension)",
        "image (accepted)",
        "upload_case -> Case.meta['format']",
        image_accepted("really_png.jpg", lambda: encoded(noisy(20, 10), "PNG"), (20, 10)),
        ("accepted as PNG",),
    ),
    BadInput(
        "JPEG named .dcm (wrong extension)",
        "image (accepted)",
        "upload_case -> Case.meta['format']",
        image_accepted("photo.dcm", lambda: encoded(noisy(20, 10), "JPEG"), (20, 10)),
        ("accepted as JPEG",),
    ),
    BadInput(
        "very wide image (5000x200)",
        "image (accepted)",
        "upload_case -> Case.meta['image_notes']",
        image_accepted("wide.png", lambda: encoded(Image.new("L", (5000, 200), 90), "PNG"), (4096, 164)),
        ("downscaled from 5000x200 to 4096x164",),
    ),
    BadInput(
        "transparent PNG",
        "image (accepted)",
        "upload_case -> Case.meta['image_notes']",
        image_accepted("alpha.png", lambda: encoded(Image.new("RGBA", (10, 10), (255, 0, 0, 0)), "PNG")),
        ("composited on black",),
    ),
    BadInput(
        "EXIF-rotated JPEG",
        "image (accepted)",
        "upload_case -> Case.meta['image_notes']",
        image_accepted("phone.jpg", exif_rotated_jpeg, (20, 40)),
        ("EXIF rotation applied",),
    ),
    BadInput(
        "MONOCHROME1 DICOM",
        "image (accepted)",
        "upload_case -> Case.meta['image_notes']",
        image_accepted("cr.dcm", lambda: dicom_bytes(photometric="MONOCHROME1")),
        ("MONOCHROME1 inverted",),
    ),
    # ---- presets
    BadInput(
        "preset: not valid YAML",
        "preset",
        "CLI sweep --preset FILE; Catalog.study -> PresetError",
        study_refused("name: mine\nmodels: [demo-gemma\ntasks: [pneumonia]\n"),
        ("not valid YAML", "line"),
    ),
    BadInput(
        "preset: unknown key",
        "preset",
        "CLI sweep --preset FILE; Catalog.study -> PresetError",
        study_refused(study_yaml(modles=["demo-gemma"])),
        ("modles", "unknown key"),
    ),
    BadInput(
        "preset: missing models",
        "preset",
        "CLI sweep --preset FILE; Catalog.study -> PresetError",
        study_refused(study_yaml(models=None)),
        ("'models'", "Field required"),
    ),
    BadInput(
        "preset: wrong type (per_class: fifty)",
        "preset",
        "CLI sweep --preset FILE; Catalog.study -> PresetError",
        study_refused(study_yaml(cases={"per_class": "fifty"})),
        ("cases.per_class", "integer"),
    ),
    BadInput(
        "preset: bad prompt selection value",
        "preset",
        "CLI sweep --preset FILE; Catalog.study -> PresetError",
        study_refused(study_yaml(prompts={"one_word": "sometimes"})),
        ("prompts.one_word", "both", "only"),
    ),
    BadInput(
        "preset: bad prompt format",
        "preset",
        "CLI sweep --preset FILE; Catalog.study -> PresetError",
        study_refused(study_yaml(prompt_format="sideways")),
        ("prompt_format", "paper", "official"),
    ),
    BadInput(
        "preset: unknown model",
        "preset",
        "CLI sweep --preset FILE; Catalog.study -> PresetError",
        study_refused(study_yaml(models=["demo-gemma", "gpt-9"])),
        ("models.1", "unknown model 'gpt-9'"),
    ),
    BadInput(
        "preset: unknown task",
        "preset",
        "CLI sweep --preset FILE; Catalog.study -> PresetError",
        study_refused(study_yaml(tasks=["lungs"])),
        ("tasks.0", "unknown task 'lungs'"),
    ),
    BadInput(
        "preset: empty file",
        "preset",
        "CLI sweep --preset FILE; Catalog.study -> PresetError",
        study_refused(""),
        ("expected a mapping",),
    ),
    BadInput(
        "preset: a list, not a mapping",
        "preset",
        "CLI sweep --preset FILE; Catalog.study -> PresetError",
        study_refused("- demo-gemma\n- pneumonia\n"),
        ("expected a mapping", "list"),
    ),
    BadInput(
        "preset: not a text file",
        "preset",
        "CLI sweep --preset FILE; Catalog.study -> PresetError",
        study_refused(bytes(range(256))),
        ("mine.yaml", "UTF-8"),
    ),
    BadInput(
        "preset: no such preset",
        "preset",
        "CLI sweep --preset NAME",
        lambda tmp, store: cli_error(["sweep", "--preset", "papper", "--store", str(store)]),
        ("no study preset 'papper'", "known: demo, paper"),
    ),
    BadInput(
        "tasks.yaml: polarity options without 'negative'",
        "preset",
        "Catalog(folder) -> PresetError",
        catalog_refused("tasks.yaml", lambda d: d["tasks"][TASK]["prompts"]["options"].pop("negative")),
        ("tasks.pneumonia.prompts.options.negative", "Field required"),
    ),
    BadInput(
        "tasks.yaml: a third polarity reading",
        "preset",
        "Catalog(folder) -> PresetError",
        catalog_refused("tasks.yaml", lambda d: d["tasks"][TASK]["prompts"]["options"].update(maybe="Unsure")),
        ("options.maybe", "unknown key"),
    ),
    BadInput(
        "tasks.yaml: an empty prompt",
        "preset",
        "Catalog(folder) -> PresetError",
        catalog_refused("tasks.yaml", lambda d: d["tasks"][TASK]["prompts"].update(abnormal="  ")),
        ("prompts.abnormal", "must not be empty"),
    ),
    BadInput(
        "tasks.yaml: missing prompts",
        "preset",
        "Catalog(folder) -> PresetError",
        catalog_refused("tasks.yaml", lambda d: d["tasks"][TASK].pop("prompts")),
        ("tasks.pneumonia.prompts", "Field required"),
    ),
    BadInput(
        "models.yaml: prompt format without {prompt}",
        "preset",
        "Catalog(folder) -> PresetError",
        catalog_refused(
            "models.yaml", lambda d: d["models"]["llava-med"]["prompt_formats"].update(paper="[INST] <image> [/INST]")
        ),
        ("models.llava-med", "{prompt}"),
    ),
    BadInput(
        "models.yaml: wrong type (max_new_tokens: lots)",
        "preset",
        "Catalog(folder) -> PresetError",
        catalog_refused("models.yaml", lambda d: d["models"]["llava"].update(generation={"max_new_tokens": "lots"})),
        ("models.llava.generation.max_new_tokens", "integer"),
    ),
    # ---- manifests
    BadInput(
        "manifest: missing files",
        "manifest",
        "manifest_cases -> report.skipped",
        manifest("path,label\ngone.png,positive\n"),
        ("gone.png", "file not found"),
    ),
    BadInput(
        "manifest: unknown labels",
        "manifest",
        "manifest_cases -> report.skipped",
        manifest("path,label\na.png,sickish\n", {"a.png": encoded(noisy(8, 8), "PNG")}),
        ("unknown label 'sickish'", "positive/negative"),
    ),
    BadInput(
        "manifest: the same file twice",
        "manifest",
        "manifest_cases -> report.skipped",
        manifest("path,label\na.png,positive\n./a.png,positive\n", {"a.png": encoded(noisy(8, 8), "PNG")}),
        ("line 3", "listed twice"),
    ),
    BadInput(
        "manifest: one image under two labels",
        "manifest",
        "manifest_cases -> report.notices",
        manifest(
            "path,label\na.png,positive\nb.png,negative\n",
            {"a.png": encoded(noisy(8, 8), "PNG"), "b.png": encoded(noisy(8, 8), "PNG")},
        ),
        ("same image as line 2", "different label"),
    ),
    BadInput(
        "manifest: missing label column",
        "manifest",
        "manifest_cases -> CaseSourceError",
        manifest("path,finding\na.png,positive\n", expect_error=True),
        ("no 'label' column", "path, finding"),
    ),
    BadInput(
        "manifest: empty file",
        "manifest",
        "manifest_cases -> CaseSourceError",
        manifest("", expect_error=True),
        ("no 'path' column", "none"),
    ),
    BadInput(
        "manifest: empty path cell",
        "manifest",
        "manifest_cases -> report.skipped",
        manifest("path,label\n,positive\n"),
        ("line 2", "path cell is empty"),
    ),
    BadInput(
        "manifest: no task column and no task chosen",
        "manifest",
        "manifest_cases -> CaseSourceError",
        manifest("path,label\na.png,positive\n", task=None, expect_error=True),
        ("no 'task' column",),
    ),
    BadInput(
        "manifest: binary junk",
        "manifest",
        "manifest_cases -> CaseSourceError",
        binary_manifest,
        ("not a readable CSV",),
    ),
    BadInput(
        "manifest: no such file",
        "manifest",
        "manifest_cases -> CaseSourceError",
        missing_manifest,
        ("no such manifest",),
    ),
    # ---- prompts typed into the app
    BadInput(
        "prompt: empty", "prompt", "Explorer.custom_variant -> ValueError", prompt_refused(""), ("prompt is empty",)
    ),
    BadInput(
        "prompt: only whitespace",
        "prompt",
        "Explorer.custom_variant -> ValueError",
        prompt_refused(" \n\t \u3000 "),
        ("prompt is empty",),
    ),
    BadInput(
        "prompt: None", "prompt", "Explorer.custom_variant -> ValueError", prompt_refused(None), ("prompt is empty",)
    ),
    BadInput(
        "prompt: 100,000 characters",
        "prompt",
        "Explorer.custom_variant -> ValueError",
        prompt_refused("Is this abnormal? " * 5556),
        ("characters long", "limit is 20,000"),
    ),
    BadInput(
        "prompt: only invisible characters",
        "prompt",
        "Explorer.custom_variant -> ValueError",
        prompt_refused("\x00\x07\u200b\u202e\x1b"),
        ("prompt is empty",),
    ),
    BadInput(
        "prompt: control characters inside",
        "prompt (accepted)",
        "Explorer.custom_variant -> PromptVariant",
        prompt_accepted("Is\x00 there\x07 a lesion\x1b here?\r", "Is there a lesion here?"),
        ("accepted",),
    ),
    BadInput(
        "prompt: right-to-left text and emoji",
        "prompt (accepted)",
        "Explorer.custom_variant -> PromptVariant",
        prompt_accepted(RTL_EMOJI, RTL_EMOJI),
        ("accepted",),
    ),
    BadInput(
        "prompt: unknown prompt id",
        "prompt",
        "CLI sweep --prompts",
        sweep_refused("--prompts", "zzz"),
        ("no prompt zzz", "known:"),
    ),
    # ---- result files brought in with `import`
    BadInput(
        "result file: wrong columns",
        "result file",
        "CLI import",
        import_refused("answers.csv", "a,b\n1,2\n"),
        ("missing column(s)", "'model'", "found: a, b"),
    ),
    BadInput(
        "result file: wrong type (p_positive = abc)",
        "result file",
        "CLI import",
        import_refused("answers.csv", ANSWERS_HEADER + ANSWERS_ROW.replace("0.7", "abc")),
        ("column 'p_positive'", "row 1", "bad value 'abc'"),
    ),
    BadInput(
        "result file: probability above 1",
        "result file",
        "CLI import",
        import_refused("answers.csv", ANSWERS_HEADER + ANSWERS_ROW.replace("0.7", "1.5")),
        ("p_positive", "not a probability"),
    ),
    BadInput(
        "result file: unknown verdict",
        "result file",
        "CLI import",
        import_refused("answers.csv", ANSWERS_HEADER + ANSWERS_ROW.replace(",positive,positive,", ",positive,maybe,")),
        ("column 'verdict'", "unknown value 'maybe'"),
    ),
    BadInput(
        "result file: empty model cell",
        "result file",
        "CLI import",
        import_refused("answers.csv", ANSWERS_HEADER + ANSWERS_ROW.replace("demo-gemma,", ",", 1)),
        ("column 'model'", "every answer needs one"),
    ),
    BadInput(
        "result file: empty file", "result file", "CLI import", import_refused("answers.csv", ""), ("file is empty",)
    ),
    BadInput(
        "result file: binary junk as CSV",
        "result file",
        "CLI import",
        import_refused("answers.csv", bytes(range(256)) * 3),
        ("not a readable CSV",),
    ),
    BadInput(
        "result file: binary junk as Parquet",
        "result file",
        "CLI import",
        import_refused("answers.parquet", bytes(range(256)) * 3),
        ("not a readable .parquet",),
    ),
    BadInput(
        "result file: invalid JSON",
        "result file",
        "CLI import",
        import_refused("answers.json", '[{"model": "x"},'),
        ("not valid JSON",),
    ),
    BadInput(
        "result file: JSON that is not a list of records",
        "result file",
        "CLI import",
        import_refused("answers.json", '{"model": "x"}'),
        ("list of records",),
    ),
    BadInput(
        "result file: unknown file type",
        "result file",
        "CLI import",
        import_refused("answers.xlsx", "PK"),
        ("unknown file type",),
    ),
    BadInput("result file: no such file", "result file", "CLI import", import_missing, ("no such file",)),
    BadInput(
        "study CSV: judgment contradicts pred",
        "result file",
        "CLI import",
        import_refused(
            "medgemma_pneumonia_vqa_results.csv", STUDY_HEADER + STUDY_ROW.replace("POSITIVE,1,1", "NEGATIVE,1,1")
        ),
        ("row 1", "pred is 1 but the judgment is 'NEGATIVE'"),
    ),
    BadInput(
        "study CSV: prompt type does not fit the prompt",
        "result file",
        "CLI import",
        import_refused("medgemma_pneumonia_vqa_results.csv", STUDY_HEADER + STUDY_ROW.replace("yesno", "ab")),
        ("prompt_type 'ab' does not fit",),
    ),
    BadInput(
        "study CSV: no judgements (a --no_judge run)",
        "result file",
        "CLI import",
        import_refused("medgemma_pneumonia_vqa_results.csv", STUDY_HEADER + STUDY_ROW.replace("POSITIVE,1,1", ",,")),
        ("no judgements at all",),
    ),
    # ---- stores, endpoints, options
    BadInput(
        "store: a text file",
        "store",
        "CLI metrics --store",
        store_refused(_text_file),
        ("cannot be opened as a results store", "not a database"),
    ),
    BadInput(
        "store: another program's SQLite file",
        "store",
        "CLI import --store",
        store_refused(_foreign_sqlite, "import"),
        ("not an explorer results store", "patients"),
    ),
    BadInput(
        "store: written by a newer explorer",
        "store",
        "CLI export --store",
        store_refused(_newer_store, "export"),
        ("newer explorer", "v99"),
    ),
    BadInput("store: a folder", "store", "CLI metrics --store", store_refused(_folder), ("cannot be opened",)),
    BadInput(
        "endpoints: not valid YAML",
        "endpoints",
        "CLI sweep --endpoints",
        endpoints_refused("demo-gemma: [1, 2\n"),
        ("not valid YAML/JSON",),
    ),
    BadInput(
        "endpoints: a key pasted into the file",
        "endpoints",
        "CLI sweep --endpoints",
        endpoints_refused("demo-gemma: {base_url: 'http://h/v1', model: m, api_key: sk-live-123456}\n"),
        ("api_key", "put keys in the environment"),
    ),
    BadInput(
        "endpoints: a key pasted into extra",
        "endpoints",
        "CLI sweep --endpoints",
        endpoints_refused("demo-gemma: {base_url: 'http://h/v1', model: m, extra: {Authorization: Bearer x}}\n"),
        ("extra.Authorization", "put keys in the environment"),
    ),
    BadInput(
        "endpoints: not an http URL",
        "endpoints",
        "CLI sweep --endpoints",
        endpoints_refused("demo-gemma: {base_url: 'ftp://h/v1', model: m}\n"),
        ("http(s) URL", "ftp://h/v1"),
    ),
    BadInput(
        "endpoints: credentials in the URL",
        "endpoints",
        "CLI sweep --endpoints",
        endpoints_refused("demo-gemma: {base_url: 'https://me:secret@h/v1', model: m}\n"),
        ("must not carry credentials",),
    ),
    BadInput(
        "endpoints: unknown setting",
        "endpoints",
        "CLI sweep --endpoints",
        endpoints_refused("demo-gemma: {base_url: 'http://h/v1', model: m, temprature: 0}\n"),
        ("demo-gemma", "temprature"),
    ),
    BadInput(
        "endpoints: a word where a number belongs",
        "endpoints",
        "CLI sweep --endpoints",
        endpoints_refused("demo-gemma: {base_url: 'http://h/v1', model: m, timeout_s: fast}\n"),
        ("timeout_s", "number"),
    ),
    BadInput(
        "endpoints: no such file",
        "endpoints",
        "CLI sweep --endpoints",
        lambda tmp, store: cli_error(["sweep", "--endpoints", str(tmp / "nope.yaml"), "--store", str(store)]),
        ("cannot read endpoints file", "No such file"),
    ),
    BadInput(
        "option: unknown model",
        "option",
        "CLI sweep --models",
        sweep_refused("--models", "gpt-9"),
        ("unknown model 'gpt-9'", "known:"),
    ),
    BadInput(
        "option: unknown task",
        "option",
        "CLI sweep --tasks",
        sweep_refused("--tasks", "lungs"),
        ("unknown task 'lungs'",),
    ),
    BadInput(
        "option: batch size 0",
        "option",
        "CLI sweep --batch-size",
        sweep_refused("--batch-size", "0"),
        ("batch", "at least 1"),
    ),
    BadInput(
        "option: negative images per class",
        "option",
        "CLI sweep --per-class",
        sweep_refused("--per-class", "-1"),
        ("--per-class", "positive"),
    ),
    BadInput(
        "option: negative generation limit",
        "option",
        "CLI sweep --max-new-tokens",
        sweep_refused("--max-new-tokens", "-5", "--endpoints", "{dead_endpoint}"),
        ("--max-new-tokens", "positive"),
    ),
    BadInput("option: unknown run id", "option", "CLI metrics --run", metrics_unknown_run, ("no run", "nosuchrun")),
    BadInput(
        "option: export into a file", "option", "CLI export --out", export_into_a_file, ("results.txt", "not a folder")
    ),
    BadInput(
        "option: unknown export format",
        "option",
        "CLI export --formats",
        export_unknown_format,
        ("unknown export format", "xlsx"),
    ),
]

RESULTS: dict[str, tuple[str, str, str, str]] = {}  # kind -> (category, where, outcome, message)


# ================================================================== the tests
def _snapshot(path: Path) -> tuple[int, str]:
    """Rows and a digest of every stored row (answers, runs, run items), after an integrity check."""
    with Store(path) as store:
        assert store.integrity_ok(), store.integrity_report()
        count = store.count()
    digest = hashlib.sha256()
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as conn:
        for table in ("answers", "runs", "run_items"):
            for row in conn.execute(f"SELECT * FROM {table} ORDER BY rowid"):
                digest.update(repr(row).encode())
    return count, digest.hexdigest()


@pytest.fixture(scope="module")
def seeded(tmp_path_factory) -> Path:
    """A store that already holds answers (and an error), as a user's store would."""
    global SAMPLES, DEAD_ENDPOINT
    folder = tmp_path_factory.mktemp("bad-inputs")
    DEAD_ENDPOINT = write(
        folder, "dead.yaml", "demo-gemma: {base_url: 'http://127.0.0.1:9/v1', model: m, max_retries: 0}\n"
    )
    SAMPLES = folder / "samples"
    for i, cls in enumerate(("negative", "positive")):
        img = Image.new("L", (40, 40), 40 + 120 * i)
        ImageDraw.Draw(img).ellipse((5, 5, 25 + i, 30), fill=200)
        write(SAMPLES / TASK / cls, "a.png", encoded(img, "PNG"))
    path = folder / "seeded.sqlite"
    with Store(path) as store:
        summary = run_sweep(small_plan(load_catalog(), n_cases=2), FakeBackend(fail_when="normal?"), store)
        assert summary.errors > 0 and store.count() == 24
    yield path
    table = os.environ.get("EXPLORER_BAD_INPUT_TABLE")
    if table:
        lines = ["| # | kind | category | where | outcome | message |", "|---|---|---|---|---|---|"]
        for n, (kind, (category, where, outcome, message)) in enumerate(RESULTS.items(), start=1):
            text = message.replace("|", "/").replace("\n", " ")
            lines.append(f"| {n} | {kind} | {category} | {where} | {outcome} | {text[:220]} |")
        Path(table).write_text("\n".join(lines) + "\n", encoding="utf-8")


@pytest.fixture(autouse=True)
def _quiet(monkeypatch, tmp_path_factory):
    monkeypatch.delenv("EXPLORER_ENDPOINTS", raising=False)
    monkeypatch.delenv("EXPLORER_PUBLIC", raising=False)
    monkeypatch.setenv("EXPLORER_CACHE", str(tmp_path_factory.getbasetemp() / "explorer-cache"))


def test_the_corpus_is_large_and_varied():
    kinds = [b.kind for b in CORPUS]
    assert len(kinds) == len(set(kinds)) and len(kinds) >= 30
    categories = {b.category.split(" ")[0] for b in CORPUS}
    assert {"image", "preset", "manifest", "prompt", "result", "store", "endpoints", "option"} <= categories


@pytest.mark.parametrize("bad", [b.param() for b in CORPUS])
def test_bad_input_gets_a_clear_message_and_leaves_the_store_alone(bad: BadInput, seeded, tmp_path):
    before = _snapshot(seeded)
    try:
        message = bad.run(tmp_path, seeded)
    except BaseException as exc:  # recorded for the table, then reported as the failure it is
        _record(bad, f"{type(exc).__name__}: {exc}".splitlines()[0][:300], tmp_path, failed=True)
        raise
    missing = [word for word in bad.expect if word.lower() not in message.lower()]
    _record(bad, message, tmp_path, failed=bool(missing))
    assert not missing, f"message {message!r} lacks {missing}"
    assert "Traceback" not in message
    assert _snapshot(seeded) == before  # integrity, row count and every stored row unchanged


def _record(bad: BadInput, message: str, tmp_path: Path, failed: bool) -> None:
    if failed:
        outcome = "FAIL"
    elif "accepted" in bad.category:
        outcome = "accepted"
    elif "report." in bad.where:
        outcome = "row skipped or noted; the load goes on"
    else:
        outcome = "refused"
    for folder in (tmp_path, SAMPLES.parent):
        message = message.replace(str(folder), "<tmp>")
    RESULTS[bad.kind] = (bad.category, bad.where, outcome, message)


def test_validate_prompt_text_refuses_text_that_is_only_invisible_characters():
    from explorer.prompts.variants import validate_prompt_text

    with pytest.raises(ValueError, match="empty"):
        validate_prompt_text("\x00\u200b\u202e")
