"""The public-mode policy: when it is on, what it refuses, and that its messages are for visitors."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from explorer.cases.images import ImageLoadError
from explorer.catalog.presets import load_catalog
from explorer.service.public import (
    DEFAULT_MAX_SWEEP_ITEMS,
    PolicyError,
    PublicPolicy,
    current_policy,
    public_mode_enabled,
)


@pytest.fixture(scope="module")
def demo():
    return load_catalog().study("demo")


def _png(width: int, height: int) -> bytes:
    buf = io.BytesIO()
    Image.new("L", (width, height), 90).save(buf, "PNG")
    return buf.getvalue()


@pytest.mark.parametrize(
    "environ, expected",
    [
        ({}, False),
        ({"SPACE_ID": "someone/medvlm-explorer"}, True),  # inside a Space: public unless told otherwise
        ({"SPACE_ID": "someone/private", "EXPLORER_PUBLIC": "0"}, False),
        ({"EXPLORER_PUBLIC": "1"}, True),
        ({"EXPLORER_PUBLIC": "on"}, True),
        ({"EXPLORER_PUBLIC": "False"}, False),
        ({"EXPLORER_PUBLIC": ""}, False),
    ],
)
def test_public_mode_from_the_environment(environ, expected):
    assert public_mode_enabled(environ) is expected
    assert PublicPolicy.from_env(environ=environ).enabled is expected


def test_an_unreadable_switch_refuses_to_start():
    with pytest.raises(PolicyError, match="EXPLORER_PUBLIC='maybe'"):
        public_mode_enabled({"EXPLORER_PUBLIC": "maybe"})
    with pytest.raises(PolicyError, match="EXPLORER_PUBLIC_MAX_PIXELS"):
        PublicPolicy.from_env(environ={"EXPLORER_PUBLIC": "1", "EXPLORER_PUBLIC_MAX_PIXELS": "lots"})
    with pytest.raises(PolicyError, match="above 0"):
        PublicPolicy.from_env(environ={"EXPLORER_PUBLIC": "1", "EXPLORER_PUBLIC_MAX_SWEEP_ITEMS": "-5"})


def test_limits_can_be_tuned_and_models_come_from_the_preset(demo):
    policy = PublicPolicy.from_env(
        demo,
        environ={
            "SPACE_ID": "x/y",
            "EXPLORER_PUBLIC_MAX_UPLOAD_MB": "2",
            "EXPLORER_PUBLIC_MAX_PIXELS": "1000",
            "EXPLORER_PUBLIC_MAX_SWEEP_ITEMS": "10",
        },
    )
    assert policy.enabled and policy.max_upload_bytes == 2 * 2**20
    assert policy.max_image_pixels == 1000 and policy.max_sweep_items == 10
    assert policy.allowed_models == frozenset(demo.models)
    assert "Public mode" in policy.describe() and "demo-gemma" in policy.describe()
    assert PublicPolicy.from_env(demo, environ={}).max_sweep_items == DEFAULT_MAX_SWEEP_ITEMS


def test_current_policy_reads_this_process(monkeypatch, demo):
    monkeypatch.delenv("EXPLORER_PUBLIC", raising=False)
    monkeypatch.setenv("SPACE_ID", "x/y")
    assert current_policy(demo).enabled
    monkeypatch.setenv("EXPLORER_PUBLIC", "0")
    assert not current_policy(demo).enabled


def test_private_mode_allows_everything(tmp_path):
    policy = PublicPolicy(enabled=False, max_upload_bytes=1, max_image_pixels=1, max_sweep_items=1)
    policy.check_upload(b"x" * 100)
    policy.check_image_pixels(10_000, 10_000)
    policy.check_models(["anything"])
    policy.check_sweep(10**6)
    policy.check_server_path("/etc/passwd")
    policy.check_endpoints({"m": {"base_url": "http://elsewhere"}})
    assert policy.visible_models(["a", "b"]) == ["a", "b"]
    assert policy.image_limits() == {}
    assert policy.load_upload(_png(30, 20)).image.size == (30, 20)
    assert policy.describe().startswith("Private mode")


def test_uploads_over_the_byte_limit_are_refused_before_decoding(tmp_path):
    policy = PublicPolicy(enabled=True, max_upload_bytes=1000)
    big = b"\x89PNG" + b"\x00" * 5000  # not even an image: the size check comes first
    with pytest.raises(PolicyError, match=r"too large for this public demo.*limit"):
        policy.check_upload(big)
    path = tmp_path / "upload.dcm"
    path.write_bytes(big)
    with pytest.raises(PolicyError, match="too large"):
        policy.load_upload(str(path))
    with pytest.raises(PolicyError, match="too large"):
        policy.check_upload(5000)
    policy.check_upload(tmp_path / "missing.png")  # nothing to measure: loading will say so
    policy.check_upload(b"x" * 1000)  # at the limit is fine


def test_images_over_the_pixel_limit_are_refused(tmp_path):
    policy = PublicPolicy(enabled=True, max_image_pixels=10_000)
    assert policy.load_upload(_png(100, 100)).image.size == (100, 100)
    with pytest.raises(ImageLoadError, match="megapixel limit"):  # refused before decoding
        policy.load_upload(_png(101, 100))
    with pytest.raises(PolicyError, match="101x100"):
        policy.check_image_pixels(101, 100)
    assert policy.image_limits() == {"max_pixels": 10_000}


def test_only_the_presets_models(demo):
    policy = PublicPolicy(enabled=True, allowed_models=frozenset(demo.models))
    policy.check_models(["demo-gemma", "demo-llava"])
    with pytest.raises(PolicyError, match=r"only runs the preset's models.*llava-med"):
        policy.check_models(["demo-gemma", "llava-med"])
    assert policy.visible_models(["llava", "demo-gemma", "gpt-5"]) == ["demo-gemma"]
    with pytest.raises(PolicyError, match="none"):
        PublicPolicy(enabled=True).check_models(["demo-gemma"])


def test_sweeps_over_the_item_limit_are_refused():
    policy = PublicPolicy(enabled=True, max_sweep_items=100)
    policy.check_sweep(100)
    policy.check_sweep(list(range(100)))
    with pytest.raises(PolicyError, match=r"101 answers.*at most 100"):
        policy.check_sweep(101)
    with pytest.raises(PolicyError, match="1,536 answers"):
        policy.check_sweep([None] * 1536)


def test_no_server_paths_and_no_custom_endpoints():
    policy = PublicPolicy(enabled=True)
    for path in ("/etc/passwd", "../shared/samples", "runs/explorer.sqlite"):
        with pytest.raises(PolicyError, match="does not read files from the server"):
            policy.check_server_path(path)
    policy.check_server_path(None)
    policy.check_server_path("   ")
    with pytest.raises(PolicyError, match="custom model endpoints"):
        policy.check_endpoints({"demo-gemma": {"base_url": "http://attacker.example/v1", "model": "m"}})
    policy.check_endpoints({})
    policy.check_endpoints(None)


def test_messages_name_no_internals():
    policy = PublicPolicy(enabled=True, max_upload_bytes=10, max_sweep_items=1)
    messages = []
    for check in (
        lambda: policy.check_upload(b"x" * 11),
        lambda: policy.check_sweep(2),
        lambda: policy.check_server_path("/srv/data"),
        lambda: policy.check_models(["x"]),
    ):
        with pytest.raises(PolicyError) as info:
            check()
        messages.append(str(info.value))
    assert all("Traceback" not in m and "/srv/data" not in m and m.endswith(".") for m in messages)
    assert isinstance(PolicyError("x"), ValueError)  # the UI's ValueError handler shows it
