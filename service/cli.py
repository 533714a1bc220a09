"""`python -m service.cli`: the service's work without the HTTP server.

    train     --model_url M --labeled_url L --img_width R --img_height C --epochs E [--seed S]
    predict   --model_url M --unlabeled_url U --img_width R --img_height C
    evaluate  --model_url M --data_url D --img_width R --img_height C   accuracy, ROC AUC, AP on D/<class>/*
    new       NAME OUT [--rows R --cols C --seed S]                     a fresh model of the registry
    convert   SRC DST                                                    .h5 ⇄ .onnx, .pt → .onnx/.h5
    verify    MODEL.h5 [...]                                             Keras vs PyTorch vs ONNX Runtime

URLs are local paths (anywhere: the CLI runs as you) or `s3://` URLs. `train` and `predict` print
the same JSON as the HTTP endpoints (`--output FILE` writes it to a file instead) and show a
progress bar on stderr.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time

from .errors import ServiceError

log = logging.getLogger("service.cli")


# --------------------------------------------------------------------------- progress

class ProgressBar:
    """A one-line text progress bar on stderr (a new line per update when stderr is not a terminal)."""

    def __init__(self, label: str, total: int, stream=None, width: int = 30):
        self.label, self.total, self.width = label, max(1, total), width
        self.stream = stream or sys.stderr
        self.started = time.monotonic()
        self.tty = getattr(self.stream, "isatty", lambda: False)()

    def update(self, done: int, note: str = "") -> None:
        filled = int(self.width * min(done, self.total) / self.total)
        bar = "#" * filled + "." * (self.width - filled)
        line = f"{self.label} [{bar}] {done}/{self.total} {time.monotonic() - self.started:5.1f}s {note}".rstrip()
        if self.tty:
            self.stream.write("\r" + line + ("\n" if done >= self.total else ""))
        else:
            self.stream.write(line + "\n")
        self.stream.flush()


# --------------------------------------------------------------------------- commands

def _settings():
    from .config import from_env
    from .jobs import Settings

    config = from_env()
    return Settings(local_root=None, work_dir=config["WORK_DIR"], device=config["DEVICE"],
                    batch_size=config["BATCH_SIZE"], download_threads=config["DOWNLOAD_THREADS"])


def _emit(result, output: str | None) -> None:
    text = json.dumps(result, indent=2, sort_keys=True)
    if output:
        with open(output, "w") as f:
            f.write(text + "\n")
        print(f"wrote {output}", file=sys.stderr)
    else:
        print(text)


def cmd_train(args) -> int:
    from . import jobs
    from .params import Limits, train_params

    query = {"model_url": args.model_url, "labeled_url": args.labeled_url, "img_width": str(args.img_width),
             "img_height": str(args.img_height), "epochs": str(args.epochs)}
    if args.seed is not None:
        query["seed"] = str(args.seed)
    params = train_params(query, Limits())
    bar = ProgressBar("epochs", params.epochs)

    def on_epoch(epoch, epochs, m):
        bar.update(epoch, f"loss={m['loss']:.4f} acc={m['acc']:.3f} val_loss={m['val_loss']:.4f} "
                          f"val_acc={m['val_acc']:.3f}")

    result = jobs.run_train(params, _settings(), on_epoch=on_epoch)
    _emit(result, args.output)
    return 0


def cmd_predict(args) -> int:
    from . import jobs
    from .params import Limits, predict_params

    params = predict_params({"model_url": args.model_url, "unlabeled_url": args.unlabeled_url,
                             "img_width": str(args.img_width), "img_height": str(args.img_height)}, Limits())
    bar = None

    def on_progress(done, total):
        nonlocal bar
        bar = bar or ProgressBar("scored", total)
        bar.update(done)

    items = jobs.run_predict(params, _settings(), on_progress=on_progress)
    if items.skipped:
        print(f"skipped {len(items.skipped)} unreadable file(s): "
              + ", ".join(s["url"] for s in items.skipped), file=sys.stderr)
    _emit(list(items), args.output)
    return 0


def evaluate_folder(model_path: str, folder: str, rows: int, cols: int, device=None) -> dict:
    """Accuracy at 0.5, ROC AUC and average precision of a model on `folder/<class>/*` images."""
    from training import predict
    from training.images import list_images
    from training.loop import average_precision, roc_auc

    classes = sorted(d for d in os.listdir(folder) if os.path.isdir(os.path.join(folder, d)))
    if len(classes) != 2:
        raise SystemExit(f"{folder} must hold exactly two class folders, found {classes}")
    paths, labels = [], []
    for label, name in enumerate(classes):
        found = [str(p) for p in list_images(os.path.join(folder, name))]
        paths += found
        labels += [label] * len(found)
    scores = predict(model_path, paths, rows, cols, device=device)
    correct = sum(int((s > 0.5) == bool(y)) for s, y in zip(scores, labels))
    return {"model": model_path, "data": folder, "classes": classes, "images": len(paths),
            "accuracy": correct / len(paths), "roc_auc": roc_auc(labels, scores),
            "average_precision": average_precision(labels, scores)}


def cmd_evaluate(args) -> int:
    from .cache import cached_model
    from .storage import locate

    model = cached_model(locate(args.model_url, "model_url", local_root=None))  # local path or cached copy
    _emit(evaluate_folder(model, args.data_url, args.img_width, args.img_height), args.output)
    return 0


def cmd_new(args) -> int:
    from conversion.formats import model_format, save_checkpoint
    from models.registry import ModelSpec, lookup

    import torch

    entry = lookup(args.name)
    spec = entry.spec
    spec = ModelSpec(rows=args.rows or spec.rows, cols=args.cols or spec.cols, channels=spec.channels,
                     classes=spec.classes, learning_rate=spec.learning_rate, kwargs=spec.kwargs)
    torch.manual_seed(args.seed)
    fmt = model_format(args.out)
    if fmt == ".h5" and entry.name == "srkw_cnn":
        from models.srkw_cnn import write_fresh_h5

        write_fresh_h5(args.out, spec.rows, spec.cols, seed=args.seed)
    elif fmt == ".pt":
        save_checkpoint(entry.factory(rows=spec.rows, cols=spec.cols, **spec.kwargs), entry.name, spec, args.out)
    else:
        raise SystemExit(f"`new` writes .pt checkpoints (or srkw_cnn as .h5); convert afterwards for {fmt}")
    print(f"wrote {args.out} ({entry.name}, {spec.rows}x{spec.cols}x{spec.channels})", file=sys.stderr)
    return 0


def convert(src: str, dst: str) -> str:
    """Convert a model file between formats by extension: .h5 ⇄ .onnx, .pt → .onnx / .h5."""
    import torch

    from conversion import keras_to_onnx, onnx_to_keras, torch_to_onnx
    from conversion.formats import WithOutputActivation, load_checkpoint, model_format

    a, b = model_format(src), model_format(dst)
    if (a, b) == (".h5", ".onnx"):
        return keras_to_onnx(src, dst)
    if (a, b) == (".onnx", ".h5"):
        return onnx_to_keras(src, dst)
    if a == ".pt" and b in (".onnx", ".h5"):
        model = load_checkpoint(src)
        _, rows, cols, channels = model.input_shapes[0]
        example = (torch.zeros(1, channels, rows, cols),)
        exported = WithOutputActivation(model.net)  # files hold probabilities, as the pipeline reads them
        if b == ".onnx":
            return torch_to_onnx(exported, dst, example_inputs=example)
        with tempfile.TemporaryDirectory() as tmp:
            onnx_path = torch_to_onnx(exported, os.path.join(tmp, "model.onnx"), example_inputs=example)
            return onnx_to_keras(onnx_path, dst)
    raise SystemExit(f"cannot convert {a} to {b}: supported are .h5 ⇄ .onnx and .pt → .onnx/.h5 "
                     "(a .pt needs a registered PyTorch class: make one with `new`)")


def cmd_convert(args) -> int:
    if os.path.exists(args.dst) and not args.force:
        raise SystemExit(f"{args.dst} exists; pass --force to replace it")
    print(f"wrote {convert(args.src, args.dst)}", file=sys.stderr)
    return 0


def cmd_verify(args) -> int:
    from conversion.__main__ import main as conversion_main

    return conversion_main(["verify", *args.models] + (["--tolerance", str(args.tolerance)] if args.tolerance else []))


# --------------------------------------------------------------------------- main

def _image_args(p):
    p.add_argument("--img_width", "--img-width", type=int, required=True, help="image rows (as the HTTP API)")
    p.add_argument("--img_height", "--img-height", type=int, required=True, help="image columns")
    p.add_argument("--output", "-o", help="write the JSON here instead of stdout")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m service.cli", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="fine-tune a model, write the next version, print /train's JSON")
    train.add_argument("--model_url", "--model-url", required=True)
    train.add_argument("--labeled_url", "--labeled-url", required=True)
    train.add_argument("--epochs", type=int, required=True)
    train.add_argument("--seed", type=int)
    _image_args(train)
    train.set_defaults(run=cmd_train)
    predict = sub.add_parser("predict", help="score every unlabeled spectrogram, print /predict's JSON")
    predict.add_argument("--model_url", "--model-url", required=True)
    predict.add_argument("--unlabeled_url", "--unlabeled-url", required=True)
    _image_args(predict)
    predict.set_defaults(run=cmd_predict)
    evaluate = sub.add_parser("evaluate", help="accuracy, ROC AUC and AP on a folder of <class>/ images")
    evaluate.add_argument("--model_url", "--model-url", required=True)
    evaluate.add_argument("--data_url", "--data-url", required=True, help="a local folder with two class folders")
    _image_args(evaluate)
    evaluate.set_defaults(run=cmd_evaluate)
    new = sub.add_parser("new", help="write a fresh, untrained model of the registry")
    new.add_argument("name", help="registry name (srkw_cnn, small_cnn, …) or package.module:Class")
    new.add_argument("out", help="NAME_0.pt (or srkw_cnn_0.h5)")
    new.add_argument("--rows", type=int)
    new.add_argument("--cols", type=int)
    new.add_argument("--seed", type=int, default=0)
    new.set_defaults(run=cmd_new)
    conv = sub.add_parser("convert", help="convert a model between .h5, .onnx and .pt")
    conv.add_argument("src")
    conv.add_argument("dst")
    conv.add_argument("--force", action="store_true", help="replace an existing DST")
    conv.set_defaults(run=cmd_convert)
    verify = sub.add_parser("verify", help="Keras vs PyTorch vs ONNX Runtime parity of .h5 files")
    verify.add_argument("models", nargs="+")
    verify.add_argument("--tolerance", type=float)
    verify.set_defaults(run=cmd_verify)
    return p


def main(argv=None) -> int:
    level = os.environ.get("LOG_LEVEL", "WARNING").upper()
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    for handler in logging.getLogger().handlers:
        handler.setLevel(level)
    args = parser().parse_args(argv)
    try:
        return args.run(args)
    except ServiceError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
