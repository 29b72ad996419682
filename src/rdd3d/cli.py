"""The ``rdd3d`` command line: one entry point, one sub-command per job.

Exit codes: 0 success, 1 a run failed (message on stderr), 2 bad usage or configuration,
130 interrupted by Ctrl-C, 143 stopped by SIGTERM (training saves its checkpoint first in both cases).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Callable, Sequence

EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143  # 128 + SIGTERM, what a shell reports for a process SIGTERM ended

log = logging.getLogger("rdd3d")


class UsageError(ValueError):
    """Arguments that do not make sense together; reported with exit code 2."""


# ----------------------------------------------------------------------------- simulate
def _add_simulate(commands) -> None:
    parser = commands.add_parser(
        "simulate", help="write a synthetic LiDAR dataset to disk",
        description="Generate train/val splits of the synthetic world and write them in the documented "
                    "on-disk layout (docs/synthetic-world.md).",
    )
    parser.add_argument("--out", required=True, type=Path, help="output folder")
    parser.add_argument("--train-size", type=int, default=200, help="frames in the train split (default 200)")
    parser.add_argument("--val-size", type=int, default=50, help="frames in the val split (default 50)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--overwrite", action="store_true",
                        help="replace a non-empty --out, once the new dataset is complete (default: refuse)")
    _add_world_overrides(parser)
    parser.set_defaults(handler=_run_simulate)


def _run_simulate(args) -> None:
    from rdd3d.data.synthetic import SyntheticDataset
    from rdd3d.data.synthetic.disk import write_dataset

    world = _world_config(args.set)
    datasets = {
        split: SyntheticDataset(split, size, seed=args.seed, config=world)
        for split, size in (("train", args.train_size), ("val", args.val_size)) if size > 0
    }
    try:
        write_dataset(args.out, datasets, overwrite=args.overwrite)
    except FileExistsError as error:
        raise UsageError(str(error)) from None
    print(f"wrote {sum(len(d) for d in datasets.values())} frames to {args.out}")


# ----------------------------------------------------------------------------- show
def _add_show(commands) -> None:
    parser = commands.add_parser(
        "show", help="render a bird's-eye-view PNG of a frame of any dataset, with detections of a results file",
        description="Render a frame's points (greys by height or intensity) and its ground-truth boxes with headings, "
                    "coloured by class; with --results also the detections of a results file, dashed, with their "
                    "scores. The frame comes from the dataset a run config names (--config: synthetic, nuscenes or "
                    "kitti, read as `rdd3d train` reads it), from a dataset written by `rdd3d simulate` (--root), or "
                    "from the synthetic world (--split/--index/--seed).",
    )
    parser.add_argument("--out", required=True, type=Path, help="PNG to write")
    parser.add_argument("--config", action="append", default=[], type=Path,
                        help="run config YAML(s) whose data section names the dataset, merged in order (repeatable)")
    parser.add_argument("--root", type=Path, help="dataset folder written by `rdd3d simulate`")
    parser.add_argument("--split", default="val", help="the split (with --config: train or val; default val)")
    parser.add_argument("--index", type=int, default=0,
                        help="frame index within the split (nuScenes: the info file's order, without CBGS)")
    parser.add_argument("--results", type=Path,
                        help="detections to draw, as `rdd3d eval --write-results` writes them: a submission JSON "
                             "(nuScenes: global frame; synthetic: LiDAR frame) or KITTI result files (a folder of "
                             "<frame_id>.txt, or the frame's file)")
    parser.add_argument("--min-score", type=float, default=0.3, help="detections scored lower are not drawn (0.3)")
    parser.add_argument("--seed", type=int, default=0, help="synthetic world seed (without --root and --config)")
    parser.add_argument("--color-by", choices=("height", "intensity"), default="height")
    parser.add_argument("--extent", type=float, default=None, help="half-width of the picture in metres")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="with --config, override a run-config value (--set data.root=data/kitti); without, a "
                             "synthetic-world setting (--set lidar.beams=16) (repeatable)")
    _add_overwrite(parser)
    parser.set_defaults(handler=_run_show)


def _run_show(args) -> None:
    from rdd3d.core.types import Boxes3D
    from rdd3d.engine.datasets import DATASETS
    from rdd3d.viz import BoxLayer, save_bev

    _check_outputs(args, [args.out], inputs=[args.results])
    name, dataset = _shown_split(args)
    if not 0 <= args.index < len(dataset):
        raise UsageError(f"--index {args.index} out of range: split '{args.split}' has {len(dataset)} frames")
    frame = dataset[args.index]
    layers = [BoxLayer(frame.boxes, frame.labels)]
    title = f"{name} {args.split} #{args.index} {frame.frame_id}: {len(frame.points)} points, {len(frame.boxes)} boxes"
    if args.results is not None:
        (found,) = DATASETS[name].read_predictions(args.results, dataset, [frame])
        scores = found.scores.numpy()
        layers.append(BoxLayer(Boxes3D(found.boxes.numpy()), found.labels.numpy(), scores, name=args.results.name,
                               min_score=args.min_score))
        title += f", {int((scores >= args.min_score).sum())} of {len(scores)} detections"
    save_bev(args.out, frame.points, layers, classes=frame.classes, color_by=args.color_by, extent=args.extent,
             title=title)
    print(f"wrote {args.out}")


def _shown_split(args):
    """(dataset name, the split) `rdd3d show` draws a frame of."""
    if args.config:
        from rdd3d.engine.config import load_run_config
        from rdd3d.engine.datasets import build_datasets

        if args.root is not None:
            raise UsageError("--root reads a `rdd3d simulate` folder; with --config the config's data.root does")
        if args.split not in ("train", "val"):
            raise UsageError(f"--split {args.split!r}: with --config, the config's train or val split")
        config = load_run_config(args.config, args.set)
        config.data.cache_in_memory = False  # only the frame drawn is read
        config.data.nuscenes.use_cbgs = False  # --index counts the info file's records, not CBGS's draws
        train, val = build_datasets(config.data)
        return config.data.dataset, train if args.split == "train" else val
    from dataclasses import fields

    from rdd3d.engine.config import RunConfig

    sections = {field.name for field in fields(RunConfig)}
    run_keys = [item for item in args.set if item.split("=", 1)[0].split(".", 1)[0] in sections]
    if run_keys:
        raise UsageError(f"--set {run_keys[0]}: a run-config key; name the run config with --config (e.g. --config "
                         "configs/kitti/_base.yaml), without it --set changes the synthetic world")
    if args.root is not None:
        from rdd3d.data.synthetic.disk import DiskDataset

        if args.set:
            raise UsageError("--set changes the generated world; it cannot apply to a dataset read with --root")
        return "synthetic", DiskDataset(args.root, args.split)
    from rdd3d.data.synthetic import SyntheticDataset

    return "synthetic", SyntheticDataset(args.split, args.index + 1, seed=args.seed, config=_world_config(args.set))


# ----------------------------------------------------------------------------- demo
def _add_demo(commands) -> None:
    parser = commands.add_parser(
        "demo", help="run the synthetic end-to-end story",
        description="On the synthetic world: train (or reuse) a CP-Voxel teacher, train the CP-Voxel-XXS "
                    "student without and with RDD on the same budget, evaluate all three, print the table "
                    "(mAP, NDS, MACs, parameters, latency) and write BEV pictures and training curves. "
                    "Finished runs in --out are reused.",
    )
    parser.add_argument("--out", type=Path, default=Path("demo_output"), help="output folder")
    parser.add_argument("--quick", action="store_true", help="a tiny budget (seconds), for smoke tests")
    parser.add_argument("--seed", type=int, default=0, help="training seed")
    parser.set_defaults(handler=_run_demo)


def _run_demo(args) -> None:
    from rdd3d.demo import run_demo

    run_demo(args.out, quick=args.quick, seed=args.seed)


# ----------------------------------------------------------------------------- train
def _add_train(commands) -> None:
    parser = commands.add_parser(
        "train", help="train a detector (a teacher, or a student without distillation)",
        description="Train a detector preset on the configured dataset. Run several processes with "
                    "`torchrun --standalone --nproc_per_node=N -m rdd3d train ...` (see docs/training.md).",
    )
    _add_run_arguments(parser)
    parser.set_defaults(handler=_run_train)


def _run_train(args) -> None:
    from rdd3d.engine.config import load_run_config
    from rdd3d.engine.runs import train_detector

    config = load_run_config(args.config, args.set)
    _print_result(train_detector(config, resume=args.resume))


def _add_config_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", action="append", default=[], type=Path,
                        help="YAML config file(s), merged in order (repeatable)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override one config value, e.g. --set optim.lr=2e-3 (repeatable)")


def _add_run_arguments(parser: argparse.ArgumentParser) -> None:
    _add_config_arguments(parser)
    parser.add_argument("--resume", nargs="?", const="last", default=None, metavar="CKPT",
                        help="continue from CKPT (default: <output_dir>/last.pt)")


def _print_result(result) -> None:
    if result.metrics:  # KITTI runs have no NDS
        shown = [f"{name} {result.metrics[name]:.4f}" for name in ("mAP", "NDS") if name in result.metrics]
        print(f"finished at step {result.step}: {', '.join(shown)}")


# ----------------------------------------------------------------------------- distill
def _add_distill(commands) -> None:
    from rdd3d.distill.methods import METHOD_NAMES

    parser = commands.add_parser(
        "distill", help="train a student preset from a trained teacher with RDD or a baseline",
        description="Distil a student from a frozen teacher checkpoint (written by `rdd3d train`). Every loss "
                    "term is logged separately. Method options: --set distill.<method>.<field>=... "
                    "(e.g. distill.rdd.lam=0.2); see docs/distillation.md.",
    )
    parser.add_argument("--teacher", required=True, type=Path, help="teacher checkpoint from `rdd3d train`")
    parser.add_argument("--student", required=True, help="student preset, e.g. cp-voxel-xxs")
    parser.add_argument("--method", required=True, choices=METHOD_NAMES)
    _add_run_arguments(parser)
    parser.set_defaults(handler=_run_distill)


def _run_distill(args) -> None:
    from rdd3d.engine.config import RunConfig, load_run_config
    from rdd3d.engine.runs import distill_student

    chosen = [f"model.preset={args.student}", f"distill.method={args.method}",
              f"distill.teacher_checkpoint={args.teacher}"]
    config = load_run_config(args.config, [*chosen, *args.set])
    if config.output_dir == RunConfig().output_dir:  # neither a file nor --set chose one
        config.output_dir = str(Path("runs") / f"{args.student}-{args.method}")
    result = distill_student(config, resume=args.resume)
    _print_result(result)


# ----------------------------------------------------------------------------- eval
def _add_eval(commands) -> None:
    parser = commands.add_parser(
        "eval", help="mAP/NDS (nuScenes, synthetic) or KITTI AP of a results file or of a trained checkpoint",
        description="Either score a results JSON in the nuScenes submission format (--results) against a "
                    "ground-truth source (--gt: a nuScenes dataroot read through nuscenes-devkit, a "
                    "ground-truth JSON, or a dataset folder written by `rdd3d simulate`), or evaluate a "
                    "checkpoint of `rdd3d train` on its validation split with its dataset's metric (--checkpoint).",
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--results", type=Path, help="results JSON in the nuScenes submission format")
    source.add_argument("--checkpoint", type=Path, help="checkpoint written by `rdd3d train`")
    parser.add_argument("--gt", help="ground truth for --results: nuScenes dataroot, GT JSON, or simulate folder")
    parser.add_argument("--version", default="v1.0-trainval", help="nuScenes version (with a dataroot)")
    parser.add_argument("--eval-set", default="val", help="nuScenes split, or the simulate folder's split")
    parser.add_argument("--frames", type=int, default=0, help="with --checkpoint: first N val frames (0 = all)")
    parser.add_argument("--device", default="auto", help="with --checkpoint: auto | cpu | cuda")
    parser.add_argument("--write-results", type=Path,
                        help="with --checkpoint: also write the detections (nuScenes and synthetic: submission JSON; "
                             "KITTI: a folder of result files)")
    parser.add_argument("--out", type=Path, help="write the metrics as JSON here")
    _add_overwrite(parser)
    parser.set_defaults(handler=_run_eval)


def _run_eval(args) -> None:
    from rdd3d.evaluation import nuscenes_io

    gt_manifest = None if args.gt is None else Path(args.gt) / "dataset.json"
    _check_outputs(args, [args.out, args.write_results], inputs=[args.results, args.checkpoint, args.gt, gt_manifest])
    if args.results is not None:
        if args.gt is None:
            raise UsageError("--results needs --gt (nuScenes dataroot, ground-truth JSON or simulate folder)")
        config, gt_source = None, args.gt
        if (Path(args.gt) / "dataset.json").is_file():
            config, gt_source = _simulated_ground_truth(Path(args.gt), args.eval_set)
        metrics = nuscenes_io.evaluate_results_file(args.results, gt_source, version=args.version,
                                                    eval_set=args.eval_set, config=config)
    else:
        metrics = _evaluate_checkpoint(args)
    print(metrics.format_table())
    if args.out is not None:
        from rdd3d.core.fileio import write_json

        write_json(args.out, metrics.to_dict())
        print(f"wrote {args.out}")


def _simulated_ground_truth(root: Path, split: str):
    from rdd3d.data.synthetic.disk import DiskDataset
    from rdd3d.evaluation.detection_metrics import frame_metric_config, frames_to_table

    dataset = DiskDataset(root, split)
    frames = [dataset[i] for i in range(len(dataset))]
    return frame_metric_config(dataset.class_ranges, dataset.classes.names), frames_to_table(frames)


def _evaluate_checkpoint(args):
    from rdd3d.engine.datasets import build_datasets, evaluate, write_predictions
    from rdd3d.engine.detection_task import predict
    from rdd3d.engine.distributed import init_distributed
    from rdd3d.engine.runs import detector_from_checkpoint

    context = init_distributed(args.device)
    detector, config = detector_from_checkpoint(args.checkpoint, context.device)
    config.data.cache_in_memory = False  # only the frames scored here are read
    _, val_set = build_datasets(config.data)
    count = min(args.frames or len(val_set), len(val_set))
    frames = [val_set[i] for i in range(count)]
    detections = predict(detector, frames, context.device, config.eval.batch_size, show_progress=True)
    if args.write_results is not None:
        written = write_predictions(config.data, val_set, frames, detections, args.write_results)
        print(f"wrote {written}")
    return evaluate(val_set, frames, detections)


# ----------------------------------------------------------------------------- import-checkpoint
def _add_import_checkpoint(commands) -> None:
    from rdd3d.models.foreign import FRAMEWORKS

    parser = commands.add_parser(
        "import-checkpoint", help="turn an OpenPCDet / SparseKD / mmdetection3d CenterPoint checkpoint into a teacher",
        description="Map a foreign checkpoint's weights onto an rdd3d preset and write an rdd3d checkpoint that "
                    "`rdd3d eval --checkpoint`, `rdd3d distill --teacher` and benchmark plans take. Supported models, "
                    "key tables and what is refused: docs/import-checkpoints.md. --config / --set give the run "
                    "config stored with it (data paths for `rdd3d eval`).",
    )
    parser.add_argument("--from", dest="framework", required=True, choices=FRAMEWORKS,
                        help="the framework that wrote IN (SparseKD's checkpoints: openpcdet)")
    parser.add_argument("--preset", required=True, help="the rdd3d preset of the same architecture, e.g. cp-voxel")
    parser.add_argument("--dataset", required=True, choices=("nuscenes", "kitti", "waymo"),
                        help="the dataset the model was trained on")
    parser.add_argument("source", type=Path, metavar="IN", help="the foreign checkpoint (.pth)")
    parser.add_argument("destination", type=Path, metavar="OUT", help="the rdd3d checkpoint to write")
    _add_config_arguments(parser)
    _add_overwrite(parser)
    parser.set_defaults(handler=_run_import_checkpoint)


def _run_import_checkpoint(args) -> None:
    from rdd3d.engine.imported import import_checkpoint
    from rdd3d.models.foreign import ForeignCheckpointError

    _check_outputs(args, [args.destination], inputs=[args.source])
    try:
        imported = import_checkpoint(args.source, args.destination, args.framework, args.preset, args.dataset,
                                     args.config, args.set)
    except ForeignCheckpointError as error:  # a file or a choice that does not fit: bad input, exit 2
        raise UsageError(str(error)) from None
    provenance = imported.provenance
    print(f"imported {provenance['tensors']} tensors of {args.source} ({args.framework}, "
          f"{', '.join(imported.model.configs)}) as {args.preset} on {args.dataset}")
    print(f"wrote {args.destination}")


# ----------------------------------------------------------------------------- nuscenes-infos
def _add_nuscenes_infos(commands) -> None:
    from rdd3d.data.nuscenes import VERSION_SPLITS

    parser = commands.add_parser(
        "nuscenes-infos", help="build the nuScenes info files a run reads (data.nuscenes.train_info/val_info)",
        description="Read a nuScenes dataroot with nuscenes-devkit and write one info file per predefined split "
                    "of the release (v1.0-trainval: train, val; v1.0-mini: mini_train, mini_val; v1.0-test: "
                    "test) as <out>/nuscenes_infos_<split>.json. See docs/data-nuscenes.md.",
    )
    parser.add_argument("--dataroot", required=True, type=Path,
                        help="the folder holding samples/, sweeps/, maps/ and the version's table folder")
    parser.add_argument("--version", required=True, choices=tuple(VERSION_SPLITS), help="nuScenes release")
    parser.add_argument("--out", required=True, type=Path, help="folder for the info files")
    parser.add_argument("--max-sweeps", type=int, default=10,
                        help="earlier LiDAR sweeps stored per keyframe (default 10)")
    parser.add_argument("--on-missing", choices=("error", "skip"), default="error",
                        help="a missing LiDAR file: stop with its name (default), or leave it out and count it")
    parser.add_argument("--compress", action="store_true", help="write .json.gz")
    _add_overwrite(parser)
    parser.set_defaults(handler=_run_nuscenes_infos)


def _run_nuscenes_infos(args) -> None:
    from rdd3d.data.nuscenes import VERSION_SPLITS, build_infos, info_file_name

    if not args.dataroot.is_dir():
        raise UsageError(f"--dataroot {args.dataroot}: not a folder")
    _check_outputs(args, [args.out / info_file_name(split, args.compress) for split in VERSION_SPLITS[args.version]])
    try:
        report = build_infos(args.dataroot, args.version, args.out, max_sweeps=args.max_sweeps,
                             on_missing=args.on_missing, compress=args.compress, verbose=args.verbose)
    except (FileNotFoundError, ValueError, ImportError) as error:
        # Everything this command reads is its input: a missing table or file, or what the devkit
        # refuses, is a bad dataroot (or a missing devkit), not a failed run.
        raise UsageError(str(error)) from error
    except KeyError as error:  # a token one table refers to is absent from another, or a record lacks a field
        raise UsageError(f"{args.dataroot} ({args.version}): broken nuScenes tables: no record or field {error}") \
            from error
    for split, path in report.files.items():
        print(f"{split}: {report.samples[split]} samples -> {path}")
    print(f"skipped {report.skipped_samples} keyframes and {report.skipped_sweeps} sweeps with a missing LiDAR "
          f"file; dropped {report.dropped_annotations} annotations outside the detection classes")


# ----------------------------------------------------------------------------- gt-database
def _add_gt_database(commands) -> None:
    parser = commands.add_parser(
        "gt-database", help="cut the training split's objects out into a ground-truth sampling database",
        description="Build the training split of the configured dataset (data.*), write every labelled object "
                    "with at least one point (its points, relative to the box centre) and the index "
                    "gt_database.json to --out, for data.augmentation.gt_sampling (docs/gt-sampling.md).",
    )
    _add_config_arguments(parser)
    parser.add_argument("--out", required=True, type=Path, help="database folder")
    parser.add_argument("--classes", nargs="+", metavar="CLASS", help="only these classes (default: all)")
    _add_overwrite(parser)
    parser.set_defaults(handler=_run_gt_database)


def _run_gt_database(args) -> None:
    from collections import Counter

    from rdd3d.data.gt_sampling import INDEX_NAME, build_gt_database, read_gt_database
    from rdd3d.engine.config import load_run_config
    from rdd3d.engine.datasets import build_datasets

    _check_outputs(args, [args.out / INDEX_NAME])
    config = load_run_config(args.config, args.set)
    config.data.cache_in_memory = False  # every frame is read once, in turn
    config.data.nuscenes.use_cbgs = False  # each training sample once: CBGS repeats samples
    train_set, _ = build_datasets(config.data)
    unknown = sorted(set(args.classes or ()) - set(train_set.classes.names))
    if unknown:
        raise UsageError(f"--classes {unknown}: not classes of data.dataset={config.data.dataset!r} "
                         f"(expected some of {list(train_set.classes.names)})")
    index = build_gt_database(train_set, args.out, classes=args.classes)
    counts = Counter(entry.class_name for entry in read_gt_database(index))
    print(f"wrote {sum(counts.values())} objects from {len(train_set)} training frames to {index}")
    for name in train_set.classes.names:
        if name in counts:
            print(f"  {name}: {counts[name]}")
    if not counts:
        return
    example_counts = ", ".join(f"{name}: 15" for name in counts)
    print("To paste them into training frames, add to the run (sample_counts: how many objects of each class a "
          "frame should hold after pasting; the 15 is an example, see docs/gt-sampling.md):\n"
          "  --set data.augmentation.gt_sampling.enabled=true\n"
          f"  --set data.augmentation.gt_sampling.database={index.resolve()}\n"
          f"  --set 'data.augmentation.gt_sampling.sample_counts={{{example_counts}}}'")


# ----------------------------------------------------------------------------- flops
def _add_flops(commands) -> None:
    parser = commands.add_parser(
        "flops", help="parameters and MACs of presets, with the ratio to their teacher",
        description="Count parameters and multiply-accumulates (sparse convolutions as active pairs x C_in x "
                    "C_out, as SparseKD counts them) on one real frame (nuScenes, KITTI; found through "
                    "RDD3D_REAL_DATA) or one synthetic frame, beside the paper's figures.",
    )
    parser.add_argument("presets", nargs="*", help="preset names (default: every preset)")
    parser.add_argument("--dataset", default="synthetic", help="synthetic | nuscenes | kitti")
    parser.add_argument("--json", type=Path, help="also write the rows as JSON")
    _add_overwrite(parser)
    parser.set_defaults(handler=_run_flops)


def _run_flops(args) -> None:
    import dataclasses

    from rdd3d.models.complexity import flops_report, reference_points
    from rdd3d.models.presets import list_datasets, list_presets

    if args.dataset not in list_datasets():
        raise UsageError(f"--dataset {args.dataset!r}: expected one of {list(list_datasets())}")
    _check_outputs(args, [args.json])
    offered = list_presets(args.dataset)
    unknown = [name for name in args.presets if name not in offered]
    if unknown:
        raise UsageError(f"presets {unknown} are not offered on {args.dataset}; its presets: {list(offered)}")
    report = flops_report(args.presets or list(offered), args.dataset, reference_points(args.dataset))
    print(report)
    if args.json is not None:
        from rdd3d.core.fileio import write_json

        write_json(args.json, [dataclasses.asdict(row) for row in report.rows])


# ----------------------------------------------------------------------------- benchmark
def _add_benchmark(commands) -> None:
    parser = commands.add_parser(
        "benchmark", help="compare the teacher, the student without KD and every method over seeds",
        description="Run a benchmark plan (configs/benchmark/*.yaml): for each teacher/student pair, train the "
                    "teacher once, then the student without KD and with every method or variant for each seed; "
                    "evaluate all on the same validation frames; write results.json, results.md and results.png. "
                    "Finished runs in --out are reused, interrupted ones resumed (docs/benchmarking.md).",
    )
    parser.add_argument("--plan", required=True, type=Path, help="benchmark plan (YAML)")
    parser.add_argument("--out", type=Path, help="output folder (default runs/benchmark/<plan file name>)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a plan field (seeds=[0,1]) or, for any other key, a config override of every run "
                             "(trainer.epochs=2) (repeatable)")
    parser.set_defaults(handler=_run_benchmark)


def _run_benchmark(args) -> None:
    from rdd3d.benchmark import load_plan, run_benchmark

    out = args.out or Path("runs") / "benchmark" / args.plan.stem
    run_benchmark(load_plan(args.plan, args.set), out)
    print((out / "results.md").read_text(encoding="utf-8"))
    print(f"wrote {out / 'results.json'}, {out / 'results.md'} and {out / 'results.png'}")


# ----------------------------------------------------------------------------- calibrate
def _add_calibrate(commands) -> None:
    from rdd3d.distill.methods import METHOD_NAMES

    parser = commands.add_parser(
        "calibrate", help="one scale-calibrated variant per method, by a rule fixed before any score is seen",
        description="Scale each weight option of the given methods so that its terms' gradient on the student's BEV "
                    "map has --share times the norm of the detection loss's gradient there, averaged over batches "
                    "of the tune split (the teacher's data, data.val_split=val) with the student at its "
                    "initialisation (a preset, seeded by trainer.seed as its no-KD run is) or at a checkpoint. Writes calibration.json "
                    "and variants.yaml, rows to paste into a benchmark plan's `variants` (docs/benchmarking.md).",
    )
    parser.add_argument("--teacher", required=True, type=Path, help="teacher checkpoint")
    parser.add_argument("--student", required=True, help="student preset (at its initialisation) or checkpoint")
    parser.add_argument("--methods", nargs="+", required=True, choices=[m for m in METHOD_NAMES if m != "none"])
    parser.add_argument("--share", type=float, default=0.1, help="gradient norm share of the detection loss's")
    parser.add_argument("--batches", type=int, default=4, help="batches of the tune split (default 4)")
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--out", required=True, type=Path, help="output folder")
    _add_overwrite(parser)
    _add_config_arguments(parser)
    parser.set_defaults(handler=_run_calibrate)


def _run_calibrate(args) -> None:
    import dataclasses

    import yaml

    from rdd3d.core.fileio import write_bytes, write_json
    from rdd3d.engine.calibration import CalibrationRule, calibrate
    from rdd3d.engine.config import load_run_config
    from rdd3d.engine.distributed import init_distributed
    from rdd3d.engine.measure import validation_frames
    from rdd3d.engine.runs import build_model, detector_from_checkpoint
    from rdd3d.engine.trainer import seed_everything

    try:
        rule = CalibrationRule(args.share, args.batches, args.batch_size)
    except ValueError as error:
        raise UsageError(str(error)) from None
    _check_outputs(args, [args.out / "calibration.json", args.out / "variants.yaml"],
                   inputs=[args.teacher, args.student])
    device = init_distributed("cpu").device
    teacher, teacher_config = detector_from_checkpoint(args.teacher, device)
    if Path(args.student).suffix == ".pt":
        student, config = detector_from_checkpoint(args.student, device)
        if config.data.dataset != teacher_config.data.dataset:
            raise UsageError(f"--teacher {args.teacher} and --student {args.student} were trained on different "
                             "datasets")
    else:
        config = load_run_config(args.config, [*args.set, f"model.preset={args.student}"])
        config.data = teacher_config.data
        seed_everything(config.trainer.seed, config.trainer.deterministic)
        student = build_model(config)
    # The tune split of the teacher's data: choices are never made on the held-out one.
    config.data = dataclasses.replace(teacher_config.data, val_split="val")
    config.eval.max_frames = rule.batches * rule.batch_size
    frames, _ = validation_frames(config)
    found = calibrate(teacher, student, args.methods, frames, rule, base=config.distill)
    write_json(args.out / "calibration.json", {"rule": dataclasses.asdict(rule), "teacher": str(args.teacher),
                                               "student": args.student, "frames": len(frames),
                                               "weights": [dataclasses.asdict(c) for c in found]})
    variants = [{"name": f"{method}-cal", "method": method,
                 "overrides": [c.override for c in found if c.method == method and c.override]}
                for method in dict.fromkeys(c.method for c in found)]
    write_bytes(args.out / "variants.yaml", yaml.safe_dump({"variants": variants}, sort_keys=False).encode())
    print(f"{'method':<10} {'option':<18} {'default':>10} {'term grad':>11} {'det grad':>10} {'calibrated':>11}")
    for c in found:
        shown = "-" if c.calibrated is None else f"{c.calibrated:.4g}"
        print(f"{c.method:<10} {c.option:<18} {c.default:>10.4g} {c.term_gradient:>11.3e} {c.detection_gradient:>10.3e} "
              f"{shown:>11}")
    print(f"wrote {args.out / 'calibration.json'} and {args.out / 'variants.yaml'}")


# ----------------------------------------------------------------------------- convergence
def _add_convergence(commands) -> None:
    parser = commands.add_parser(
        "convergence", help="learning curves of finished runs and whether they converged",
        description="Read runs' logs (their evaluations on the tune split) and judge each: the evaluations at 75 % "
                    "and 100 % of its schedule differ by less than 1 mAP and, given the same run at twice the "
                    "schedule (RUN,DOUBLED), doubling adds less than 2 mAP; a teacher's mATE, mAOE (and mAVE with "
                    "sweeps) are below 0.35 m, 0.5 rad (1 m/s). Writes convergence.json and convergence.png.",
    )
    parser.add_argument("--teacher", action="append", default=[], metavar="RUN[,DOUBLED]",
                        help="a teacher's run folder, optionally with its run at twice the schedule (repeatable)")
    parser.add_argument("--student", action="append", default=[], metavar="RUN[,DOUBLED]",
                        help="a student's run folder (e.g. no KD), optionally with its doubled run (repeatable)")
    parser.add_argument("--out", required=True, type=Path, help="output folder")
    _add_overwrite(parser)
    parser.set_defaults(handler=_run_convergence)


def _run_convergence(args) -> int:
    from rdd3d.benchmark.convergence import ConvergenceCriteria, Curve, judge, write_convergence_report

    if not args.teacher and not args.student:
        raise UsageError("name at least one run: --teacher RUN or --student RUN")
    _check_outputs(args, [args.out / "convergence.json", args.out / "convergence.png"])
    criteria, curves, verdicts = ConvergenceCriteria(), [], {}
    for role, given in [("teacher", text) for text in args.teacher] + [("student", text) for text in args.student]:
        run, _, doubled = given.partition(",")
        curve = Curve.of(Path(run).name, run)
        twice = Curve.of(Path(doubled).name, doubled) if doubled else None
        if twice is not None and twice.epochs != 2 * curve.epochs:
            raise UsageError(f"{doubled} trained {twice.epochs} epochs, not twice {run}'s {curve.epochs}")
        curves.append(curve)
        verdicts[curve.name] = judge(curve, criteria, twice, teacher=role == "teacher")
    write_convergence_report(args.out, curves, verdicts, criteria)
    for verdict in verdicts.values():
        state = "converged" if verdict.converged else "NOT converged: " + "; ".join(verdict.problems)
        shown = "-" if verdict.final_mAP is None else f"{100 * verdict.final_mAP:.2f}"
        print(f"{verdict.name}: mAP {shown}, {state}")
    print(f"wrote {args.out / 'convergence.json'} and {args.out / 'convergence.png'}")
    return 0 if all(verdict.converged for verdict in verdicts.values()) else EXIT_FAILURE


# ----------------------------------------------------------------------------- disparity
def _add_disparity(commands) -> None:
    parser = commands.add_parser(
        "disparity", help="histograms of teacher-student region-feature distances, before and after distillation",
        description="Run the teacher and a student over validation frames, pair their BEV features at both "
                    "models' detections as RDD does, and write the distribution of the pairs' distances "
                    "(disparity.json, disparity.png) with a verdict: does the student suffer from "
                    "representation disparity, and did distillation (--student-after) shrink it?",
    )
    parser.add_argument("--teacher", required=True, type=Path, help="teacher checkpoint")
    parser.add_argument("--student", required=True, type=Path, help="student checkpoint (e.g. trained without KD)")
    parser.add_argument("--student-after", type=Path, help="the student after distillation, measured the same way")
    parser.add_argument("--frames", type=int, default=20, help="first N validation frames (default 20)")
    parser.add_argument("--batch-size", type=int, default=4, help="frames per batch; d is normalised per batch")
    parser.add_argument("--ignore-adapter", action="store_true",
                        help="measure without RDD's trained adapter even where a checkpoint holds one")
    parser.add_argument("--fit-psi", action="store_true",
                        help="fit a linear ψ (1×1 conv + bias, least squares) from each student's BEV map to the "
                             "teacher's on the measured frames and measure through it (mapping 'fitted'): like "
                             "for like between students with and without KD; ignores trained adapters")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")
    parser.add_argument("--out", required=True, type=Path, help="output folder")
    _add_overwrite(parser)
    parser.set_defaults(handler=_run_disparity)


def _run_disparity(args) -> None:
    from rdd3d.disparity_report import write_disparity_report
    from rdd3d.distill.disparity import DisparityConfig, measure_disparity, trained_adapter
    from rdd3d.distill.rdd import RDDConfig
    from rdd3d.engine.measure import validation_frames
    from rdd3d.engine.distributed import init_distributed
    from rdd3d.engine.runs import detector_from_checkpoint

    if args.frames < 1 or args.batch_size < 1:
        raise UsageError(f"--frames and --batch-size must be >= 1, got {args.frames} and {args.batch_size}")
    _check_outputs(args, [args.out / "disparity.json", args.out / "disparity.png"])
    device = init_distributed(args.device).device
    teacher, teacher_config = detector_from_checkpoint(args.teacher, device)
    paths = {label: path for label, path in (("before", args.student), ("after", args.student_after)) if path}
    students = {label: detector_from_checkpoint(path, device) for label, path in paths.items()}
    configs = [config for _, config in students.values()]
    if any(config.data.dataset != teacher_config.data.dataset for config in configs):
        raise UsageError(f"teacher {args.teacher} and the students were trained on different datasets")
    # One set of RDD settings for every measurement (τ and λ set the scale): the RDD-distilled student's.
    rdd = next((c.distill.rdd for c in reversed(configs) if c.distill.method == "rdd"), RDDConfig())
    config = DisparityConfig(rdd, args.batch_size)
    configs[0].eval.max_frames = args.frames
    frames, _ = validation_frames(configs[0])
    reports = {}
    for label, (student, student_config) in students.items():
        with_psi = student_config.distill.method == "rdd" and not (args.ignore_adapter or args.fit_psi)
        psi = trained_adapter(paths[label]).to(device) if with_psi else None
        reports[label] = measure_disparity(teacher, student, frames, config, psi, fit_psi=args.fit_psi)
    sources = {"teacher": str(args.teacher), **{label: str(path) for label, path in paths.items()}}
    for line in write_disparity_report(args.out, reports, sources, config.widespread_share):
        print(line)
    print(f"wrote {args.out / 'disparity.json'} and {args.out / 'disparity.png'}")


# ----------------------------------------------------------------------------- doctor
def _add_doctor(commands) -> None:
    parser = commands.add_parser(
        "doctor", help="check this machine first: versions, CUDA, sparse backend, threads, a tiny training step",
        description="Check what this machine gives rdd3d and print one line per check (OK, WARN or FAIL; under "
                    "every WARN and FAIL, what to do): versions of Python, torch and the optional packages; CUDA; "
                    "which sparse-convolution backend runs on CPU and on CUDA, with a tiny forward and backward "
                    "against a dense reference; torch's threads against the usable cores; one small forward and "
                    "backward per detector family; whether runs can be written in the current folder. "
                    "Exit code 0 when no check FAILs (WARNs allowed), 1 when one does.",
    )
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the report as JSON")
    parser.add_argument("--skip-models", action="store_true",
                        help="skip the detector forward/backward checks (the slowest part)")
    _add_overwrite(parser)
    parser.set_defaults(handler=_run_doctor)


def _run_doctor(args) -> int:
    from rdd3d.doctor import format_report, report_json, run_checks

    _check_outputs(args, [args.json])
    checks = run_checks(Path.cwd(), skip_models=args.skip_models)
    print(format_report(checks))
    if args.json is not None:
        from rdd3d.core.fileio import write_json

        write_json(args.json, report_json(checks))
        print(f"wrote {args.json}")
    failed = [check.name for check in checks if check.status == "FAIL"]
    if failed:
        print(f"rdd3d doctor: {len(failed)} check(s) failed: {', '.join(failed)}", file=sys.stderr)
        return EXIT_FAILURE  # the doctor's finding, not an error of the command
    return 0


# ----------------------------------------------------------------------------- export
def _add_export(commands) -> None:
    # light: no torch while the parser is built
    from rdd3d_runtime.manifest import DEFAULT_CALIBRATION_FRAMES, DEFAULT_OPSET, MIN_OPSET

    parser = commands.add_parser(
        "export", help="export a trained detector to ONNX files and a manifest that rdd3d_runtime runs",
        description="Write the detector of a `rdd3d train` or `rdd3d distill` checkpoint as ONNX files (pillar "
                    "family: one file from the pillars to the head's maps; voxel family: the sparse 3D backbone, "
                    "then the BEV backbone and head) with a manifest.json. The files are run with onnxruntime on a "
                    "synthetic frame and compared with PyTorch first; the manifest is written only if they agree "
                    "(docs/deployment.md). Needs onnxruntime: pip install 'rdd3d[export]'.",
    )
    parser.add_argument("--checkpoint", required=True, type=Path,
                        help="checkpoint written by `rdd3d train` or `rdd3d distill`")
    parser.add_argument("--out", required=True, type=Path, help="folder for the ONNX files and manifest.json")
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET,
                        help=f"ONNX opset (default {DEFAULT_OPSET}, at least {MIN_OPSET})")
    parser.add_argument("--overwrite", action="store_true", help="replace an export in --out (default: refuse)")
    parser.add_argument("--int8", action="store_true",
                        help="also write an INT8 copy of the dense part (BEV backbone, neck, head): onnxruntime's "
                             "static quantisation, calibrated on synthetic frames")
    parser.add_argument("--calibration-frames", type=int, default=DEFAULT_CALIBRATION_FRAMES, metavar="N",
                        help=f"synthetic frames that calibrate --int8 (default {DEFAULT_CALIBRATION_FRAMES})")
    parser.set_defaults(handler=_run_export)


def _run_export(args) -> None:
    from rdd3d.export import export_checkpoint
    from rdd3d_runtime.manifest import MIN_OPSET

    if args.opset < MIN_OPSET:
        raise UsageError(f"--opset {args.opset}: rdd3d exports need opset {MIN_OPSET} or later")
    if args.calibration_frames < 1:
        raise UsageError(f"--calibration-frames {args.calibration_frames}: needs at least 1 frame")
    if args.out.exists() and any(args.out.iterdir()) and not args.overwrite:
        raise UsageError(f"{args.out} exists and is not empty; pass --overwrite to replace it, or choose another path")
    manifest = export_checkpoint(args.checkpoint, args.out, opset=args.opset, overwrite=args.overwrite)
    files = ", ".join(graph.file for graph in manifest.graphs)
    print(f"wrote {files} and manifest.json to {args.out} ({manifest.preset}, opset {manifest.opset}; largest "
          f"difference to PyTorch {max(manifest.verification.values()):.2g})")
    if args.int8:
        from rdd3d.export.quantize import quantize_export

        int8 = quantize_export(args.out, args.calibration_frames).int8
        print(f"wrote {', '.join(int8.files.values())} (INT8, calibrated on {int8.calibration_frames} synthetic "
              f"frames; largest difference to fp32 {max(int8.difference.values()):.2g})")


# ----------------------------------------------------------------------------- predict
def _add_predict(commands) -> None:
    parser = commands.add_parser(
        "predict", help="detections of an exported model (rdd3d export) on a point file, through onnxruntime",
        description="Run a folder written by `rdd3d export` on one point file (.bin float32 rows in the manifest's "
                    "columns, or .npy) with rdd3d_runtime: NumPy voxelisation and decoding, the ONNX files through "
                    "onnxruntime, no PyTorch. `python -m rdd3d_runtime` does the same where only the deploy extra "
                    "is installed (docs/deployment.md).",
    )
    parser.add_argument("--model", required=True, type=Path, help="folder written by `rdd3d export`")
    parser.add_argument("--points", required=True, type=Path, help="point file: .bin (float32 rows) or .npy")
    parser.add_argument("--out", type=Path, help="detections JSON to write (default: print it)")
    parser.add_argument("--bev", type=Path, help="also draw the points and detections from above into this PNG")
    parser.add_argument("--threads", type=int, help="onnxruntime intra-op threads (default: its own choice)")
    parser.add_argument("--int8", action="store_true",
                        help="run the INT8 copy of the dense part (written by `rdd3d export --int8`)")
    _add_overwrite(parser)
    parser.set_defaults(handler=_run_predict)


def _run_predict(args) -> None:
    import json

    from rdd3d_runtime import ExportedModel, read_points
    from rdd3d_runtime.cli import prediction_json

    _check_outputs(args, [args.out, args.bev], inputs=[args.points])
    model = ExportedModel(args.model, threads=args.threads, precision="int8" if args.int8 else "fp32")
    points = read_points(args.points, model.manifest.point_columns)
    detections = model.predict(points)
    result = prediction_json(model, args.points, points, detections)
    if args.out is None:
        print(json.dumps(result, indent=2))
    else:
        from rdd3d.core.fileio import write_json

        write_json(args.out, result)
        print(f"wrote {len(detections.scores)} detections to {args.out}")
    if args.bev is not None:
        from rdd3d.core.types import Boxes3D, ClassTable, PointCloud
        from rdd3d.viz import BoxLayer, save_bev

        layer = BoxLayer(Boxes3D(detections.boxes), detections.labels, detections.scores, name=model.manifest.preset)
        save_bev(args.bev, PointCloud(points, model.manifest.point_columns), [layer],
                 classes=ClassTable(model.manifest.classes),
                 title=f"{args.points.name}: {len(detections.scores)} detections ({model.manifest.preset})")
        print(f"wrote {args.bev}")


# ----------------------------------------------------------------------------- shared helpers
def _add_overwrite(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--overwrite", action="store_true", help="replace output files that exist (default: refuse)")


def _check_outputs(args, outputs: Sequence[Path | None], inputs: Sequence[Path | str | None] = ()) -> None:
    """Before any work: an output never replaces one of the command's inputs, nor, without --overwrite,
    anything that already exists."""
    named_inputs = {Path(path).resolve() for path in inputs if path is not None}
    for output in filter(None, outputs):
        if output.resolve() in named_inputs:
            raise UsageError(f"{output} is also an input of this command; write the output elsewhere")
        if output.exists() and not args.overwrite:
            raise UsageError(f"{output} exists; pass --overwrite to replace it, or choose another path")


def _add_world_overrides(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a synthetic-world setting, e.g. --set lidar.beams=16 (repeatable)")


def _world_config(overrides: Sequence[str]):
    from rdd3d.data.synthetic import WorldConfig
    from rdd3d.core.config_loading import build_config

    return build_config(WorldConfig, overrides=overrides)


COMMANDS: tuple[Callable, ...] = (_add_doctor, _add_demo, _add_simulate, _add_show, _add_nuscenes_infos,
                                 _add_gt_database, _add_train, _add_distill, _add_eval, _add_import_checkpoint,
                                 _add_flops, _add_benchmark, _add_calibrate, _add_convergence, _add_disparity,
                                 _add_export, _add_predict)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rdd3d", description="Representation Disparity-aware Distillation for LiDAR 3D detectors.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in COMMANDS:
        add(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from rdd3d.core.config_loading import ConfigError
    from rdd3d.engine.trainer import Preempted

    try:
        code = args.handler(args)  # None, or the exit code of a command whose finding is a failure (doctor)
    except Preempted:
        print("rdd3d: stopped by SIGTERM after saving the last checkpoint; --resume continues", file=sys.stderr)
        return EXIT_TERMINATED
    except KeyboardInterrupt:
        print("rdd3d: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (UsageError, ConfigError) as error:
        print(f"rdd3d {args.command}: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except (OSError, ValueError, RuntimeError, KeyError) as error:
        if args.verbose:
            raise
        print(f"rdd3d {args.command}: error: {error}", file=sys.stderr)
        return EXIT_FAILURE
    return code or 0


if __name__ == "__main__":
    sys.exit(main())
