"""Small JPEG thumbnails inlined as data: URLs, for pictures of results that must stand alone (a notebook's hit
list, an evaluation's --page): no server to fetch them from, no link to a file that may move."""

from __future__ import annotations

import base64
import io

from polymodal.data.images import open_image, to_rgb

THUMB_PX = 128


def thumbnail_url(image, px: int = THUMB_PX) -> str:
    """A data: URL of ``image``'s JPEG thumbnail (a path, a "<shard>#<member>" or "<parquet>#<row>" reference, or
    encoded bytes), or why there is none."""
    from polymodal.data.shards import image_bytes, split_tar_ref

    try:
        source = io.BytesIO(image) if isinstance(image, bytes) else \
            io.BytesIO(image_bytes(image)) if split_tar_ref(image) is not None else image
        with open_image(source, px) as img:  # a 200 MP JPEG decodes at 1/8 scale, as it was indexed
            img.draft("RGB", (px, px))
            img = to_rgb(img)  # EXIF rotation, 16-bit, alpha on white: the pixels the model saw
            img.thumbnail((px, px))
            out = io.BytesIO()
            img.save(out, "JPEG", quality=80)
    except FileNotFoundError:
        return "file not found here"
    except Exception as exc:  # noqa: BLE001 - a picture of results must not fail on one bad file
        return f"unreadable ({exc.__class__.__name__})"
    return "data:image/jpeg;base64," + base64.b64encode(out.getvalue()).decode("ascii")


def thumbnail_urls(images, px: int = THUMB_PX) -> dict:
    """{image: thumbnail_url(image)} of each distinct image, a Parquet file's rows read in file and row order: a
    row group's photos are read together (in a page's order each photo could read its ~14 MB row group again)."""
    from polymodal.data.shards import split_tar_ref

    def where(image) -> tuple:
        split = split_tar_ref(image)
        return (str(split[0]), int(split[1]) if split[1].isdigit() else 0, split[1]) if split else (str(image), 0, "")

    return {image: thumbnail_url(image, px) for image in sorted(set(images), key=where)}
