"""``manifest.json``: what an exported model folder holds and how to feed and decode it.

The exporter (:mod:`rdd3d.export`) writes it from these dataclasses and the runtime reads it back through
them, so the format is defined once. A manifest of another ``format`` or ``format_version`` is refused
by name; every field is checked on reading, and an error names the file and the field.

Fields added within version 1 are optional (``anchor_decode``, ``int8``, ``decode.half_period_labels``): a
manifest written before them reads as one without them, and an older runtime ignores them (so an older
runtime decodes the yaw of a half-period class wrongly: run such a model with this version's runtime).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Optional, TypeVar

#: 17 is read by TensorRT 8.6+ and every current onnxruntime. Below 12 the graphs are invalid: opset 11's
#: Clip (the voxels' point counts clamped to 1) takes no int32.
DEFAULT_OPSET = 17
MIN_OPSET = 12
#: Synthetic frames that calibrate an INT8 export (``rdd3d export --int8``) by default.
DEFAULT_CALIBRATION_FRAMES = 32
FORMAT_NAME = "rdd3d-onnx"
FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"

#: What pre-processing hands the first file: the voxels of the frame (``rdd3d_runtime.voxelize.Voxels``);
#: the voxel family's rulebook inputs are named in :class:`RulebookSpec` and :class:`SparseSpec`.
VOXEL_INPUTS = ("voxel_features", "voxel_num_points", "voxel_coords")

FAMILIES = ("pillar", "voxel")
HEAD_KINDS = ("center", "anchor")
NMS_KINDS = ("rotated", "nearest_bev", "circle", "none")

Value = TypeVar("Value")


class ManifestError(ValueError):
    """A manifest that is missing, unreadable, of another format version, or with a wrong field."""


@dataclass(frozen=True)
class TensorSpec:
    """One input or output of an ONNX file; a string in ``shape`` names a dynamic axis."""

    name: str
    shape: tuple[int | str, ...]
    dtype: str  # numpy name: "float32", "int32", "int64"


@dataclass(frozen=True)
class GraphSpec:
    """One ONNX file. The files run in manifest order; an input is either made by pre-processing or is
    an output of an earlier file, by name."""

    file: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]


@dataclass(frozen=True)
class VoxelizationSpec:
    """rdd3d's voxelisation (``rdd3d.data.voxelize.Voxelizer`` at test time)."""

    point_cloud_range: tuple[float, float, float, float, float, float]  # x0 y0 z0 x1 y1 z1, metres
    voxel_size: tuple[float, float, float]  # x y z, metres; a pillar spans the whole z range
    grid_size: tuple[int, int, int]  # nx ny nz
    max_points_per_voxel: int
    max_voxels: int


@dataclass(frozen=True)
class RulebookSpec:
    """One sparse-convolution rulebook the runtime builds in pre-processing. It connects the sites of
    ``input_sites`` (0: the voxels) to those of ``output_sites``, on an input grid of ``spatial_shape``;
    the file reads it as ``<name>_neighbours`` ``(V_out, taps)`` int64: the input row each output site reads
    through each tap, ``V_in`` where it reads none."""

    name: str
    input_sites: int
    output_sites: int
    spatial_shape: tuple[int, int, int]  # z y x of the input grid
    kernel_size: tuple[int, int, int]
    stride: tuple[int, int, int]
    padding: tuple[int, int, int]
    subm: bool


@dataclass(frozen=True)
class SparseSpec:
    """Voxel family: the rulebooks of the sparse 3D backbone; site set ``s >= 1`` enters the file as
    ``sites<s>`` ``(V_s, 3)`` int32 (z, y, x)."""

    rulebooks: tuple[RulebookSpec, ...]


@dataclass(frozen=True)
class NMSSpec:
    kind: str  # one of NMS_KINDS
    iou_threshold: float
    pre_max_size: Optional[int]
    post_max_size: Optional[int]
    circle_distances: tuple[float, ...]  # squared metres, one per task (circle NMS)


@dataclass(frozen=True)
class TaskSpec:
    """One CenterPoint class group: its heatmap output and the outputs whose channels, concatenated in
    order, make its box code (centre offset, z, log sizes, cos/sin yaw[, velocity])."""

    labels: tuple[int, ...]  # class-table index of each heatmap channel
    heatmap: str
    box_code: tuple[str, ...]


@dataclass(frozen=True)
class CenterDecodeSpec:
    """rdd3d's ``DecodeConfig`` and the output map's place in metres."""

    tasks: tuple[TaskSpec, ...]
    map_origin: tuple[float, float]  # x, y of the map's corner, metres
    cell_size: tuple[float, float]  # metres per output cell along x, y
    log_size_range: tuple[float, float]  # predicted log sizes are clamped to it before exp
    max_per_task: int
    score_threshold: float  # scores strictly above are kept
    post_center_range: Optional[tuple[float, float, float, float, float, float]]
    nms: NMSSpec
    max_per_sample: Optional[int]
    # Class-table indices whose yaw is coded modulo π, as (cos 2 yaw, sin 2 yaw) (CenterHeadConfig's
    # half_period_classes); added within version 1, so a manifest without it codes every yaw over the full circle.
    half_period_labels: tuple[int, ...] = ()


@dataclass(frozen=True)
class AnchorDecodeSpec:
    """rdd3d's ``AnchorHead.decode`` (SECOND, PointPillars): anchors on the output map, box deltas turned
    into boxes, the direction classifier's bin, the score filter and the NMS."""

    cls_logits: str  # output names of the head's maps, channels anchor-major (type a: a * D .. a * D + D - 1)
    box_deltas: str
    dir_logits: Optional[str]  # None: no direction classifier
    anchor_types: tuple[tuple[float, float, float, float, float], ...]  # z dx dy dz yaw of each type, in order
    anchor_range: tuple[float, float, float, float]  # x0 y0 x1 y1 the anchor positions span, metres
    align_center: bool  # anchors at cell centres; False: the first and last anchors on the range's edges
    log_size_range: tuple[float, float]  # predicted log size ratios are clamped to it before exp
    dir_offset: float
    dir_limit_offset: float
    num_dir_bins: int
    score_threshold: float  # scores strictly above are kept
    class_agnostic_nms: bool  # True: each anchor keeps its best class, one NMS; False: one NMS per class
    nms: NMSSpec  # circle_distances: one value (class-agnostic) or one per class


@dataclass(frozen=True)
class Int8Spec:
    """INT8 copies of the dense part written beside the fp32 files (onnxruntime's static quantisation)."""

    files: dict[str, str]  # fp32 file -> its INT8 copy, which has the same inputs and outputs
    calibration_frames: int  # synthetic frames the activation ranges were measured on
    quant_format: str  # "QDQ"
    activation_type: str  # "uint8" or "int8"
    weight_type: str  # "int8"
    per_channel: bool  # one weight scale per output channel
    outputs_quantized: bool  # whether the nodes that write the file's outputs (the head's maps) are INT8 too
    quantized_nodes: int  # nodes of the dense part given INT8 inputs
    difference: dict[str, float]  # per head output, largest |INT8 - fp32| on the export's check frame


@dataclass(frozen=True)
class Manifest:
    format: str
    format_version: int
    rdd3d_version: str
    opset: int
    preset: str
    dataset: str
    family: str  # one of FAMILIES
    head: str  # one of HEAD_KINDS
    point_columns: tuple[str, ...]
    classes: tuple[str, ...]
    voxelization: VoxelizationSpec
    sparse: Optional[SparseSpec]
    decode: Optional[CenterDecodeSpec]  # center heads
    graphs: tuple[GraphSpec, ...]
    verification: dict[str, float]  # output name -> max abs difference to PyTorch at export
    anchor_decode: Optional[AnchorDecodeSpec] = None  # anchor heads
    int8: Optional[Int8Spec] = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def read_manifest(folder: str | Path) -> Manifest:
    """The manifest of an exported model folder, every field checked."""
    path = Path(folder) / MANIFEST_NAME
    if not path.is_file():
        raise ManifestError(f"{path}: not found; export a model with `rdd3d export --checkpoint CKPT --out DIR`")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ManifestError(f"{path}: not readable as JSON ({error})") from None
    fields = _Fields(data, path, "")
    found_format = fields.get("format", str)
    if found_format != FORMAT_NAME:
        raise ManifestError(f"{path}: field 'format' is {found_format!r}, expected {FORMAT_NAME!r}")
    version = fields.get("format_version", int)
    if version != FORMAT_VERSION:
        raise ManifestError(f"{path}: field 'format_version' is {version}; this runtime reads version "
                            f"{FORMAT_VERSION}: export the model again with this version of rdd3d")
    return Manifest(
        format=found_format,
        format_version=version,
        rdd3d_version=fields.get("rdd3d_version", str),
        opset=fields.get("opset", int),
        preset=fields.get("preset", str),
        dataset=fields.get("dataset", str),
        family=fields.choice("family", FAMILIES),
        head=fields.choice("head", HEAD_KINDS),
        point_columns=fields.strings("point_columns"),
        classes=fields.strings("classes"),
        voxelization=_voxelization(fields.nested("voxelization")),
        sparse=fields.optional("sparse", lambda f: SparseSpec(tuple(f.each("rulebooks", _rulebook)))),
        decode=fields.optional("decode", _center_decode),
        graphs=tuple(fields.each("graphs", _graph)),
        verification=fields.float_map("verification"),
        anchor_decode=fields.optional("anchor_decode", _anchor_decode),
        int8=fields.optional("int8", _int8),
    )


class _Fields:
    """Typed access to one JSON object of the manifest; errors name the file and the field's path."""

    def __init__(self, data: Any, path: Path, prefix: str) -> None:
        if not isinstance(data, dict):
            raise ManifestError(f"{path}: field '{prefix.rstrip('.') or '<top>'}' must be an object, "
                                f"got {type(data).__name__}")
        self.data, self.path, self.prefix = data, path, prefix

    def _error(self, name: str, expected: str, value: Any) -> ManifestError:
        return ManifestError(f"{self.path}: field '{self.prefix}{name}' must be {expected}, got {value!r}")

    def get(self, name: str, kind: type[Value]) -> Value:
        if name not in self.data:
            raise ManifestError(f"{self.path}: field '{self.prefix}{name}' is missing")
        value = self.data[name]
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise self._error(name, f"a {kind.__name__}", value)
        return value

    def choice(self, name: str, allowed: tuple[str, ...]) -> str:
        value = self.get(name, str)
        if value not in allowed:
            raise self._error(name, f"one of {list(allowed)}", value)
        return value

    def _list(self, name: str, kind: type, length: int | None = None) -> tuple:
        values = self.get(name, list)
        if length is not None and len(values) != length:
            raise self._error(name, f"a list of {length} values", values)
        checked = []
        for value in values:
            if kind is float and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)
            if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
                raise self._error(name, f"a list of {kind.__name__}", values)
            checked.append(value)
        return tuple(checked)

    def strings(self, name: str) -> tuple[str, ...]:
        return self._list(name, str)

    def ints(self, name: str, length: int | None = None) -> tuple[int, ...]:
        return self._list(name, int, length)

    def floats(self, name: str, length: int | None = None) -> tuple[float, ...]:
        return self._list(name, float, length)

    def float_rows(self, name: str, width: int) -> tuple[tuple[float, ...], ...]:
        rows = self.get(name, list)
        if not all(isinstance(row, list) and len(row) == width and all(
                isinstance(value, (int, float)) and not isinstance(value, bool) for value in row) for row in rows):
            raise self._error(name, f"a list of lists of {width} numbers", rows)
        return tuple(tuple(float(value) for value in row) for row in rows)

    def float_map(self, name: str) -> dict[str, float]:
        values = self.get(name, dict)
        if not all(isinstance(value, (int, float)) and not isinstance(value, bool) for value in values.values()):
            raise self._error(name, "an object of numbers", values)
        return {key: float(value) for key, value in values.items()}

    def string_map(self, name: str) -> dict[str, str]:
        values = self.get(name, dict)
        if not all(isinstance(value, str) for value in values.values()):
            raise self._error(name, "an object of strings", values)
        return dict(values)

    def optional_str(self, name: str) -> Optional[str]:
        return None if self.data.get(name, "") is None else self.get(name, str)

    def optional_int(self, name: str) -> Optional[int]:
        return None if self.data.get(name, 0) is None else self.get(name, int)

    def nested(self, name: str) -> "_Fields":
        return _Fields(self.get(name, dict), self.path, f"{self.prefix}{name}.")

    def optional(self, name: str, read: Callable[["_Fields"], Value]) -> Optional[Value]:
        return None if self.data.get(name) is None else read(self.nested(name))

    def each(self, name: str, read: Callable[["_Fields"], Value]) -> list[Value]:
        return [read(_Fields(item, self.path, f"{self.prefix}{name}[{index}]."))
                for index, item in enumerate(self.get(name, list))]


def _voxelization(fields: _Fields) -> VoxelizationSpec:
    return VoxelizationSpec(
        point_cloud_range=fields.floats("point_cloud_range", 6),
        voxel_size=fields.floats("voxel_size", 3),
        grid_size=fields.ints("grid_size", 3),
        max_points_per_voxel=fields.get("max_points_per_voxel", int),
        max_voxels=fields.get("max_voxels", int),
    )


def _rulebook(fields: _Fields) -> RulebookSpec:
    return RulebookSpec(
        name=fields.get("name", str),
        input_sites=fields.get("input_sites", int),
        output_sites=fields.get("output_sites", int),
        spatial_shape=fields.ints("spatial_shape", 3),
        kernel_size=fields.ints("kernel_size", 3),
        stride=fields.ints("stride", 3),
        padding=fields.ints("padding", 3),
        subm=fields.get("subm", bool),
    )


def _tensor(fields: _Fields) -> TensorSpec:
    shape = fields.get("shape", list)
    if not all(isinstance(size, (int, str)) and not isinstance(size, bool) for size in shape):
        raise fields._error("shape", "a list of sizes (int) or axis names (str)", shape)
    return TensorSpec(fields.get("name", str), tuple(shape), fields.choice("dtype", ("float32", "int32", "int64")))


def _graph(fields: _Fields) -> GraphSpec:
    return GraphSpec(fields.get("file", str), tuple(fields.each("inputs", _tensor)),
                     tuple(fields.each("outputs", _tensor)))


def _nms(fields: _Fields) -> NMSSpec:
    return NMSSpec(
        kind=fields.choice("kind", NMS_KINDS),
        iou_threshold=fields.get("iou_threshold", float),
        pre_max_size=fields.optional_int("pre_max_size"),
        post_max_size=fields.optional_int("post_max_size"),
        circle_distances=fields.floats("circle_distances"),
    )


def _task(fields: _Fields) -> TaskSpec:
    return TaskSpec(fields.ints("labels"), fields.get("heatmap", str), fields.strings("box_code"))


def _center_decode(fields: _Fields) -> CenterDecodeSpec:
    post_center_range = None if fields.data.get("post_center_range") is None else fields.floats(
        "post_center_range", 6)
    return CenterDecodeSpec(
        tasks=tuple(fields.each("tasks", _task)),
        map_origin=fields.floats("map_origin", 2),
        cell_size=fields.floats("cell_size", 2),
        log_size_range=fields.floats("log_size_range", 2),
        max_per_task=fields.get("max_per_task", int),
        score_threshold=fields.get("score_threshold", float),
        post_center_range=post_center_range,
        nms=_nms(fields.nested("nms")),
        max_per_sample=fields.optional_int("max_per_sample"),
        half_period_labels=fields.ints("half_period_labels") if "half_period_labels" in fields.data else (),
    )


def _anchor_decode(fields: _Fields) -> AnchorDecodeSpec:
    return AnchorDecodeSpec(
        cls_logits=fields.get("cls_logits", str),
        box_deltas=fields.get("box_deltas", str),
        dir_logits=fields.optional_str("dir_logits"),
        anchor_types=fields.float_rows("anchor_types", 5),
        anchor_range=fields.floats("anchor_range", 4),
        align_center=fields.get("align_center", bool),
        log_size_range=fields.floats("log_size_range", 2),
        dir_offset=fields.get("dir_offset", float),
        dir_limit_offset=fields.get("dir_limit_offset", float),
        num_dir_bins=fields.get("num_dir_bins", int),
        score_threshold=fields.get("score_threshold", float),
        class_agnostic_nms=fields.get("class_agnostic_nms", bool),
        nms=_nms(fields.nested("nms")),
    )


def _int8(fields: _Fields) -> Int8Spec:
    return Int8Spec(
        files=fields.string_map("files"),
        calibration_frames=fields.get("calibration_frames", int),
        quant_format=fields.get("quant_format", str),
        activation_type=fields.choice("activation_type", ("uint8", "int8")),
        weight_type=fields.choice("weight_type", ("uint8", "int8")),
        per_channel=fields.get("per_channel", bool),
        outputs_quantized=fields.get("outputs_quantized", bool),
        quantized_nodes=fields.get("quantized_nodes", int),
        difference=fields.float_map("difference"),
    )
