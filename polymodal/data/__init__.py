"""Input processing: images, text."""
