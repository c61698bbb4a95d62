"""Any image file a clinician may drop -> one RGB PIL image, its content hash and notes.

The format is detected from the bytes, never from the file name. Everything a model sees
goes through `load_image`, so every result can be traced to `LoadedImage.image_hash`, the
hash of exactly the pixels delivered (after any windowing, compositing or downscaling).

Transparency is composited on BLACK: transparent areas carry no data, and in radiology "no
data" is black (air, collimation, padding); white would read as dense tissue on an X-ray.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Optional, Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

DEFAULT_MAX_PIXELS = 100_000_000  # refuse larger images (decompression bombs, absurd scans)
DEFAULT_MAX_SIDE = 4096  # models resize anyway; keep memory and transfer sizes sane

Source = Union[str, os.PathLike, bytes, bytearray, memoryview, BinaryIO, Image.Image]


class ImageLoadError(ValueError):
    """The input cannot become an image; the message is meant for the user."""


@dataclass(frozen=True)
class LoadedImage:
    image: Image.Image  # always RGB
    image_hash: str  # content_hash(image)
    format: str  # "PNG", "JPEG", "DICOM", ... ("PIL" for an in-memory image)
    original_mode: str  # PIL mode, or e.g. "MONOCHROME2 12-bit" for DICOM
    original_size: tuple[int, int]  # (width, height) as stored
    notes: tuple[str, ...] = ()  # what was done to get here, human readable


def content_hash(img: Image.Image) -> str:
    """sha256 of mode, size and RGB pixel bytes (other modes go through load_image's conversion)."""
    rgb = img if img.mode == "RGB" else _to_rgb(img, [])
    header = f"{rgb.mode}:{rgb.size[0]}x{rgb.size[1]}:".encode()
    return hashlib.sha256(header + rgb.tobytes()).hexdigest()


def load_image(
    source: Source, *, max_pixels: int = DEFAULT_MAX_PIXELS, max_side: int | None = DEFAULT_MAX_SIDE
) -> LoadedImage:
    """Decode a path, bytes, file-like object or PIL image into an RGB image with a hash.

    Raises ImageLoadError (a ValueError) with a user-facing message when that is impossible.
    `max_side=None` disables downscaling. PIL itself refuses images above twice
    PIL.Image.MAX_IMAGE_PIXELS; raise that too if you need max_pixels above ~179 MP.
    """
    notes: list[str] = []
    if isinstance(source, Image.Image):
        fmt, mode, size = source.format or "PIL", source.mode, source.size
        rgb = _decode_pil(source, fmt, max_pixels, notes)
    else:
        data = _read_bytes(source)
        if not data:
            raise ImageLoadError("The file is empty (0 bytes).")
        ds = _dicom_dataset(data) if data[128:132] == b"DICM" else None
        img = None if ds is not None else _open_pil(data)
        if img is None and ds is None:
            problem = _not_an_image_message(data)
            ds = None if problem else _dicom_dataset(data, sniff=True)  # preamble-less DICOM?
            if ds is None:
                raise ImageLoadError(
                    problem or "This file is not a recognised image format (PNG, JPEG, TIFF, BMP, GIF, WebP or DICOM)."
                )
        if ds is not None:
            fmt = "DICOM"
            rgb, mode, size = _decode_dicom(ds, max_pixels, notes)
        else:
            fmt, mode, size = img.format or "image", img.mode, img.size
            if fmt == "JPEG" and max_side and max(size) >= 2 * max_side:
                img.draft(img.mode, (max_side, max_side))  # decode at 1/2..1/8 scale: less memory
            rgb = _decode_pil(img, fmt, max_pixels, notes)
    if max_side and max(rgb.size) > max_side:
        scale = max_side / max(rgb.size)
        new_size = (max(1, round(rgb.width * scale)), max(1, round(rgb.height * scale)))
        rgb = rgb.resize(new_size, Image.Resampling.LANCZOS, reducing_gap=3.0)
        notes.append(f"downscaled from {size[0]}x{size[1]} to {new_size[0]}x{new_size[1]}")
    return LoadedImage(rgb, content_hash(rgb), fmt, mode, size, tuple(notes))


def image_to_data_url(img: Image.Image, format: str = "PNG") -> str:
    """Encode an image as a base64 data URL (for OpenAI-compatible HTTP backends)."""
    fmt = "JPEG" if format.upper() in ("JPG", "JPEG") else format.upper()
    rgb = img if img.mode == "RGB" else _to_rgb(img, [])
    buf = io.BytesIO()
    rgb.save(buf, fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    mime = Image.MIME.get(fmt, f"image/{fmt.lower()}")
    return f"data:{mime};base64,{base64.b64encode(buf.getvalue()).decode('ascii')}"


def image_from_data_url(url: str, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Decode a base64 data URL back into an RGB image (same checks as load_image, no downscale)."""
    match = re.match(r"data:[^,;]*((?:;[^,;]*)*),(.*)\Z", url.strip(), re.DOTALL)
    if not match or ";base64" not in match.group(1):
        raise ImageLoadError("Not a base64 data URL (expected 'data:image/...;base64,...').")
    try:
        raw = base64.b64decode(match.group(2), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ImageLoadError(f"The data URL's base64 payload is invalid ({exc}).") from None
    return load_image(raw, max_pixels=max_pixels, max_side=None).image


# ---------------------------------------------------------------------------- reading


def _read_bytes(source: Source) -> bytes:
    if isinstance(source, (bytes, bytearray, memoryview)):
        return bytes(source)
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.exists():
            raise ImageLoadError(f"File not found: {path}")
        if path.is_dir():
            raise ImageLoadError(f"{path} is a folder, not an image file.")
        try:
            return path.read_bytes()
        except OSError as exc:
            raise ImageLoadError(f"Could not read {path}: {exc.strerror or exc}") from None
    if hasattr(source, "read"):
        data = source.read()
        if isinstance(data, str):
            raise ImageLoadError("The file was opened in text mode; open it in binary mode ('rb').")
        return bytes(data)
    raise TypeError(f"load_image expects a path, bytes, a binary file or a PIL image, not {type(source).__name__}")


def _check_pixels(size: tuple[int, int], max_pixels: int) -> None:
    if size[0] * size[1] > max_pixels:
        raise ImageLoadError(
            f"The image is too large: {size[0]}x{size[1]} = {size[0] * size[1] / 1e6:.1f} megapixels, "
            f"above the {max_pixels / 1e6:g} megapixel limit (refused as a possible decompression bomb)."
        )


def _open_pil(data: bytes) -> Image.Image | None:
    """Identify the bytes with Pillow (headers only); None when Pillow does not know them."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # we apply our own limit
            return Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as exc:
        raise ImageLoadError(f"The image is too large, refused as a possible decompression bomb ({exc}).") from None
    except UnidentifiedImageError:
        return None
    except Exception as exc:  # a plugin choking on a broken header
        raise ImageLoadError(f"The file looks like an image but its header is corrupt ({exc}).") from None


_NON_IMAGES = [
    (b"%PDF", "a PDF document"),
    (b"PK\x03\x04", "a ZIP archive (or a Word/Excel/PowerPoint file)"),
    (b"\x1f\x8b", "a gzip-compressed file (a .nii.gz volume?)"),
    (b"Rar!", "a RAR archive"),
]
_IMAGES = [
    (b"\x89PNG", "PNG"),
    (b"\xff\xd8\xff", "JPEG"),
    (b"GIF8", "GIF"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"BM", "BMP"),
    (b"RIFF", "WebP"),
]


def _not_an_image_message(data: bytes) -> str | None:
    """Say what the bytes look like when that is cheap to tell; None for unknown binary."""
    for magic, what in _NON_IMAGES:
        if data.startswith(magic):
            return f"This file is not an image: it looks like {what}."
    if data[344:348] in (b"n+1\x00", b"ni1\x00"):
        return "This file is a NIfTI volume, which is not supported: export a slice as PNG or DICOM."
    if data[4:8] == b"ftyp":  # ISO media: an iPhone HEIC photo or an MP4/MOV video
        return "This file is a HEIC photo or a video, which is not supported here: export it as JPEG or PNG."
    head = data[:4096]
    if b"\x00" not in head:
        try:
            text = head.decode("utf-8")
        except UnicodeDecodeError as exc:
            text = head[: exc.start].decode("utf-8") if exc.start >= len(head) - 3 else None
        if text is not None:
            lowered = text.lstrip().lower()
            what = (
                "an HTML page"
                if lowered.startswith(("<!doctype html", "<html"))
                else "an SVG/XML document"
                if lowered.startswith(("<svg", "<?xml"))
                else "a text file"
            )
            return f"This file is not an image: it looks like {what}."
    for magic, fmt in _IMAGES:
        if data.startswith(magic):
            return f"The file looks like a {fmt} image but is corrupt: its header cannot be decoded."
    return None


# ---------------------------------------------------------------------------- PIL formats


def _decode_pil(img: Image.Image, fmt: str, max_pixels: int, notes: list[str]) -> Image.Image:
    _check_pixels(img.size, max_pixels)
    try:
        frames = getattr(img, "n_frames", 1)  # counting frames parses the whole file: inside the guard
        if frames > 1:
            img.seek(0)
            notes.append(f"multi-frame {fmt}: first of {frames} frames shown")
        img.load()
        if img.getexif().get(0x0112, 1) not in (1, 0):  # 0x0112 = EXIF Orientation
            img = ImageOps.exif_transpose(img)
            notes.append("EXIF rotation applied")
        return _to_rgb(img, notes)
    except (ImageLoadError, MemoryError):
        raise
    except Exception as exc:  # damaged files raise IndexError, struct.error, TypeError... from the plugins
        why = (
            "truncated: it ends before the image data is complete (interrupted download or copy?)"
            if "truncated" in str(exc)
            else f"corrupt and could not be decoded ({_why(exc)})"
        )
        raise ImageLoadError(f"The {fmt} file is {why}.") from None


def _why(exc: BaseException) -> str:
    """The exception's text, or its type when it has none (struct.error(''), IndexError())."""
    return str(exc) or type(exc).__name__


_HIGH_DEPTH = {
    "I;16": "16-bit",
    "I;16L": "16-bit",
    "I;16B": "16-bit",
    "I;16N": "16-bit",
    "I": "32-bit integer",
    "F": "32-bit float",
}


def _to_rgb(img: Image.Image, notes: list[str]) -> Image.Image:
    """Any PIL mode -> RGB: high bit depths min-max scaled, transparency composited on black."""
    mode = img.mode
    if mode in _HIGH_DEPTH:
        grey, lo, hi = _minmax_uint8(np.asarray(img))
        notes.append(f"{_HIGH_DEPTH[mode]} image scaled to 8 bits by min-max ({lo:g}..{hi:g})")
        return Image.fromarray(grey, "L").convert("RGB")
    if "transparency" in img.info and mode in ("P", "L", "RGB"):
        img = img.convert("RGBA")
    elif mode == "P":
        img = img.convert("RGB")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        if rgba.getchannel("A").getextrema()[0] < 255:
            black = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
            rgba = Image.alpha_composite(black, rgba)
            notes.append("transparent areas composited on black")
        return rgba.convert("RGB")
    if mode == "CMYK":
        notes.append("CMYK converted to RGB (no colour profile applied)")
    return img.convert("RGB")


def _minmax_uint8(arr: np.ndarray, lo: float | None = None, hi: float | None = None):
    """Linearly map [lo, hi] (default: the finite min and max) to 0..255."""
    arr = arr.astype(np.float32)
    finite = np.isfinite(arr)
    if lo is None or hi is None:
        lo, hi = (float(arr[finite].min()), float(arr[finite].max())) if finite.any() else (0.0, 0.0)
    if hi <= lo:  # constant image: black
        return np.zeros(arr.shape, np.uint8), lo, hi
    scaled = (np.where(finite, arr, lo) - lo) * (255.0 / (hi - lo))
    return np.rint(np.clip(scaled, 0, 255)).astype(np.uint8), lo, hi


# ---------------------------------------------------------------------------- DICOM


def _dicom_dataset(data: bytes, sniff: bool = False):
    """Parse DICOM; with sniff=True return None unless the result really looks like DICOM."""
    import pydicom

    try:
        with warnings.catch_warnings():
            if sniff:  # reading arbitrary bytes as DICOM warns a lot: keep the guess quiet
                warnings.simplefilter("ignore")
            ds = pydicom.dcmread(io.BytesIO(data), force=True)
        if sniff and not any(k in ds for k in ("PixelData", "SOPClassUID", "Rows", "Modality")):
            return None
        return ds
    except Exception as exc:
        if sniff:
            return None
        raise ImageLoadError(f"The DICOM file could not be read ({exc}).") from None


def _decoder_package(uid) -> str:
    """The pylibjpeg plugin that decodes a compressed transfer syntax (for the error message)."""
    from pydicom import uid as u

    if uid in u.JPEG2000TransferSyntaxes or "High-Throughput" in uid.name:
        return "pylibjpeg-openjpeg"
    return "pylibjpeg-rle" if uid in u.RLETransferSyntaxes else "pylibjpeg-libjpeg"  # JPEG, JPEG-LS


def _decode_dicom(ds, max_pixels: int, notes: list[str]):
    # pydicom parses header elements lazily, on first access: a damaged one raises there
    # (NotImplementedError, ValueError, KeyError...), anywhere below.
    try:
        return _decode_dicom_unguarded(ds, max_pixels, notes)
    except (ImageLoadError, MemoryError):
        raise
    except Exception as exc:
        raise ImageLoadError(f"The DICOM file is corrupt and could not be decoded ({_why(exc)}).") from None


def _decode_dicom_unguarded(ds, max_pixels: int, notes: list[str]):
    from pydicom import uid as u
    from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi_lut, pixel_array

    if not any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        what = ds.SOPClassUID.name if "SOPClassUID" in ds else "no SOP class given"
        raise ImageLoadError(
            f"This DICOM file has no pixel data ({what}): it is not an image "
            "(a report, presentation state or DICOMDIR?)."
        )
    if "Rows" not in ds or "Columns" not in ds:
        raise ImageLoadError("This DICOM file has pixel data but no Rows/Columns, so it cannot be shown.")
    size = (int(ds.Columns), int(ds.Rows))
    _check_pixels(size, max_pixels)
    meta = ds.file_meta
    if "TransferSyntaxUID" not in meta:  # preamble-less file: use the encoding it was read with
        implicit, little = ds.original_encoding
        meta.TransferSyntaxUID = (
            u.ImplicitVRLittleEndian if implicit else u.ExplicitVRLittleEndian if little else u.ExplicitVRBigEndian
        )
    tsyntax = meta.TransferSyntaxUID
    try:
        arr = pixel_array(ds, index=0)  # decodes only the first frame
    except RuntimeError as exc:
        if "missing dependencies" not in str(exc):
            raise ImageLoadError(f"The DICOM pixel data could not be decoded ({exc}).") from None
        raise ImageLoadError(
            f"This DICOM image is compressed with {tsyntax.name} and no decoder for it is installed: "
            f"pip install pylibjpeg {_decoder_package(tsyntax)}"
        ) from None
    except NotImplementedError:
        raise ImageLoadError(f"DICOM transfer syntax {tsyntax.name} is not supported (video?).") from None
    except Exception as exc:
        raise ImageLoadError(f"The DICOM pixel data is corrupt and could not be decoded ({_why(exc)}).") from None
    if tsyntax.is_compressed:
        notes.append(f"decoded {tsyntax.name} pixel data")
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames > 1:
        notes.append(f"multi-frame DICOM: first of {frames} frames shown")
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    bits = int(ds.get("BitsStored", 8))
    mode = f"{photometric} {bits}-bit"

    if photometric == "PALETTE COLOR":
        try:
            arr = apply_color_lut(arr, ds)
        except Exception as exc:
            raise ImageLoadError(
                f"This DICOM file is PALETTE COLOR but its palette is missing or corrupt ({_why(exc)})."
            ) from None
        notes.append("DICOM palette colour lookup applied")
        bits = 16 if arr.dtype == np.uint16 else 8
    if arr.ndim == 3:  # colour: pydicom already converted YBR to RGB
        if photometric.startswith("YBR"):
            notes.append(f"DICOM {photometric} converted to RGB")
        if arr.dtype != np.uint8:
            arr = _minmax_uint8(arr, 0, 2**bits - 1)[0]
        return Image.fromarray(np.ascontiguousarray(arr[..., :3]), "RGB"), mode, size

    values = apply_modality_lut(arr, ds)  # RescaleSlope/Intercept or Modality LUT
    grey = None
    try:
        voi_range = _voi_output_range(ds)
        if voi_range is not None:
            grey = _minmax_uint8(apply_voi_lut(values, ds, index=0), *voi_range)[0]
            notes.append("DICOM VOI window applied")
    except (ValueError, TypeError, IndexError, AttributeError, KeyError, NotImplementedError):
        notes.append("DICOM VOI window invalid, ignored")
    if grey is None:
        grey, lo, hi = _minmax_uint8(values)
        notes.append(f"DICOM values scaled to 8 bits by min-max ({lo:g}..{hi:g})")
    if photometric == "MONOCHROME1":  # low values are white in MONOCHROME1
        grey = 255 - grey
        notes.append("MONOCHROME1 inverted")
    return Image.fromarray(grey, "L").convert("RGB"), mode, size


def _voi_output_range(ds) -> tuple[float, float] | None:
    """The output range of the VOI step apply_voi_lut will take (None: no VOI in the file),
    so that range, not the image's own min and max, maps to 0..255."""
    from pydicom.pixels.processing import apply_voi, apply_windowing

    seq = ds.get("VOILUTSequence")  # apply_voi_lut prefers the LUT over the window, as here
    if seq and seq[0].get("LUTDescriptor") is not None and seq[0].get("LUTData") is not None:
        entries, first = int(seq[0].LUTDescriptor[0]) or 65536, int(seq[0].LUTDescriptor[1])
        lut = apply_voi(np.arange(first, first + entries), ds)  # the LUT itself, however encoded
        return float(lut.min()), float(lut.max())
    if ds.get("WindowCenter") is not None and ds.get("WindowWidth") is not None:
        ends = apply_windowing(np.array([-np.inf, np.inf]), ds)  # below / above the window
        return float(ends[0]), float(ends[1])
    return None


# ---------------------------------------------------------------------------- DICOM: de-identification and viewing


def is_dicom(data: bytes) -> bool:
    """DICOM by its magic (a preamble-less file is not recognised here; load_image still reads it)."""
    return data[128:132] == b"DICM"


# PS3.15 Annex E Basic Application Level Confidentiality Profile: attributes that identify the patient or
# the visit and are not caught by the VR rules below (person names, dates and times go by their VR).
_IDENTIFYING = (
    "PatientID",
    "OtherPatientIDs",
    "OtherPatientIDsSequence",
    "IssuerOfPatientID",
    "PatientBirthName",
    "PatientMotherBirthName",
    "PatientAddress",
    "PatientTelephoneNumbers",
    "PatientAge",
    "PatientSize",
    "PatientWeight",
    "MedicalRecordLocator",
    "EthnicGroup",
    "Occupation",
    "AdditionalPatientHistory",
    "PatientComments",
    "PatientReligiousPreference",
    "MilitaryRank",
    "BranchOfService",
    "CountryOfResidence",
    "RegionOfResidence",
    "AccessionNumber",
    "StudyID",
    "InstitutionName",
    "InstitutionAddress",
    "InstitutionalDepartmentName",
    "StationName",
    "DeviceSerialNumber",
    "AdmissionID",
    "AdmittingDiagnosesDescription",
    "StudyDescription",
    "SeriesDescription",
    "RequestAttributesSequence",
    "RequestedProcedureID",
    "PerformedProcedureStepID",
    "PerformedProcedureStepDescription",
    "ImageComments",
    "DerivationDescription",
    "FrameComments",
    "OriginalAttributesSequence",
    "ReferencedPatientSequence",
    "ReferencedStudySequence",
    "ProtocolName",
    "ContentSequence",
    "CurrentPatientLocation",
    "PatientInstitutionResidence",
)
_IDENTIFYING_VRS = {"PN", "DA", "DT", "TM"}  # person names, dates, times: removed wherever they appear
_REPLACED_UIDS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "FrameOfReferenceUID")


def deidentify_dicom(data: bytes) -> bytes:
    """The DICOM file re-saved without what identifies the patient (PS3.15 basic profile: names, ids,
    dates, institution, free-text descriptions, private tags; instance UIDs replaced). The pixels and
    what a viewer needs (modality, body part, geometry, window) stay. Burned-in text in the pixels is
    not found: a clinician should not upload such images to a public demo."""
    import pydicom
    from pydicom.uid import generate_uid

    try:
        ds = pydicom.dcmread(io.BytesIO(data), force=True)
    except Exception as exc:
        raise ImageLoadError(f"The DICOM file could not be read ({exc}).") from None
    ds.remove_private_tags()

    def strip(dataset, element) -> None:
        if element.VR in _IDENTIFYING_VRS or element.keyword in _IDENTIFYING:
            del dataset[element.tag]

    ds.walk(strip)
    new_uids = {}
    for keyword in _REPLACED_UIDS:
        if keyword in ds:
            new_uids[keyword] = generate_uid()
            setattr(ds, keyword, new_uids[keyword])
    if "SOPInstanceUID" in new_uids and "MediaStorageSOPInstanceUID" in ds.file_meta:
        ds.file_meta.MediaStorageSOPInstanceUID = new_uids["SOPInstanceUID"]
    ds.PatientIdentityRemoved = "YES"
    ds.DeidentificationMethod = "PS3.15 basic profile subset (explorer)"  # LO: 64 characters at most
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=False)
    return out.getvalue()


# What the viewer shows of a header: the acquisition, never the patient.
VIEWER_FIELDS = (
    "Modality",
    "BodyPartExamined",
    "ViewPosition",
    "PatientPosition",
    "Manufacturer",
    "PhotometricInterpretation",
    "Rows",
    "Columns",
    "BitsStored",
    "PixelSpacing",
    "SliceThickness",
    "WindowCenter",
    "WindowWidth",
    "RescaleSlope",
    "RescaleIntercept",
    "NumberOfFrames",
)


@dataclass(frozen=True)
class DicomPixels:
    """A DICOM's first frame as values (after the modality LUT: Hounsfield units for CT) for windowing."""

    values: np.ndarray  # 2-D float32, at most VIEW_MAX_SIDE per side
    header: dict  # VIEWER_FIELDS present in the file, as text
    presets: dict  # window name -> (centre, width)
    invert: bool  # MONOCHROME1: low values are white


VIEW_MAX_SIDE = 1024
# Standard CT windows in Hounsfield units (centre, width).
CT_WINDOWS = {"lung": (-600.0, 1500.0), "soft tissue": (40.0, 400.0), "bone": (400.0, 1800.0), "brain": (40.0, 80.0)}


def dicom_pixels(data: bytes) -> Optional["DicomPixels"]:
    """The first frame of a greyscale DICOM with its viewer header and window presets; None when the bytes
    are not DICOM or the image is colour (colour needs no windowing)."""
    import pydicom
    from pydicom.pixels import apply_modality_lut, pixel_array

    if not is_dicom(data):
        return None
    try:
        ds = pydicom.dcmread(io.BytesIO(data), force=True)
        arr = pixel_array(ds, index=0)
        if arr.ndim != 2:
            return None
        values = np.asarray(apply_modality_lut(arr, ds), dtype=np.float32)
    except Exception:  # load_image reports what is wrong with the file; the viewer just stays empty
        return None
    step = max(1, int(np.ceil(max(values.shape) / VIEW_MAX_SIDE)))
    values = np.ascontiguousarray(values[::step, ::step])
    header = {k: str(ds.get(k)) for k in VIEWER_FIELDS if ds.get(k) not in (None, "")}
    return DicomPixels(
        values,
        header,
        window_presets(values, ds),
        str(ds.get("PhotometricInterpretation", "")).upper() == "MONOCHROME1",
    )


def window_presets(values: np.ndarray, ds: Any = None) -> dict[str, tuple[float, float]]:
    """Windows for this image: the file's own, the full range and the central 98% / 90% of its values
    (percentiles with numpy), and the standard CT windows for CT."""
    finite = values[np.isfinite(values)]
    presets: dict[str, tuple[float, float]] = {}
    if ds is not None and ds.get("WindowCenter") is not None and ds.get("WindowWidth") is not None:
        centre, width = _first_number(ds.WindowCenter), _first_number(ds.WindowWidth)
        if centre is not None and width is not None and width > 0:
            presets["the file's window"] = (centre, width)
    if finite.size:
        for name, (lo_q, hi_q) in (("full range", (0, 100)), ("central 98%", (1, 99)), ("central 90%", (5, 95))):
            lo, hi = np.percentile(finite, [lo_q, hi_q])
            if hi > lo:
                presets[name] = ((lo + hi) / 2.0, hi - lo)
    if ds is not None and str(ds.get("Modality", "")).upper() == "CT":
        presets.update({f"CT {k}": v for k, v in CT_WINDOWS.items()})
    return presets


def _first_number(value: Any) -> Optional[float]:
    """A DS value or the first of a multi-valued one (a file may list several windows)."""
    from pydicom.multival import MultiValue

    try:
        return float(value[0] if isinstance(value, (MultiValue, list, tuple)) else value)
    except (TypeError, ValueError, IndexError):
        return None


def apply_window(
    values: np.ndarray, centre: float, width: float, invert: bool = False, zoom: float = 1.0
) -> Image.Image:
    """Greyscale image of the values under a window (centre, width), zoomed about the centre (1 = whole)."""
    grey = _minmax_uint8(values, centre - width / 2.0, centre + width / 2.0)[0]
    if invert:
        grey = 255 - grey
    if zoom > 1:
        h, w = grey.shape
        ch, cw = max(1, int(h / zoom)), max(1, int(w / zoom))
        top, left = (h - ch) // 2, (w - cw) // 2
        grey = grey[top : top + ch, left : left + cw]
    return Image.fromarray(np.ascontiguousarray(grey), "L")
