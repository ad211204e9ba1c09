"""Image inputs that used to load wrongly: 16-bit, EXIF-rotated, transparent, extreme shapes, URLs."""

import io

import numpy as np
import pytest
from PIL import Image

from polymodal.data.images import ImageTransform, load_image
from polymodal.errors import PolymodalError
from polymodal.serve.limits import ApiError, open_image_checked


def red_square() -> np.ndarray:
    arr = np.full((40, 60, 3), 255, np.uint8)
    arr[10:30, 20:40] = (200, 30, 30)
    return arr


def png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def test_16_bit_images_scale_to_8_bits(tmp_path):
    grey8 = np.asarray(Image.fromarray(red_square()).convert("L"))
    grey16 = Image.fromarray(grey8.astype(np.uint16) * 257)  # mode I;16, as a 16-bit PNG gives
    grey16.save(tmp_path / "g16.png")
    expected = np.stack([grey8] * 3, -1)
    for source in (tmp_path / "g16.png", grey16, grey16.convert("I"), grey8.astype(np.uint16) * 257):
        np.testing.assert_array_equal(np.asarray(load_image(source)), expected)  # was all white
    rgb16 = red_square().astype(np.uint16) * 257  # HxWx3 uint16 array
    np.testing.assert_array_equal(np.asarray(load_image(rgb16)), red_square())
    np.testing.assert_array_equal(np.asarray(load_image(rgb16.transpose(2, 0, 1))), red_square())
    floats = Image.fromarray(grey8.astype(np.float32) / 255)  # mode F in [0, 1]
    assert np.abs(np.asarray(load_image(floats), int) - expected).max() <= 1
    served = open_image_checked(png_bytes(grey16), 10**6)
    np.testing.assert_array_equal(np.asarray(served), expected)


def test_exif_orientation_is_applied(tmp_path):
    img = Image.fromarray(red_square())  # 60 wide, 40 high
    exif = img.getexif()
    exif[0x0112] = 6  # stored sideways: viewers rotate it 90 degrees clockwise
    img.save(tmp_path / "phone.jpg", exif=exif.tobytes(), quality=95)
    data = (tmp_path / "phone.jpg").read_bytes()
    for loaded in (load_image(tmp_path / "phone.jpg"), load_image(data), open_image_checked(data, 10**6)):
        assert loaded.size == (40, 60)
        upright = np.asarray(loaded.transpose(Image.Transpose.ROTATE_90), int)  # undo the rotation
        assert np.abs(upright - red_square()).mean() < 3
    assert load_image(Image.fromarray(red_square())).size == (60, 40)  # no tag: untouched


def test_transparency_is_composited_on_white(tmp_path):
    rgba = np.zeros((8, 8, 4), np.uint8)  # fully transparent black ...
    rgba[2:6, 2:6] = (200, 30, 30, 255)  # ... around an opaque red square
    rgba[0, 0] = (0, 0, 0, 128)  # half-transparent black -> mid grey
    want = np.full((8, 8, 3), 255, np.uint8)
    want[2:6, 2:6] = (200, 30, 30)
    for source in (Image.fromarray(rgba), rgba, png_bytes(Image.fromarray(rgba))):
        got = np.asarray(load_image(source))
        assert abs(int(got[0, 0, 0]) - 127) <= 1
        got = got.copy()
        got[0, 0] = 255
        np.testing.assert_array_equal(got, want)
    la = Image.fromarray(rgba).convert("LA")
    assert np.asarray(load_image(la))[7, 7].tolist() == [255, 255, 255]
    pal = Image.fromarray(rgba[..., :3]).convert("P")
    pal.info["transparency"] = pal.getpixel((7, 7))  # the black background's palette index
    pal.save(tmp_path / "icon.gif")
    for source in (tmp_path / "icon.gif", pal):
        assert np.asarray(load_image(source))[7, 7].tolist() == [255, 255, 255]
    served = np.asarray(open_image_checked(png_bytes(Image.fromarray(rgba)), 10**6))
    assert served[7, 7].tolist() == [255, 255, 255] and served[3, 3].tolist() == [200, 30, 30]
    opaque = np.dstack([red_square(), np.full((40, 60), 255, np.uint8)])  # opaque RGBA: exactly its RGB
    np.testing.assert_array_equal(np.asarray(load_image(opaque)), red_square())


def test_extreme_aspect_ratios_stay_small():
    t = ImageTransform(resize=256, crop=224)  # crop_box=False, as for CLIP checkpoints
    strip = Image.new("RGB", (1, 900), "red")  # used to resize to 256x230400 first
    assert t.pil_crop(strip).size == (224, 224)
    wide = Image.fromarray(np.random.default_rng(0).integers(0, 256, (20, 3000, 3), dtype=np.uint8))
    assert t.pil_crop(wide).size == (224, 224)
    assert t([strip, wide]).shape == (2, 3, 224, 224)
    for bad in (Image.new("RGB", (1, 40000)), Image.new("RGB", (0, 5))):
        for transform in (t, ImageTransform(crop_box=True)):
            with pytest.raises(PolymodalError, match="aspect ratio"):
                transform([bad])


def test_normal_aspect_ratios_keep_exact_pixels():
    """Images up to 8:1 still resize whole then crop, exactly as CLIP's processors do."""
    rng = np.random.default_rng(1)
    t = ImageTransform(resize=32, crop=28)
    for w, h in ((50, 40), (30, 90), (200, 25)):
        img = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        nw, nh = (32, int(32 * h / w)) if w <= h else (int(32 * w / h), 32)
        left, top = (nw - 28) // 2, (nh - 28) // 2
        ref = img.resize((nw, nh), Image.BICUBIC).crop((left, top, left + 28, top + 28))
        np.testing.assert_array_equal(np.asarray(t.pil_crop(img)), np.asarray(ref))


def test_server_refuses_degenerate_strips():
    data = png_bytes(Image.new("RGB", (1, 5000)))  # 5000 pixels: far under the pixel limit
    with pytest.raises(ApiError, match="1x5000 pixels.*aspect ratio") as info:
        open_image_checked(data, 40_000_000, "strip.png")
    assert info.value.status == 400


def test_urls_are_refused_with_the_url_intact():
    with pytest.raises(PolymodalError, match="https://example.com/a.jpg is a URL.*download the file first"):
        load_image("https://example.com/a.jpg")


def test_16_bit_keeps_the_high_byte_not_the_low(tmp_path):
    # 0x12FF must become 0x12: samples whose two bytes are equal (v * 257) cannot tell high from low byte
    arr16 = np.full((4, 6), 0x12FF, np.uint16)
    arr16[1, 1] = 0xA001
    Image.fromarray(arr16).save(tmp_path / "g16.png")
    want = np.where(arr16 >> 8 == 0x12, 0x12, 0xA0).astype(np.uint8)
    for source in (tmp_path / "g16.png", arr16, np.dstack([arr16] * 3)):
        np.testing.assert_array_equal(np.asarray(load_image(source)), np.stack([want] * 3, -1))


def test_aspect_ratio_limit_is_inclusive():
    # "an aspect ratio within 1:1000": exactly 1:1000 is accepted, one pixel more is refused
    from polymodal.data.images import MAX_ASPECT, check_image_size

    check_image_size(1, MAX_ASPECT)
    check_image_size(3 * MAX_ASPECT, 3)
    assert ImageTransform(resize=32, crop=28).pil_crop(Image.new("RGB", (MAX_ASPECT, 1))).size == (28, 28)
    with pytest.raises(PolymodalError, match="aspect ratio"):
        check_image_size(1, MAX_ASPECT + 1)


def test_torch_tensors_are_read_as_pixel_arrays():
    torch = pytest.importorskip("torch")
    from polymodal.models.inputs import as_images

    chw = torch.zeros(3, 8, 8)
    chw[0] = 1.0  # red, floats in [0, 1] like a transforms.ToTensor() output
    (one,) = as_images(chw)  # one image, not 3 rows of a batch
    assert load_image(one).getpixel((4, 4)) == (255, 0, 0)
    batch = as_images(torch.stack([chw, chw.flip(0)]))  # [N, C, H, W] is a batch of N
    assert [load_image(im).getpixel((0, 0)) for im in batch] == [(255, 0, 0), (0, 0, 255)]
    assert load_image(torch.zeros(8, 8, 3, dtype=torch.bfloat16)).getpixel((0, 0)) == (0, 0, 0)


def test_32_bit_int_images_holding_8_bit_values_keep_them():
    # Image.fromarray(int32 array) is mode "I"; values up to 255 are 8-bit samples (was black: taken as 16-bit)
    grey8 = np.asarray(Image.fromarray(red_square()).convert("L"))
    img = Image.fromarray(grey8.astype(np.int32))
    assert img.mode == "I"
    np.testing.assert_array_equal(np.asarray(load_image(img)), np.stack([grey8] * 3, -1))


def test_readable_results_counts_names_the_source_and_refuses_none(caplog):
    import logging

    from polymodal.models.inputs import readable_results

    with caplog.at_level(logging.WARNING):
        assert readable_results([np.zeros(2), "x.jpg: not a readable image", np.ones(2)], "image", "p.jsonl") == [0, 2]
    assert "p.jsonl: left out 1 unreadable image (first: x.jpg: not a readable image)" in caplog.text
    with pytest.raises(PolymodalError, match=r"none of the 2 validation photos in p.jsonl could be read \(first: a\)"):
        readable_results(["a", "b"], "validation photo", "p.jsonl")
    with pytest.raises(PolymodalError, match="no images to read"):
        readable_results([], "image")
