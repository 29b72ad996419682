"""``python -m rdd3d_runtime --model DIR --points FILE``: detections of an exported model as JSON, with
neither torch nor rdd3d installed."""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Sequence

import numpy as np

from rdd3d_runtime.decode import Detections
from rdd3d_runtime.manifest import ManifestError
from rdd3d_runtime.model import ExportedModel, detections_json
from rdd3d_runtime.points import PointFileError, read_points


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m rdd3d_runtime",
                                     description="Run a model exported by `rdd3d export` on one point file.")
    parser.add_argument("--model", required=True, type=Path, help="folder written by `rdd3d export`")
    parser.add_argument("--points", required=True, type=Path, help=".bin (float32 rows) or .npy point file")
    parser.add_argument("--out", type=Path, help="detections JSON to write (default: print it)")
    parser.add_argument("--threads", type=int, help="onnxruntime intra-op threads (default: its own choice)")
    parser.add_argument("--int8", action="store_true",
                        help="run the INT8 copy of the dense part (written by `rdd3d export --int8`)")
    return parser


def prediction_json(model: ExportedModel, points_path: Path, points: np.ndarray, detections: Detections) -> dict:
    """What both ``python -m rdd3d_runtime`` and ``rdd3d predict`` write for one point file."""
    return {"model": str(model.folder), "preset": model.manifest.preset, "precision": model.precision,
            "points": str(points_path), "num_points": len(points),
            "detections": detections_json(detections, model.manifest)}


def _write_atomically(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            stream.write(text)
        os.replace(temporary, path)
    except BaseException:
        os.unlink(temporary)
        raise


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        model = ExportedModel(args.model, threads=args.threads, precision="int8" if args.int8 else "fp32")
        points = read_points(args.points, model.manifest.point_columns)
        result = prediction_json(model, args.points, points, model.predict(points))
    except (ManifestError, PointFileError, OSError, ValueError) as error:
        print(f"rdd3d_runtime: error: {error}", file=sys.stderr)
        return 1
    text = json.dumps(result, indent=2) + "\n"
    if args.out is None:
        sys.stdout.write(text)
    else:
        _write_atomically(args.out, text)
        print(f"wrote {len(result['detections'])} detections to {args.out}", file=sys.stderr)
    return 0
