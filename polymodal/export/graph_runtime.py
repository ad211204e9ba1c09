"""The part of loading an export whose graphs runtime.GRAPHS names (a captioner's prefix and step, a VQA model's grid,
question and head; not an embedding export, whose config names its towers' files) that does not depend on which
model it is: its config, name@version key, image transform and graph files."""

from __future__ import annotations

from pathlib import Path

from polymodal.export.runtime import ReloadsFromFolder, export_transform, graph_files, graph_variants, read_export_config


class GraphExport(ReloadsFromFolder):
    def __init__(self, folder: Path, threads: int | None) -> None:
        self._reload = (str(folder), threads)
        self.config = config = read_export_config(folder)
        self.name, self.version = config["name"], config["version"]
        self.transform = export_transform(folder, config)
        self.files = graph_files(config)

    @property
    def key(self) -> str:
        return f"{self.name}@{self.version}"

    @property
    def variants(self) -> dict[str, str]:
        """The variant each graph runs, e.g. {"prefix": "fp32", "step": "int8_dynamic"}: int8 writes other captions
        and gives other answers than fp32."""
        return graph_variants(self.files)
