"""``snftune predict``: top-k predictions of many tuned tasks over images, batched across tasks."""

from __future__ import annotations

import argparse
import sys

from ..inputs import BATCH_SIZE, WORKERS, Rule
from .common import add_threads_option, apply_threads, parse_key_values, ranged


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "predict",
        help="predict with many tuned tasks on one backbone, batched across tasks",
        description="Loads every tuned file (or run folder) onto one backbone and writes, per image and task, "
        "the top-k classes (names when a run folder's task names them, else indices) and probabilities. "
        "Run folders give the backbone (config.yaml); bare tuned files need --model and --pretrained. "
        "The tasks may use different methods (snf, lora, adapter, vpt, bitfit, linear).",
        epilog="examples: snftune predict --tuned runs/cifar runs/dtd --images photos/ --out predictions.csv;  "
        "snftune predict --tuned cifar=a.safetensors dtd=b.safetensors --model vit_base_patch16_224 "
        "--pretrained ViT-B_16.npz --images list.txt --out predictions.csv --top-k 3",
    )
    parser.add_argument(
        "--tuned", nargs="+", required=True, metavar="[NAME=]PATH", help="tuned .safetensors files or run folders"
    )
    parser.add_argument("--images", required=True, help="an image folder, a text list of image paths, or one image")
    parser.add_argument("--out", required=True, help="the CSV file to write")
    parser.add_argument(
        "--top-k", type=ranged(Rule(int, 1, 1_000_000)), default=5, help="classes per image and task (default 5)"
    )
    parser.add_argument("--model", help="timm model or embedded backbone name (default: the run folders')")
    parser.add_argument("--pretrained", help="backbone weights the tasks were tuned on (default: the run folders')")
    parser.add_argument("--model-kwargs", nargs="+", metavar="KEY=VALUE", help="extra timm.create_model arguments")
    parser.add_argument("--img-size", type=int, help="input size the backbone was built for")
    parser.add_argument(
        "--batch-size",
        type=ranged(BATCH_SIZE),
        default=64,
        help="(image, task) pairs per forward (default 64)",
    )
    parser.add_argument("--workers", type=ranged(WORKERS), default=0, help="image-decoding processes (default 0)")
    parser.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    add_threads_option(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..runs import input_config
    from ..serving.predict import backbone_settings, list_images, predict, serve_sources, task_source, write_predictions

    apply_threads(args.threads)
    sources = [task_source(spec) for spec in args.tuned]
    images = list_images(args.images)
    model_kwargs = parse_key_values(args.model_kwargs, "--model-kwargs") if args.model_kwargs else None
    settings = backbone_settings(
        sources, model=args.model, pretrained=args.pretrained, model_kwargs=model_kwargs, img_size=args.img_size
    )
    model = serve_sources(sources, settings)
    for source in sources:
        if source.note:
            print(f"note: task '{source.name}': {source.note}", file=sys.stderr)
    data_config = input_config(model.backbone, settings)
    predictions = predict(model, sources, images, data_config, args.top_k, args.batch_size, args.workers, args.device)
    write_predictions(args.out, predictions, args.top_k)
    methods = ", ".join(f"{s.name} ({m})" for s, m in zip(sources, model.methods, strict=True))
    print(
        f"wrote {len(predictions)} predictions ({len(images)} images x {len(sources)} tasks: {methods}) to {args.out}"
    )
    return 0
