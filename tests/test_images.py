"""explorer.cases.images: every file a clinician may drop -> RGB + hash, or a clear ImageLoadError."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, JPEG2000Lossless, RLELossless, generate_uid

from explorer.cases.images import (
    ImageLoadError,
    LoadedImage,
    content_hash,
    image_from_data_url,
    image_to_data_url,
    load_image,
)

SAMPLES = Path(__file__).resolve().parents[1].parent / "shared" / "samples"
SAMPLE_FILES = (
    sorted(str(p.relative_to(SAMPLES)) for p in SAMPLES.rglob("*") if p.is_file() and p.name != "SOURCES.csv")
    if SAMPLES.is_dir()
    else []
)


def rgb_at(loaded: LoadedImage, xy: tuple[int, int]) -> tuple[int, int, int]:
    return loaded.image.getpixel(xy)


def check_rgb(loaded: LoadedImage) -> None:
    assert loaded.image.mode == "RGB"
    assert loaded.image_hash == content_hash(loaded.image)
    assert len(loaded.image_hash) == 64


def save(img: Image.Image, path: Path, fmt: str, **kw) -> Path:
    img.save(path, fmt, **kw)
    return path


def noise_png(size=(64, 64), seed=0) -> bytes:
    arr = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG")
    return buf.getvalue()


# ----------------------------------------------------------------------------- PIL formats


def test_8bit_grey_png_is_unchanged(tmp_path):
    arr = np.arange(256, dtype=np.uint8).reshape(16, 16)
    loaded = load_image(save(Image.fromarray(arr), tmp_path / "g.png", "PNG"))
    check_rgb(loaded)
    assert (loaded.format, loaded.original_mode, loaded.original_size) == ("PNG", "L", (16, 16))
    assert np.array_equal(np.asarray(loaded.image)[..., 1], arr)
    assert loaded.notes == ()


def test_16bit_png_is_minmax_scaled(tmp_path):
    arr = np.linspace(1000, 3000, 100 * 50).astype(np.uint16).reshape(50, 100)
    loaded = load_image(save(Image.fromarray(arr), tmp_path / "g16.png", "PNG"))
    check_rgb(loaded)
    assert loaded.original_mode.startswith("I")
    grey = np.asarray(loaded.image)[..., 0]
    assert grey.min() == 0 and grey.max() == 255  # the narrow 16-bit range fills 8 bits
    assert any("16-bit image scaled to 8 bits by min-max" in n for n in loaded.notes)


def test_palette_png_and_palette_transparency(tmp_path):
    img = Image.new("P", (8, 8), 1)
    img.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0] + [0] * (256 * 3 - 9))
    img.putpixel((0, 0), 2)
    assert rgb_at(load_image(save(img, tmp_path / "p.png", "PNG")), (0, 0)) == (0, 255, 0)
    loaded = load_image(save(img, tmp_path / "pt.png", "PNG", transparency=1))  # red is transparent
    assert rgb_at(loaded, (3, 3)) == (0, 0, 0) and rgb_at(loaded, (0, 0)) == (0, 255, 0)
    assert any("composited on black" in n for n in loaded.notes)


def test_rgba_and_la_composite_on_black(tmp_path):
    img = Image.new("RGBA", (4, 4), (255, 0, 0, 0))
    img.putpixel((1, 1), (255, 255, 255, 128))
    img.putpixel((2, 2), (10, 20, 30, 255))
    loaded = load_image(save(img, tmp_path / "a.png", "PNG"))
    check_rgb(loaded)
    assert rgb_at(loaded, (0, 0)) == (0, 0, 0)  # fully transparent red -> black, not red
    assert all(abs(c - 128) <= 1 for c in rgb_at(loaded, (1, 1)))
    assert rgb_at(loaded, (2, 2)) == (10, 20, 30)
    la = Image.new("LA", (4, 4), (200, 255))
    assert load_image(la).notes == ()  # opaque alpha: nothing to composite
    assert rgb_at(load_image(la), (0, 0)) == (200, 200, 200)


def test_cmyk_jpeg(tmp_path):
    img = Image.new("CMYK", (32, 32), (0, 255, 255, 0))  # pure red in CMYK
    loaded = load_image(save(img, tmp_path / "c.jpg", "JPEG", quality=95))
    check_rgb(loaded)
    assert loaded.original_mode == "CMYK"
    r, g, b = rgb_at(loaded, (16, 16))
    assert r > 200 and g < 50 and b < 50


def test_exif_rotated_jpeg(tmp_path):
    img = Image.new("RGB", (40, 20), (0, 0, 255))
    img.paste((255, 0, 0), (0, 0, 20, 20))  # left half red
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 clockwise to display"
    loaded = load_image(save(img, tmp_path / "e.jpg", "JPEG", exif=exif.tobytes(), quality=95))
    assert loaded.original_size == (40, 20)
    assert loaded.image.size == (20, 40)
    assert "EXIF rotation applied" in loaded.notes
    r, _, b = rgb_at(loaded, (10, 5))  # the left half is now on top
    assert r > 200 and b < 50


def test_16bit_and_float_tiff(tmp_path):
    arr16 = (np.arange(40 * 30) * 40).astype(np.uint16).reshape(30, 40)
    loaded = load_image(save(Image.fromarray(arr16), tmp_path / "t16.tif", "TIFF"))
    check_rgb(loaded)
    assert loaded.format == "TIFF" and np.asarray(loaded.image).max() == 255
    arrf = np.linspace(-1.0, 1.0, 40 * 30, dtype=np.float32).reshape(30, 40)
    arrf[0, 0] = np.nan  # a NaN must not poison the scaling
    loaded = load_image(save(Image.fromarray(arrf), tmp_path / "tf.tif", "TIFF"))
    grey = np.asarray(loaded.image)[..., 0]
    assert loaded.original_mode == "F"
    assert grey[0, 1] == 0 and grey[-1, -1] == 255 and grey[0, 0] == 0
    assert any("32-bit float" in n for n in loaded.notes)


@pytest.mark.parametrize("fmt, suffix", [("TIFF", "tif"), ("GIF", "gif")])
def test_multi_frame_first_frame(tmp_path, fmt, suffix):
    frames = [Image.new("RGB", (16, 16), c) for c in [(255, 0, 0), (0, 255, 0), (0, 0, 255)]]
    path = tmp_path / f"multi.{suffix}"
    frames[0].save(path, fmt, save_all=True, append_images=frames[1:])
    loaded = load_image(path)
    check_rgb(loaded)
    assert f"multi-frame {fmt}: first of 3 frames shown" in loaded.notes
    r, g, b = rgb_at(loaded, (8, 8))
    assert r > 200 and g < 50 and b < 50


def test_other_formats_and_sources(tmp_path):
    img = Image.fromarray(np.random.default_rng(1).integers(0, 256, (20, 30, 3), dtype=np.uint8))
    expected = content_hash(img)
    for fmt in ("BMP", "WEBP", "PNG", "TIFF"):
        kw = {"lossless": True} if fmt == "WEBP" else {}
        path = save(img, tmp_path / f"x.{fmt.lower()}", fmt, **kw)
        for source in (path, str(path), path.read_bytes(), io.BytesIO(path.read_bytes())):
            loaded = load_image(source)
            assert loaded.format == fmt and loaded.image_hash == expected
    assert load_image(img).format == "PIL" and load_image(img).image_hash == expected


def test_wrong_extension_is_detected_by_content(tmp_path):
    path = tmp_path / "really_a_png.jpg"
    path.write_bytes(noise_png())
    assert load_image(path).format == "PNG"


def test_downscale_keeps_hash_of_delivered_image(tmp_path):
    img = Image.new("L", (300, 200), 100)
    loaded = load_image(save(img, tmp_path / "big.png", "PNG"), max_side=100)
    assert loaded.image.size == (100, 67)
    assert loaded.original_size == (300, 200)
    assert "downscaled from 300x200 to 100x67" in loaded.notes
    assert loaded.image_hash == content_hash(loaded.image)
    assert load_image(tmp_path / "big.png", max_side=None).image.size == (300, 200)


def test_large_jpeg_draft_decoding(tmp_path):
    img = Image.new("RGB", (1000, 600), (30, 160, 90))
    loaded = load_image(save(img, tmp_path / "wide.jpg", "JPEG"), max_side=200)
    assert loaded.image.size == (200, 120) and loaded.original_size == (1000, 600)
    assert all(abs(a - b) <= 3 for a, b in zip(rgb_at(loaded, (100, 60)), (30, 160, 90)))


# ----------------------------------------------------------------------------- failures


@pytest.mark.parametrize(
    "payload, fragment",
    [
        (b"", "empty"),
        (b"Patient: 42 y/o, chest pain.\nFindings: none.\n", "text file"),
        (b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj", "PDF"),
        (b"PK\x03\x04\x14\x00\x00\x00\x08\x00" + bytes(40), "ZIP"),
        (b"<!DOCTYPE html><html><body>login</body></html>", "HTML"),
        (bytes(range(256)) * 4, "not a recognised image format"),
    ],
)
def test_not_an_image(tmp_path, payload, fragment):
    path = tmp_path / "scan.png"
    path.write_bytes(payload)
    with pytest.raises(ImageLoadError, match=fragment):
        load_image(path)


def test_truncated_png():
    data = noise_png()
    with pytest.raises(ImageLoadError, match="PNG file is truncated"):
        load_image(data[: len(data) // 2])


def test_corrupt_jpeg_bytes():
    buf = io.BytesIO()
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(buf, "JPEG")
    data = buf.getvalue()
    noise = np.random.default_rng(3).integers(0, 256, len(data) - 200, dtype=np.uint8).tobytes()
    with pytest.raises(ImageLoadError, match="JPEG.*corrupt"):
        load_image(data[:200] + noise)


def test_missing_path_and_directory(tmp_path):
    with pytest.raises(ImageLoadError, match="not found"):
        load_image(tmp_path / "nope.png")
    with pytest.raises(ImageLoadError, match="folder"):
        load_image(tmp_path)


def patched_png_size(width: int, height: int) -> bytes:
    """A tiny valid PNG whose IHDR claims width x height (CRC fixed, so only the size check can refuse it)."""
    data = bytearray(noise_png((8, 8)))
    data[16:24] = struct.pack(">II", width, height)  # IHDR data starts after sig(8)+len(4)+type(4)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


@pytest.mark.parametrize("side", [12_000, 40_000])  # 144 MP: our limit; 1.6 GP: Pillow's own
def test_decompression_bomb_is_refused(side):
    with pytest.raises(ImageLoadError, match="decompression bomb"):
        load_image(patched_png_size(side, side))


def test_pixel_limit_is_configurable():
    img = Image.new("RGB", (20, 20))
    with pytest.raises(ImageLoadError, match="too large"):
        load_image(img, max_pixels=100)
    assert load_image(img, max_pixels=400).image.size == (20, 20)


# ----------------------------------------------------------------------------- DICOM


def make_dicom(arr: np.ndarray, photometric: str = "MONOCHROME2", bits: int = 12, **tags) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"  # Secondary Capture
    ds.SOPInstanceUID = generate_uid()
    ds.Modality = "OT"
    ds.set_pixel_data(arr, photometric, bits)
    for key, value in tags.items():
        setattr(ds, key, value)
    return ds


def write_dicom(ds: Dataset, path: Path) -> Path:
    ds.save_as(path, enforce_file_format=True)
    return path


def ramp(rows=16, cols=16, top=1000) -> np.ndarray:
    return np.linspace(0, top, rows * cols).astype(np.uint16).reshape(rows, cols)


def test_dicom_monochrome1_is_inverted(tmp_path):
    loaded = load_image(write_dicom(make_dicom(ramp(), "MONOCHROME1"), tmp_path / "m1.dcm"))
    check_rgb(loaded)
    assert loaded.format == "DICOM" and loaded.original_mode == "MONOCHROME1 12-bit"
    assert rgb_at(loaded, (0, 0)) == (255, 255, 255) and rgb_at(loaded, (15, 15)) == (0, 0, 0)
    assert "MONOCHROME1 inverted" in loaded.notes


def test_dicom_monochrome2_window(tmp_path):
    arr = np.array([[300, 500, 700, 1000]], dtype=np.uint16)
    ds = make_dicom(arr, WindowCenter=500, WindowWidth=200)
    loaded = load_image(write_dicom(ds, tmp_path / "w.dcm"))
    grey = np.asarray(loaded.image)[0, :, 0]
    assert grey[0] == 0 and grey[2] == 255 and grey[3] == 255 and 120 <= grey[1] <= 135
    assert "DICOM VOI window applied" in loaded.notes
    # all pixels inside the window: the window, not the pixels' own range, sets the contrast
    inside = make_dicom(np.array([[450, 500, 550]], dtype=np.uint16), WindowCenter=500, WindowWidth=200)
    grey = np.asarray(load_image(write_dicom(inside, tmp_path / "in.dcm")).image)[0, :, 0]
    assert 55 <= grey[0] <= 70 and 120 <= grey[1] <= 135 and 185 <= grey[2] <= 200


def test_dicom_rescale_then_window(tmp_path):
    # CT: stored 1064 -> HU 40, the centre of a soft-tissue window (40 / 400)
    arr = np.array([[0, 1064, 2000]], dtype=np.uint16)
    ds = make_dicom(arr, RescaleSlope=1, RescaleIntercept=-1024, WindowCenter=40, WindowWidth=400)
    grey = np.asarray(load_image(write_dicom(ds, tmp_path / "ct.dcm")).image)[0, :, 0]
    assert grey[0] == 0 and grey[2] == 255 and 120 <= grey[1] <= 135


def test_dicom_voi_lut_sequence(tmp_path):
    from pydicom.dataelem import DataElement

    item = Dataset()
    item.LUTDescriptor = [4, 10, 16]  # 4 entries, first input value 10, 16-bit entries
    item.add(DataElement(0x00283006, "US", [0, 1000, 2000, 4000]))  # LUT Data
    arr = np.array([[5, 10, 11, 12, 13, 50]], dtype=np.uint16)
    ds = make_dicom(arr, VOILUTSequence=[item])
    loaded = load_image(write_dicom(ds, tmp_path / "lut.dcm"))
    # scaled by the LUT's own output range (0..4000), not the nominal 16 bits
    assert np.asarray(loaded.image)[0, :, 0].tolist() == [0, 0, 64, 128, 255, 255]
    assert "DICOM VOI window applied" in loaded.notes


def test_truncated_dicom(tmp_path):
    data = write_dicom(make_dicom(ramp(64, 64)), tmp_path / "t.dcm").read_bytes()
    with pytest.raises(ImageLoadError, match="DICOM pixel data is corrupt"):
        load_image(data[:-3000])


def test_dicom_without_window_uses_minmax(tmp_path):
    loaded = load_image(write_dicom(make_dicom(ramp(top=300)), tmp_path / "mm.dcm"))
    assert np.asarray(loaded.image).max() == 255
    assert any("min-max" in n for n in loaded.notes)


def test_dicom_multi_frame_first_frame(tmp_path):
    frames = np.stack([np.full((8, 8), 100 * (i + 1), np.uint16) for i in range(10)])
    frames[0, 0, 0] = 0  # give frame 0 some contrast so min-max maps it to 0..255
    loaded = load_image(write_dicom(make_dicom(frames), tmp_path / "mf.dcm"))
    assert "multi-frame DICOM: first of 10 frames shown" in loaded.notes
    grey = np.asarray(loaded.image)[..., 0]
    assert grey[0, 0] == 0 and grey[4, 4] == 255


def test_dicom_rgb_and_ybr(tmp_path):
    arr = np.zeros((8, 8, 3), np.uint8)
    arr[..., 0] = 200
    loaded = load_image(write_dicom(make_dicom(arr, "RGB", 8), tmp_path / "rgb.dcm"))
    assert rgb_at(loaded, (0, 0)) == (200, 0, 0)
    from pydicom.pixels import convert_color_space

    ybr = convert_color_space(arr, "RGB", "YBR_FULL")
    loaded = load_image(write_dicom(make_dicom(ybr, "YBR_FULL", 8), tmp_path / "ybr.dcm"))
    assert all(abs(a - b) <= 2 for a, b in zip(rgb_at(loaded, (0, 0)), (200, 0, 0)))
    assert "DICOM YBR_FULL converted to RGB" in loaded.notes


def test_dicom_without_pixel_data(tmp_path):
    ds = make_dicom(ramp())
    del ds.PixelData
    with pytest.raises(ImageLoadError, match="no pixel data"):
        load_image(write_dicom(ds, tmp_path / "sr.dcm"))


def test_dicom_detected_by_content_and_without_preamble(tmp_path):
    ds = make_dicom(ramp())
    expected = load_image(write_dicom(ds, tmp_path / "a.dcm")).image_hash
    renamed = tmp_path / "scan.jpg"
    renamed.write_bytes((tmp_path / "a.dcm").read_bytes())
    assert load_image(renamed).format == "DICOM"
    bare = tmp_path / "bare"  # no preamble, no file meta: implicit VR little endian
    del ds.file_meta
    pydicom.dcmwrite(bare, ds, implicit_vr=True, little_endian=True)
    assert bare.read_bytes()[128:132] != b"DICM"
    loaded = load_image(bare)
    assert loaded.format == "DICOM" and loaded.image_hash == expected


@pytest.mark.parametrize("syntax", [JPEG2000Lossless, RLELossless])
def test_compressed_dicom_matches_uncompressed(tmp_path, syntax):
    ds = make_dicom(ramp(64, 64, top=4000))  # openjpeg needs more than 16x16
    expected = load_image(write_dicom(ds, tmp_path / "raw.dcm")).image_hash
    ds.compress(syntax)
    loaded = load_image(write_dicom(ds, tmp_path / "c.dcm"))
    assert loaded.image_hash == expected
    assert any(syntax.name in n for n in loaded.notes)


def test_dicom_missing_decoder_names_package(tmp_path, monkeypatch):
    from pydicom.pixels import get_decoder

    ds = make_dicom(ramp(64, 64))
    ds.compress(JPEG2000Lossless)
    path = write_dicom(ds, tmp_path / "j2k.dcm")
    decoder = get_decoder(JPEG2000Lossless)
    monkeypatch.setattr(decoder, "_available", {})
    monkeypatch.setattr(decoder, "_unavailable", {"pylibjpeg": ("pylibjpeg-openjpeg",)})
    with pytest.raises(ImageLoadError, match="pylibjpeg-openjpeg") as info:
        load_image(path)
    assert "JPEG 2000" in str(info.value)


# ----------------------------------------------------------------------------- hashes, data URLs


def test_hash_same_pixels_same_hash_different_pixels_different_hash():
    a = Image.new("RGB", (10, 10), (1, 2, 3))
    b = Image.new("RGB", (10, 10), (1, 2, 3))
    c = Image.new("RGB", (10, 10), (1, 2, 4))
    assert content_hash(a) == content_hash(b) != content_hash(c)
    assert content_hash(Image.new("RGB", (20, 5))) != content_hash(Image.new("RGB", (5, 20)))
    assert content_hash(Image.new("L", (10, 10), 7)) == content_hash(Image.new("RGB", (10, 10), (7, 7, 7)))


def test_data_url_round_trip():
    img = Image.fromarray(np.random.default_rng(2).integers(0, 256, (12, 9, 3), dtype=np.uint8))
    url = image_to_data_url(img)
    assert url.startswith("data:image/png;base64,")
    assert content_hash(image_from_data_url(url)) == content_hash(img)
    assert image_to_data_url(img, "jpg").startswith("data:image/jpeg;base64,")
    for bad in ("http://example.org/x.png", "data:image/png;base64,@@@", "data:text/plain,hello"):
        with pytest.raises(ImageLoadError):
            image_from_data_url(bad)


# ----------------------------------------------------------------------------- shared samples


@pytest.mark.parametrize("relpath", SAMPLE_FILES)
def test_every_sample_loads_or_explains(samples_dir, relpath):
    try:
        loaded = load_image(samples_dir / relpath)
    except ImageLoadError as exc:
        assert str(exc)
        return
    check_rgb(loaded)
    assert max(loaded.image.size) <= 4096


def test_sample_dicoms_compressed_match_uncompressed(samples_dir):
    formats = samples_dir / "formats"
    names = ["pydicom__MR_small.dcm", "pydicom__MR_small_jp2klossless.dcm", "pydicom__MR_small_jpeg_ls_lossless.dcm"]
    if not all((formats / n).is_file() for n in names):
        pytest.skip("MR_small samples absent")
    hashes = {load_image(formats / n).image_hash for n in names}
    assert len(hashes) == 1  # lossless codecs, decoded by the pylibjpeg plugins
