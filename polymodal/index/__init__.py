"""Persistent image index: embed a folder once, update incrementally, search by text or image."""

from polymodal.index.scan import ImageFile, scan_images
from polymodal.index.store import Hit, ImageIndex, IndexBusy, UpdateReport

__all__ = ["Hit", "ImageFile", "ImageIndex", "IndexBusy", "UpdateReport", "scan_images"]
