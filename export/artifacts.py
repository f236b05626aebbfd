"""Writing artifacts safely and carrying metadata with them.

Everything is built in a staging folder under `$TMPDIR` and moved into place with `os.replace` only when
complete (all files of one command together), so an interrupted or failed run never leaves a half-written
model or sidecar, nor an FP32 model without its int8 sibling, in `--out`.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from export.errors import DISK_FULL, ToolkitError, one_line, raise_if_signalled, write_error

if TYPE_CHECKING:
    import onnx


@contextlib.contextmanager
def staging_dir(out_dir: Path | None = None) -> Iterator[Path]:
    """A private folder under `$TMPDIR`, removed on exit whether the run succeeded, failed or was interrupted.

    Every intermediate file lives here, never in `--out`. A full `$TMPDIR` is the user's one-line error.
    """
    try:
        stage = Path(tempfile.mkdtemp(prefix=".googlenet-stage-"))
    except OSError as exc:
        raise write_error(exc, Path(tempfile.gettempdir()) / ".googlenet-stage") from None
    try:
        yield stage
    except OSError as exc:
        if exc.errno in DISK_FULL:  # the model files themselves are written here first
            raise ToolkitError(
                "no space left on device writing temporary files (point TMPDIR at a larger disk)", stage.parent
            ) from None
        raise
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def check_out_dir(out: Path) -> None:
    """Fail now, before minutes of work, when `--out` is a file or cannot be written to.

    Probes by creating (and removing) an empty file in `--out` or its nearest existing ancestor, which
    also catches read-only mounts that permission bits do not show (root ignores those).
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ToolkitError("--out is not a folder", out)
    existing = out.absolute()
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise ToolkitError("--out lies under a file, not a folder", existing)
    try:
        fd, probe = tempfile.mkstemp(dir=existing, prefix=".googlenet-probe-")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise ToolkitError(f"--out is not writable ({exc.strerror or one_line(exc)})", out) from None


def publish(files: dict[Path, Path]) -> None:
    """Move staged files (staged path -> final path) into place as one set.

    All files are first copied beside their targets under temporary dot-names (staging may sit on
    another filesystem); only when every copy succeeded are they renamed into place. A failure or an
    interrupt while copying removes the copies, so `--out` keeps its earlier files whole and gets no
    partial ones; the final folder is created only now (and removed again if the copy fails).
    """
    created: list[Path] = []
    copied: dict[Path, Path] = {}
    try:
        for staged, final in files.items():
            try:
                missing = [p for p in (final.parent, *final.parent.parents) if not p.exists()]
                final.parent.mkdir(parents=True, exist_ok=True)
                created += reversed(missing)
                tmp = final.with_name(f".{final.name}.tmp")
                copied[tmp] = final
                shutil.copyfile(staged, tmp)
            except OSError as exc:
                raise write_error(exc, final) from None
        raise_if_signalled()  # an interrupt a library swallowed on the way here still publishes nothing
        for tmp, final in list(copied.items()):
            os.replace(tmp, final)
            del copied[tmp]
    except BaseException:
        for tmp in copied:
            tmp.unlink(missing_ok=True)
        for folder in reversed(created):
            with contextlib.suppress(OSError):
                folder.rmdir()  # only if still empty
        raise


def write_json(path: Path, data: object) -> None:
    """Stable JSON (sorted keys, fixed indentation), written beside the target and renamed into place,
    so a crash never leaves half a file; an unwritable place is the user's one-line error."""
    path = Path(path)
    text = json.dumps(data, indent=2, sort_keys=True, allow_nan=False) + "\n"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        raise write_error(exc, path) from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp's 0600 would hide the file from other users
        raise_if_signalled()
        os.replace(tmp, path)
    except OSError as exc:
        raise write_error(exc, path) from None
    finally:
        Path(tmp).unlink(missing_ok=True)


def read_json(path: Path) -> dict:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ToolkitError(f"cannot read JSON ({one_line(exc)})", path) from None


def sidecar_path(artifact: Path) -> Path:
    """`googlenet.onnx` -> `googlenet.onnx.json`."""
    return artifact.with_name(artifact.name + ".json")


def set_onnx_metadata(model: onnx.ModelProto, values: dict[str, object], replace_all: bool = False) -> None:
    """Set `metadata_props` entries (all of them with `replace_all`); non-strings are stored as JSON."""
    keep = [] if replace_all else [p for p in model.metadata_props if p.key not in values]
    del model.metadata_props[:]
    model.metadata_props.extend(keep)
    for key, value in values.items():
        text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
        model.metadata_props.add(key=key, value=text)


def read_onnx_metadata(path: Path) -> dict[str, str]:
    """`metadata_props` of an ONNX file without loading its weights."""
    import onnx  # here, not at the top: JSON-only commands (gate, compare) import this module too

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:
        raise ToolkitError(f"not a readable ONNX model ({one_line(exc)})", path) from None
    return {p.key: p.value for p in model.metadata_props}


def read_onnx_info(path: Path) -> dict:
    """The toolkit's metadata of an ONNX file, its JSON values (labels, preprocessing) decoded."""
    meta = read_onnx_metadata(path)
    return {k: json.loads(v) if k in ("labels", "preprocess") else v for k, v in meta.items()}


TFLITE_METADATA_NAME = "googlenet_edge"
# Which network and weights an artifact is, and what it costs: every artifact carries these, whatever its format.
MODEL_IDENTITY_KEYS = ("arch", "num_classes", "weights", "weights_format", "weights_sha256", "params", "macs")


def set_tflite_metadata(path: Path, values: dict[str, object]) -> None:
    """Embed `values` as one JSON entry of the flatbuffer's `metadata` (name `googlenet_edge`), in place.

    Uses only ai-edge-litert's flatbuffer tools; interpreters ignore metadata names they do not know.
    """
    import numpy as np
    from ai_edge_litert import schema_py_generated as schema
    from ai_edge_litert.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model(str(path))
    payload = json.dumps(values, sort_keys=True, allow_nan=False).encode("utf-8")
    buffer = schema.BufferT()
    buffer.data = np.frombuffer(payload, dtype=np.uint8)
    model.buffers.append(buffer)
    entry = schema.MetadataT()
    entry.name = TFLITE_METADATA_NAME.encode()
    entry.buffer = len(model.buffers) - 1
    model.metadata = [m for m in (model.metadata or []) if m.name != entry.name] + [entry]
    tmp = path.with_name(f".{path.name}.tmp")
    flatbuffer_utils.write_model(model, str(tmp))
    os.replace(tmp, path)


def read_tflite_metadata(path: Path) -> dict:
    """The toolkit's JSON metadata of a `.tflite` file ({} when it has none)."""
    from ai_edge_litert.tools import flatbuffer_utils

    try:
        model = flatbuffer_utils.read_model(str(path))
    except Exception as exc:
        raise ToolkitError(f"not a readable TFLite model ({one_line(exc)})", path) from None
    for entry in model.metadata or []:
        name = entry.name.decode() if isinstance(entry.name, bytes) else entry.name
        if name == TFLITE_METADATA_NAME:
            return json.loads(bytes(model.buffers[entry.buffer].data).decode("utf-8"))
    return {}
