"""Properties that must hold for ANY input, checked with hypothesis.

- parse_verdict never raises, always returns one of the five labels, and its span indexes the answer
  (answer[start:end] == evidence), for arbitrary text and arbitrary prompt variants.
- load_image raises nothing but ImageLoadError for arbitrary bytes (random, or valid files of every
  format damaged at random), and small random valid images come back as RGB of the same size.

Examples are kept modest for CI (EXPLORER_HYPOTHESIS_EXAMPLES raises them; bench/soak.py does).
"""

from __future__ import annotations

import io
import os
import warnings

import numpy as np
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from PIL import Image
from test_bad_inputs import dicom_bytes, dicom_with_broken_rows_element, gif_frames, multipage_tiff

from explorer.cases.images import ImageLoadError, content_hash, load_image
from explorer.schema import VERDICT_LABELS, PromptVariant, Verdict
from explorer.scoring.verdicts import RULES_METHOD, parse_verdict

EXAMPLES = int(os.environ.get("EXPLORER_HYPOTHESIS_EXAMPLES", "150"))
SETTINGS = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# ------------------------------------------------------------------ verdicts
# Words that trigger the parser's rules, so random text reaches every rule and not just "unclear".
WORDS = [
    "yes",
    "Yes",
    "YES",
    "no",
    "No",
    "not",
    "A",
    "B",
    "(A)",
    "B)",
    "Answer:",
    "The answer is",
    "I would choose",
    "tumor",
    "no tumor",
    "pneumonia",
    "normal",
    "abnormal",
    "malignant",
    "benign",
    "carcinoma",
    "evidence of",
    "signs of",
    "may or may not",
    "both",
    "cannot",
    "I cannot provide",
    "consult a doctor",
    "difficult to determine",
    "In conclusion,",
    "Impression:",
    "however",
    "but",
    "appears",
    "there is",
    "**",
    "#",
    "`",
    "|",
    ">",
    "\u2019",
    "\u201c",
    "\n",
    ".",
    ",",
    "!",
    "?",
    ";",
    ":",
    " ",
    "  ",
    "\t",
    "\u00a0",
    "\u0645\u0631\u062d\u0628\u0627",
    "\U0001fa7b",
]
word_soup = st.lists(st.sampled_from(WORDS), max_size=40).map(" ".join)
any_text = st.one_of(st.text(max_size=300), word_soup, st.text(alphabet="AByesnoYESNO .,:()*\n", max_size=60))
readings = st.one_of(st.sampled_from(["positive", "negative"]), st.none(), st.text(max_size=8))
letters = st.one_of(st.sampled_from(list("ABCD")), st.text(max_size=2))
# What presets and the prompt editor can produce: letters A-D, each meaning positive or negative.
good_readings = st.sampled_from(["positive", "negative"])
good_options = st.lists(
    st.tuples(st.sampled_from(list("ABCD")), good_readings, any_text), min_size=2, max_size=4, unique_by=lambda o: o[0]
).map(tuple)


@st.composite
def variants(draw, well_formed: bool = False) -> PromptVariant:
    mc = draw(st.booleans())
    if well_formed:
        yes_means, options = (None, draw(good_options)) if mc else (draw(st.one_of(good_readings, st.none())), ())
    else:
        yes_means = None if mc else draw(readings)
        options = draw(st.lists(st.tuples(letters, readings, any_text), max_size=4).map(tuple)) if mc else ()
    return PromptVariant(
        prompt_id=draw(st.text(max_size=12)),
        family=draw(
            st.sampled_from(
                [
                    "abnormal",
                    "normal",
                    "evidence",
                    "guided",
                    "mc_pos_first",
                    "mc_neg_first",
                    "describe",
                    "custom",
                    "custom_mc",
                    "",
                ]
            )
        ),
        text=draw(any_text),
        kind=draw(st.sampled_from(["closed", "closed", "describe"] + ([] if well_formed else ["other"]))),
        yes_means=yes_means,
        options=options,
        one_word=draw(st.booleans()),
        custom=draw(st.booleans()),
    )


@st.composite
def answers_to(draw, variant: PromptVariant) -> str:
    """Free text, sometimes echoing the prompt inside it (pipelines that return prompt + answer)."""
    text = draw(any_text)
    if variant.text and draw(st.booleans()):
        text = draw(any_text) + variant.text + text
    return text


def _check_verdict(answer: str, verdict: Verdict) -> None:
    assert isinstance(verdict, Verdict)
    assert verdict.label in VERDICT_LABELS
    assert verdict.method == RULES_METHOD and isinstance(verdict.detail, str)
    if verdict.span is None:
        assert verdict.evidence == ""
    else:
        start, end = verdict.span
        assert 0 <= start <= end <= len(answer)
        assert answer[start:end] == verdict.evidence


@SETTINGS
@given(variant=variants(well_formed=True), data=st.data())
def test_parse_verdict_never_raises_and_its_span_indexes_the_answer(variant, data):
    answer = data.draw(answers_to(variant))
    _check_verdict(answer, parse_verdict(answer, variant))


MALFORMED = PromptVariant("x", "custom_mc", "Pick one", options=(("(", "positive", "yes"), ("B", None, "no")))


@SETTINGS
@given(variant=variants(), data=st.data())
@example(variant=MALFORMED, data=None)
def test_parse_verdict_never_raises_for_arbitrary_variants(variant, data):
    answer = data.draw(answers_to(variant)) if data is not None else "(  B"
    _check_verdict(answer, parse_verdict(answer, variant))


POLAR = [
    PromptVariant("abnormal", "abnormal", "Is this image abnormal?", yes_means="positive"),
    PromptVariant("normal", "normal", "Is this image normal?", yes_means="negative"),
    PromptVariant(
        "mc_neg_first",
        "mc_neg_first",
        "Which does this image show? Choose one answer.\nA) No tumor\nB) Tumor",
        options=(("A", "negative", "No tumor"), ("B", "positive", "Tumor")),
    ),
]


@SETTINGS
@given(variant=st.sampled_from(POLAR), answer=any_text)
@example(variant=POLAR[1], answer="**Yes**, the image is not normal.")
@example(variant=POLAR[2], answer="Answer: (B)\n\nA) No tumor  B) Tumor")
@example(variant=POLAR[0], answer="Is this image abnormal?\nIs this image abnormal? Yes")
def test_parse_verdict_on_the_studys_prompts(variant, answer):
    """The real prompts, where the most rules fire."""
    _check_verdict(answer, parse_verdict(answer, variant))


# ------------------------------------------------------------------ images
def _encoded(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def _seed_files() -> dict[str, bytes]:
    rgb = Image.fromarray(np.random.default_rng(0).integers(0, 256, (12, 16, 3), dtype=np.uint8))
    return {
        "png": _encoded(rgb, "PNG"),
        "png16": _encoded(Image.fromarray(np.arange(192, dtype=np.uint16).reshape(12, 16) * 300), "PNG"),
        "jpeg": _encoded(rgb, "JPEG", quality=80),
        "bmp": _encoded(rgb, "BMP"),
        "webp": _encoded(rgb, "WEBP", lossless=True),
        "ico": _encoded(rgb, "ICO"),
    }


SEEDS = _seed_files()
# Multi-frame formats (Pillow counts their frames by reading the whole file) and DICOM (pydicom reads
# header elements lazily): their damage surfaces late, so they get a property of their own.
FRAGILE_SEEDS = {
    "gif": gif_frames(),
    "tiff": multipage_tiff(),
    "dicom": dicom_bytes(),
    "dicom16": dicom_bytes(bits=16, window=(300, 200), rescale=(2.0, -10.0)),
    "dicom_rgb": dicom_bytes(photometric="RGB", samples=3),
}


@st.composite
def damaged(draw, seeds: dict[str, bytes]) -> bytes:
    data = bytearray(seeds[draw(st.sampled_from(sorted(seeds)))])
    for pos, value in draw(st.lists(st.tuples(st.integers(0, len(data) - 1), st.integers(0, 255)), max_size=8)):
        data[pos] = value
    if draw(st.booleans()):
        data = data[: draw(st.integers(0, len(data)))]
    return bytes(data)


def _load_or_refuse(data: bytes) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # decoders warn about what they tolerate
        try:
            loaded = load_image(data, max_pixels=4_000_000)
        except ImageLoadError as exc:
            assert str(exc)  # a message for the user
            return
    assert loaded.image.mode == "RGB" and loaded.image.width >= 1 and loaded.image.height >= 1
    assert loaded.image_hash == content_hash(loaded.image)


@SETTINGS
@given(data=st.one_of(st.binary(max_size=600), damaged(SEEDS)))
@example(data=b"")
@example(data=b"\x00" * 132)
def test_load_image_refuses_any_bytes_with_image_load_error(data):
    _load_or_refuse(data)


# A corrupt multi-frame file fails while Pillow counts its frames, and a damaged DICOM header
# element fails when it is first read: both must still end as ImageLoadError (found by this property).
@SETTINGS
@given(data=st.one_of(damaged(FRAGILE_SEEDS), st.binary(max_size=300).map(lambda b: b"\x00" * 128 + b"DICM" + b)))
@example(data=gif_frames()[:100])
@example(data=gif_frames()[:108])
@example(data=multipage_tiff()[:141])
@example(data=dicom_with_broken_rows_element())
@example(data=dicom_bytes(photometric="PALETTE COLOR"))
def test_load_image_refuses_damaged_multiframe_and_dicom_files_with_image_load_error(data):
    _load_or_refuse(data)


MODES = {  # mode -> formats that store it losslessly
    "RGB": ("PNG", "BMP", "TIFF", "WEBP"),
    "L": ("PNG", "BMP", "TIFF"),
    "RGBA": ("PNG", "TIFF", "WEBP"),
    "LA": ("PNG",),
    "P": ("PNG", "GIF", "BMP"),
    "1": ("PNG", "BMP", "TIFF"),
    "I;16": ("PNG", "TIFF"),
    "I": ("TIFF",),
    "F": ("TIFF",),
    "CMYK": ("TIFF", "JPEG"),
}


@st.composite
def small_images(draw) -> tuple[str, str, Image.Image]:
    mode = draw(st.sampled_from(sorted(MODES)))
    fmt = draw(st.sampled_from(MODES[mode]))
    w, h = draw(st.integers(1, 24)), draw(st.integers(1, 24))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    if mode == "I;16":
        img = Image.fromarray(rng.integers(0, 65536, (h, w), dtype=np.uint16))
    elif mode == "I":
        img = Image.fromarray(rng.integers(-(2**31), 2**31 - 1, (h, w), dtype=np.int32), "I")
    elif mode == "F":
        img = Image.fromarray(rng.normal(0, 1000, (h, w)).astype(np.float32), "F")
    else:
        bands = len(Image.new(mode, (1, 1)).getbands())
        img = (
            Image.frombytes(mode, (w, h), rng.integers(0, 256, w * h * bands, dtype=np.uint8).tobytes())
            if mode not in ("1", "P")
            else Image.fromarray(rng.integers(0, 256, (h, w), dtype=np.uint8)).convert(mode)
        )
    return mode, fmt, img


@SETTINGS
@given(small_images())
def test_small_valid_images_round_trip_to_rgb(case):
    mode, fmt, img = case
    data = _encoded(img, fmt, **({"lossless": True} if fmt == "WEBP" else {}))
    loaded = load_image(data)
    assert loaded.image.mode == "RGB" and loaded.image.size == img.size
    assert loaded.original_size == img.size and loaded.image_hash == content_hash(loaded.image)
    if fmt != "JPEG":
        assert loaded.format == fmt
    pixels = np.asarray(loaded.image)
    if mode == "RGB":  # lossless formats: exactly the pixels written
        assert np.array_equal(pixels, np.asarray(img))
    elif mode == "L":
        assert np.array_equal(pixels, np.repeat(np.asarray(img)[..., None], 3, axis=2))
    elif mode == "1":
        assert set(np.unique(pixels)) <= {0, 255}
    # Loading the delivered RGB pixels again is the identity.
    again = load_image(_encoded(loaded.image, "PNG"))
    assert again.image_hash == loaded.image_hash
