"""The pieces of server-side preprocessing on their own: BYTES wire format, front configs, decoders, warm-up.

No server here; these call the same functions the server calls, with real images encoded by Pillow.
"""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from google.protobuf import text_format
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from tritonclient.grpc import model_config_pb2 as mc
from tritonclient.utils import deserialize_bytes_tensor, serialize_byte_tensor

from ipsbench.server import datatypes
from ipsbench.server.backends.registry import resolve_backend_name
from ipsbench.server.loader import warmup_batches
from ipsbench.server.model_spec import ConfigError, ModelSpec
from ipsbench.server.preprocess.decode import DecodeLimits, ImageDecodeError, ImageTooLargeError, decode_rgb
from ipsbench.server.preprocess.recipe import Recipe, RecipeError, read_parameters
from ipsbench.server.preprocess.stage import Preprocessor
from ipsbench.server.preprocess.decode import default_decoder
from ipsbench.server.preprocess.transform import center_crop_resized

LIMITS = DecodeLimits(max_pixels=40_000_000, max_bytes=10 * 1024 * 1024)


# -- BYTES tensors ------------------------------------------------------------------------------------------------


@settings(max_examples=60, deadline=None, derandomize=True)
@given(st.lists(st.binary(max_size=40), max_size=12))
def test_bytes_elements_round_trip_with_tritons_serializer(elements):
    raw = serialize_byte_tensor(datatypes.object_array(elements)).item() if elements else b""
    assert raw == datatypes.join_bytes_elements(elements)
    split = datatypes.split_bytes_elements(raw, len(elements))
    assert split.dtype == object and list(split) == elements
    if elements:
        assert list(deserialize_bytes_tensor(raw)) == elements


def test_trailing_nul_bytes_of_elements_are_kept():
    elements = [b"\xff\xd9\x00", b"ab\x00", b"\x00"]
    assert list(datatypes.split_bytes_elements(datatypes.join_bytes_elements(elements), 3)) == elements


@settings(max_examples=150, deadline=None, derandomize=True)
@given(st.binary(max_size=64), st.integers(min_value=0, max_value=1 << 40))
def test_arbitrary_bytes_either_split_exactly_or_raise_the_format_error(raw, count):
    """Never an over-read, an IndexError or a huge allocation: a count of 2**40 over a few bytes fails fast."""
    try:
        elements = datatypes.split_bytes_elements(raw, count)
    except datatypes.BytesFormatError as exc:
        assert exc.problem in (
            datatypes.COUNT_PROBLEM,
            "incomplete string length indicator",
            "incomplete string",
            "trailing bytes",
        )
        return
    assert len(elements) == count
    assert datatypes.join_bytes_elements(list(elements)) == raw


def test_bytes_is_the_protocol_name_of_type_string():
    assert datatypes.BY_CONFIG[mc.TYPE_STRING].protocol == "BYTES"
    assert datatypes.BY_PROTOCOL["BYTES"].is_bytes and not datatypes.BY_PROTOCOL["FP32"].is_bytes


# -- front configs ------------------------------------------------------------------------------------------------


def front_config(kind: str = "jpeg", extra: dict[str, str] | None = None, image_input: str | None = None) -> str:
    params = {
        "ipsbench.preprocess": kind,
        "ipsbench.preprocess.engine_input": "input",
        "ipsbench.preprocess.resize": "256",
        "ipsbench.preprocess.crop": "224",
        **(extra or {}),
    }
    if image_input is None:
        image_input = (
            'name: "image" data_type: TYPE_STRING dims: [1]'
            if kind == "jpeg"
            else 'name: "image" data_type: TYPE_UINT8 dims: [224, 224, 3]'
        )
    text = (
        f'name: "m_{kind}" backend: "onnxruntime" max_batch_size: 4\n'
        f"input [{{ {image_input} }}]\n"
        'output [{ name: "output" data_type: TYPE_FP32 dims: [10] }]\n'
    )
    text += "".join(f'parameters {{ key: "{k}" value {{ string_value: "{v}" }} }}\n' for k, v in params.items())
    return text


def spec_from(text: str) -> ModelSpec:
    config = mc.ModelConfig()
    text_format.Parse(text, config)
    backend = resolve_backend_name(config.backend, config.platform)
    return ModelSpec.from_config(config, backend.name, backend.platform)


def test_front_spec_separates_client_input_from_engine_input():
    spec = spec_from(front_config("jpeg", {"ipsbench.preprocess.engine_datatype": "FP16"}))
    assert list(spec.inputs) == ["image"] and spec.inputs["image"].datatype.protocol == "BYTES"
    engine = spec.engine_spec()
    assert list(engine.inputs) == ["input"] and engine.preprocess is None
    tensor = engine.inputs["input"]
    assert (tensor.datatype.protocol, tensor.dims, tensor.full_dims_text) == ("FP16", (3, 224, 224), "[-1,3,224,224]")
    front = spec.preprocess
    recipe = front.recipe
    assert (recipe.resize, recipe.crop, recipe.mean, front.max_pixels) == (256, 224, (0.485, 0.456, 0.406), 40_000_000)


def test_plain_model_has_no_front_and_is_its_own_engine_spec():
    text = front_config().split("parameters")[0].replace("TYPE_STRING dims: [1]", "TYPE_FP32 dims: [3, 8, 8]")
    spec = spec_from(text)
    assert spec.preprocess is None and spec.engine_spec() is spec


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (front_config("png"), "'ipsbench.preprocess' must be one of jpeg, uint8, got 'png'"),
        (front_config(extra={"ipsbench.preprocess.crop": "abc"}), "'ipsbench.preprocess.crop' must be an integer"),
        (front_config(extra={"ipsbench.preprocess.resize": "0"}), "'ipsbench.preprocess.resize' must be > 0"),
        (front_config(extra={"ipsbench.preprocess.resize": "200"}), "(200) must be >= 'ipsbench.preprocess.crop'"),
        (front_config(extra={"ipsbench.preprocess.mean": "0.5,0.5"}), "'ipsbench.preprocess.mean' must be three"),
        (front_config(extra={"ipsbench.preprocess.std": "1,0,1"}), "'ipsbench.preprocess.std' values must be > 0"),
        (front_config(extra={"ipsbench.preprocess.engine_input": ""}), "'ipsbench.preprocess.engine_input'"),
        (front_config(extra={"ipsbench.preprocess.engine_datatype": "INT8"}), "must be FP32 or FP16"),
        (front_config(extra={"ipsbench.preprocess.max_pixels": "-5"}), "max_pixels' must be > 0"),
        (front_config(extra={"ipsbench.preprocess.cropp": "224"}), "unknown preprocessing parameter(s)"),
        (front_config(extra={"ipsbench.preprocess.channel_order": "grb"}),
         "parameter 'ipsbench.preprocess.channel_order' must be one of rgb, bgr, got 'grb'"),
        (front_config("uint8", image_input='name: "image" data_type: TYPE_UINT8 dims: [3, 224, 224]'),
         "input 'image' of a uint8 front must be TYPE_UINT8 with dims [224,224,3], got TYPE_UINT8 [3,224,224]"),
        (front_config("jpeg", image_input='name: "image" data_type: TYPE_UINT8 dims: [1]'),
         "must be TYPE_STRING with dims [1]"),
        (front_config().replace("max_batch_size: 4", "max_batch_size: 0"), "needs max_batch_size > 0"),
        (front_config().replace('parameters { key: "ipsbench.preprocess" value { string_value: "jpeg" } }\n', ""),
         "need 'ipsbench.preprocess'"),
    ],
)
def test_bad_front_parameters_are_config_errors_with_a_clear_message(text, message):
    with pytest.raises(ConfigError) as caught:
        spec_from(text)
    assert message in str(caught.value)


def test_channel_order_is_rgb_unless_stated_and_round_trips_through_the_config():
    assert spec_from(front_config()).preprocess.recipe.channel_order == "rgb"
    stated = spec_from(front_config(extra={"ipsbench.preprocess.channel_order": " BGR "}))
    assert stated.preprocess.recipe.channel_order == "bgr"
    bgr = Recipe(32, 36, (0.4, 0.45, 0.5), (0.25, 0.2, 0.22), channel_order="bgr")
    assert read_parameters(bgr.parameters())[0] == bgr and "channels BGR" in bgr.describe()
    # The default is not written: configs exported before the key existed read back unchanged.
    assert "ipsbench.preprocess.channel_order" not in Recipe(32, 36).parameters()
    with pytest.raises(RecipeError, match="channel_order must be one of rgb, bgr, got 'rbg'"):
        Recipe(32, 36, channel_order="rbg")


def test_bgr_puts_blue_first_and_normalizes_each_channel_with_its_own_mean_and_std():
    """With ``bgr`` the engine's channel 0 is the image's blue plane, normalized by the first mean and std (the
    order Caffe states them in), on the uint8 and the jpeg fronts alike."""
    mean, std = (0.1, 0.2, 0.3), (0.5, 0.25, 0.125)
    extra = {"ipsbench.preprocess.mean": "0.1,0.2,0.3", "ipsbench.preprocess.std": "0.5,0.25,0.125",
             "ipsbench.preprocess.channel_order": "bgr"}
    pixels = np.random.default_rng(3).integers(0, 256, (2, 224, 224, 3), dtype=np.uint8)
    out = Preprocessor(spec_from(front_config("uint8", extra)).preprocess).run(pixels)
    bgr = pixels[..., ::-1].transpose(0, 3, 1, 2) / 255.0
    expected = (bgr - np.reshape(mean, (1, 3, 1, 1))) / np.reshape(std, (1, 3, 1, 1))
    np.testing.assert_allclose(out, expected, atol=1e-4)

    # A 256x256 PNG is already at the resize: the front's crop is its centre, pixel for pixel.
    full = np.pad(pixels[0], ((16, 16), (16, 16), (0, 0)))
    jpeg_front = Preprocessor(spec_from(front_config("jpeg", extra)).preprocess)
    served = jpeg_front.run(np.array([[encoded(Image.fromarray(full), "PNG")]], dtype=object))
    np.testing.assert_allclose(served[0], expected[0], atol=1e-4)


def test_front_warm_up_feeds_the_engine_a_preprocessed_image():
    for kind in ("jpeg", "uint8"):
        spec = spec_from(front_config(kind))
        ((batch, arrays, count),) = warmup_batches(spec)
        assert (batch, count, list(arrays)) == (4, 1, ["input"])
        assert arrays["input"].shape == (4, 3, 224, 224) and arrays["input"].dtype == np.float32
        assert np.isfinite(arrays["input"]).all() and arrays["input"].std() > 0.1
    warm = front_config() + "model_warmup [{ name: \"w\" batch_size: 2 count: 3 inputs { key: \"image\" " \
                            "value { data_type: TYPE_STRING dims: [1] zero_data: true } } }]\n"
    ((batch, arrays, count),) = warmup_batches(spec_from(warm))
    assert (batch, count, arrays["input"].shape) == (2, 3, (2, 3, 224, 224))


# -- decoding -----------------------------------------------------------------------------------------------------


def smooth_image(width: int, height: int, mode: str = "RGB") -> Image.Image:
    x = np.linspace(0, 255, width)[None, :]
    y = np.linspace(0, 255, height)[:, None]
    rgb = np.stack([x + 0 * y, y + 0 * x, (x + y) / 2], axis=-1).astype(np.uint8)
    return Image.fromarray(rgb, "RGB").convert(mode)


def encoded(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def crop_of(data: bytes, decoder: str | None = None, resize: int = 256, crop: int = 224) -> np.ndarray:
    decoded = decode_rgb(data, LIMITS, resize, decoder)
    return np.asarray(center_crop_resized(decoded.image, resize, crop, decoded.original_size), dtype=np.float32)


def test_simplejpeg_is_the_default_and_agrees_with_pillow():
    assert default_decoder() == "simplejpeg"
    data = encoded(smooth_image(500, 375), "JPEG", quality=90)
    fast, pillow = crop_of(data, "simplejpeg"), crop_of(data, "pillow")
    assert fast.shape == pillow.shape == (224, 224, 3)
    assert np.abs(fast - pillow).mean() < 1.0


def test_jpeg_is_downscaled_while_decoding_but_not_below_the_resize_target():
    data = encoded(smooth_image(2000, 1500), "JPEG", quality=90)
    for decoder in ("simplejpeg", "pillow"):
        decoded = decode_rgb(data, LIMITS, 256, decoder)
        assert decoded.original_size == (2000, 1500)
        assert decoded.image.height < 1500 / 2 and decoded.image.height >= 256


@pytest.mark.parametrize(
    "mode,fmt,options",
    [("L", "JPEG", {}), ("CMYK", "JPEG", {}), ("RGBA", "PNG", {}), ("P", "PNG", {}), ("L", "PNG", {}),
     ("I;16", "PNG", {}), ("RGB", "JPEG", {"progressive": True}), ("RGB", "JPEG", {"subsampling": 0})],
)
def test_other_colour_modes_decode_to_rgb(mode, fmt, options):
    image = smooth_image(300, 200, mode)
    pixels = crop_of(encoded(image, fmt, **options), resize=128, crop=112)
    assert pixels.shape == (112, 112, 3)
    assert pixels.max() > 100  # not a black image from a mis-decoded colour space


@pytest.mark.parametrize("decoder", ["simplejpeg", "pillow"])
def test_truncated_and_foreign_data_raise_decode_errors(decoder):
    jpeg = encoded(smooth_image(320, 240), "JPEG", quality=90)
    png = encoded(smooth_image(320, 240), "PNG")
    for bad in (jpeg[: len(jpeg) // 2], png[: len(png) // 2], b"\xff\xd8\xff" + bytes(50), b"GIF89a...", b"",
                b"\x89PNG\r\n\x1a\n" + bytes(30)):
        with pytest.raises(ImageDecodeError):
            decode_rgb(bad, LIMITS, 256, decoder)


@pytest.mark.parametrize("decoder", ["simplejpeg", "pillow"])
def test_pixel_and_byte_limits_are_checked_before_decoding(decoder):
    jpeg = encoded(smooth_image(400, 300), "JPEG", quality=90)
    with pytest.raises(ImageTooLargeError, match="decompression bomb"):
        decode_rgb(jpeg, DecodeLimits(max_pixels=400 * 300 - 1, max_bytes=1 << 20), None, decoder)
    with pytest.raises(ImageTooLargeError, match="over the limit of 100 bytes"):
        decode_rgb(jpeg, DecodeLimits(max_pixels=1 << 30, max_bytes=100), None, decoder)
    assert decode_rgb(jpeg, DecodeLimits(max_pixels=400 * 300, max_bytes=len(jpeg)), None, decoder).image.size == (
        400,
        300,
    )


def test_header_claiming_a_huge_size_is_refused_without_allocating_it():
    import tracemalloc

    data = bytearray(encoded(smooth_image(64, 48), "JPEG"))
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", 60000, 60000)
    png = bytearray(encoded(smooth_image(64, 48), "PNG"))
    png[16:24] = struct.pack(">II", 50000, 50000)  # IHDR width and height, then the chunk's CRC to match
    png[29:33] = struct.pack(">I", zlib.crc32(bytes(png[12:29])) & 0xFFFFFFFF)
    tracemalloc.start()
    try:
        for bad in (bytes(data), bytes(png)):
            with pytest.raises(ImageTooLargeError, match="decompression bomb"):
                decode_rgb(bad, LIMITS, 256)
        assert tracemalloc.get_traced_memory()[1] < 10 * 1024 * 1024
    finally:
        tracemalloc.stop()


def test_preprocessor_writes_nchw_normalized_rows_in_the_engine_dtype():
    spec = spec_from(front_config("uint8", {"ipsbench.preprocess.engine_datatype": "FP16",
                                            "ipsbench.preprocess.mean": "0,0,0", "ipsbench.preprocess.std": "1,1,1"}))
    pixels = np.random.default_rng(0).integers(0, 256, (2, 224, 224, 3), dtype=np.uint8)
    out = Preprocessor(spec.preprocess).run(pixels)
    assert out.dtype == np.float16 and out.shape == (2, 3, 224, 224)
    np.testing.assert_allclose(out.astype(np.float32), pixels.transpose(0, 3, 1, 2) / 255.0, atol=1e-3)
