"""Reading an ONNX file with errors a user can act on; shared by the export stage and the ONNX Runtime backend.

``onnx`` is imported inside the functions. The device agent does not ship this file: there, the ONNX
Runtime backend does without the check (it imports this module inside a ``try``).
"""

from __future__ import annotations

from pathlib import Path

from .errors import ExportError


def read_metadata(path: Path) -> dict[str, str]:
    model = load_onnx(path, load_weights=False)
    return {p.key: p.value for p in model.metadata_props}


def load_onnx(path: Path, *, load_weights: bool = True):
    """``onnx.load`` with an error a user can act on for a missing, truncated or foreign file."""
    import onnx

    path = Path(path)
    if not path.is_file():
        raise ExportError(f"ONNX file {str(path)!r} does not exist. Pass the .onnx written by `bckd-pipeline run`.")
    try:
        model = onnx.load(str(path), load_external_data=load_weights)
    except Exception as exc:  # noqa: BLE001 - protobuf raises several types for the same problem
        raise ExportError(
            f"Could not read {str(path)!r} as ONNX ({type(exc).__name__}: {str(exc)[:160]}). The file is truncated, "
            "corrupt, or not an ONNX model; re-export it (delete it and rerun `bckd-pipeline run`)."
        ) from None
    if not model.graph.node:
        raise ExportError(
            f"{str(path)!r} parsed as ONNX but holds no graph nodes; it is truncated or empty. Re-export."
        )
    return model
