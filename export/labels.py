"""Class names and ground-truth labels: ImageNet wnids (file-name prefix) or class sub-folders."""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from export import paths
from export.errors import ToolkitError

WNID_PATTERN = re.compile(r"^(n\d{8})")


@dataclass(frozen=True)
class LabelSet:
    """Class names in index order, plus the ImageNet wnid of each class when known."""

    names: tuple[str, ...]
    wnids: tuple[str, ...] | None = None

    def __len__(self) -> int:
        return len(self.names)

    @cached_property
    def wnid_index(self) -> dict[str, int]:
        return {w: i for i, w in enumerate(self.wnids or ())}

    def to_dict(self) -> dict:
        return {"names": list(self.names), "wnids": list(self.wnids) if self.wnids else None}

    @classmethod
    def from_dict(cls, data: dict) -> LabelSet:
        return cls(tuple(data["names"]), tuple(data["wnids"]) if data.get("wnids") else None)


def read_label_file(path: str | Path) -> LabelSet:
    """`synset_words.txt` lines (`<wnid> <names>`) or one plain class name per line."""
    path = Path(path)
    try:
        lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as exc:
        raise ToolkitError(f"cannot read label file ({exc.__class__.__name__})", path) from None
    if not lines:
        raise ToolkitError("label file is empty", path)
    if all(WNID_PATTERN.match(line) for line in lines):
        wnids = tuple(line.split(maxsplit=1)[0] for line in lines)
        names = tuple(_first_name(line) for line in lines)
        return LabelSet(names, wnids)
    return LabelSet(tuple(lines))


def _first_name(line: str) -> str:
    """`n01440764 tench, Tinca tinca` -> `tench`."""
    wnid, _, names = line.partition(" ")
    return names.split(",")[0].strip() or wnid


def imagenet_labels() -> LabelSet | None:
    """The 1000 ImageNet classes in Caffe/torchvision order, from the shared synset list if present."""
    source = paths.synset_words()
    return read_label_file(source) if source else None


def generic_labels(num_classes: int) -> LabelSet:
    return LabelSet(tuple(f"class_{i}" for i in range(num_classes)))


def label_for_image(path: Path, root: Path, labels: LabelSet | None) -> int | None:
    """Ground truth for an evaluation image: its wnid file-name prefix, else its class sub-folder."""
    if labels is None:
        return None
    match = WNID_PATTERN.match(path.name)
    if match and labels.wnids:
        index = labels.wnid_index.get(match.group(1))
        if index is not None:
            return index
    relative = path.relative_to(root)
    if len(relative.parts) >= 2:
        folder = relative.parts[0]
        if folder in labels.wnid_index:
            return labels.wnid_index[folder]
        if folder in labels.names:
            return labels.names.index(folder)
        if folder.isdigit() and int(folder) < len(labels):
            return int(folder)
    return None
