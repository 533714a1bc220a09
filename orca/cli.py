"""`orca`: the orca ML endpoint's command line.

    serve     [--host H --port P]                                        the HTTP service (werkzeug, threaded)
    demo      [--dir D --host H --port P --prepare-only]                 sample data under ./local + the service
    train     --model_url M --labeled_url L --img_width R --img_height C --epochs E [--seed S]
    predict   --model_url M --unlabeled_url U --img_width R --img_height C
    evaluate  --model_url M --data_url D --img_width R --img_height C   accuracy, ROC AUC, AP on D/<class>/*
    new       NAME OUT [--rows R --cols C --seed S]                     a fresh model of the registry
    convert   SRC DST [--force]                                          .h5 ⇄ .onnx, .pt → .onnx/.h5
    verify    MODEL.h5 [...] [--tolerance T]                             Keras vs PyTorch vs ONNX Runtime
    score     MODEL SOURCE --out DEST [--workers N --part-size P ...]    batch scoring on Ray into Parquet
    embed     --model_url M --unlabeled_url U --img_width R --img_height C   /predict's items + embeddings
    query     --model_url M --unlabeled_url U ... --k K [--strategy S]   the K clips to label next
    simulate  LABELED_DIR --model M [--strategies ... --rounds N --k K]  compare query strategies, JSON + plot
    preprocess INPUT OUTPUT [--duration 3 --location L --starting-timestamp T]   HLS segments → mp3 clips + PNGs
    spectrogram AUDIO... --out DIR                                       the 2020 spectrogram PNG of each clip

URLs are local paths (anywhere: the CLI runs as you) or `s3://` URLs. `train` and `predict` print
the same JSON as the HTTP endpoints (`--output FILE` writes it to a file instead) and show a
progress bar on stderr. `convert` to or from `.h5` and `verify` need the `bridge` extra
(TensorFlow); `score` needs the `scale` extra (Ray, pyarrow; docs/scoring.md). The commands only
parse arguments and print: the work is in `service`'s use cases (`service.train`, `service.predict`,
`service.selection`: the same functions the HTTP routes call, without Flask, which only `serve` and
`demo` load), `training`, `models`, `conversion` and `batch_scoring`.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

log = logging.getLogger("orca")

BRIDGE_MODULES = {"tensorflow", "tf_keras", "tf2onnx", "keras"}  # the `bridge` extra


# --------------------------------------------------------------------------- the service's work
# The only calls into the service's API; everything below only parses arguments and prints.

def _runtime():
    """The service's runtime for one command, configured from the environment like the server,
    except that local paths may lie anywhere (the CLI runs as you)."""
    from service.runtime import Runtime

    return Runtime.from_config({"LOCAL_ROOT": None})


def _run_train(params, on_epoch) -> dict:
    """/train's work for `params` (service.params.TrainParams): its JSON as a dict.
    `on_epoch(epoch, epochs, metrics)` follows the epochs."""
    from service.train import run_train

    return run_train(_runtime(), params, on_epoch=on_epoch)


def _run_predict(params, on_progress):
    """/predict's work for `params` (service.params.PredictParams): the items (a list, with
    `.skipped`, the files not scored). `on_progress(done, total)` follows the scoring."""
    from service.predict import run_predict

    return run_predict(_runtime(), params, on_progress=on_progress)


def _run_embed(params):
    """/embed's work: (items, embeddings) for `params` (service.params.EmbedParams)."""
    from service.selection import run_embed

    pool = run_embed(_runtime(), params)
    return pool.items, pool.embeddings


def _run_query(params) -> list[dict]:
    """/query's work for `params` (service.params.QueryParams)."""
    from service.selection import run_query

    return run_query(_runtime(), params)


def _local_model(url: str) -> str:
    """A local path of the model at `url` (the file itself, or the cached copy of an S3 object)."""
    runtime = _runtime()
    return runtime.cache.model(runtime.locate(url, "model_url"))


# --------------------------------------------------------------------------- helpers

def _emit(result, output: str | None) -> None:
    text = json.dumps(result, indent=2, sort_keys=True)
    if output:
        with open(output, "w") as f:
            f.write(text + "\n")
        print(f"wrote {output}", file=sys.stderr)
    else:
        print(text)


def _bar(desc: str, total: int | None, unit: str):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, dynamic_ncols=True)


def _missing_bridge(exc: ImportError) -> bool:
    return (exc.name or "").split(".")[0] in BRIDGE_MODULES


class MissingExtra(Exception):
    """A command needs a module of an optional extra that is not installed; `main` prints
    `error: …` with the README's install line and exits 2."""

    def __init__(self, command: str, module: str, extra: str):
        super().__init__(f"`orca {command}` needs {module}, which is not installed (the `{extra}` extra): "
                         f"pip install '.[{extra}]'")


def _bridge_exit(command: str, exc: ImportError) -> MissingExtra:
    return MissingExtra(command, exc.name, "bridge")


def _quiet_tensorflow() -> None:
    """Before a command first imports TensorFlow: keep its C++ start-up logging (CPU features, no
    CUDA driver: `failed call to cuInit`) off the terminal, unless TF_CPP_MIN_LOG_LEVEL says otherwise.
    Python errors are unaffected."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


# --------------------------------------------------------------------------- commands

def cmd_serve(args) -> int:
    from service.__main__ import make, run
    from service.config import from_env

    logging.basicConfig(level=(from_env()["LOG_LEVEL"] or "INFO").upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    server = make(None, args.host, args.port)
    print(f"orca ML endpoint listening on http://{server.host}:{server.server_port}/", flush=True)
    run(server)
    return 0


def cmd_demo(args) -> int:
    from service import demo

    demo.run(args)
    return 0


def cmd_train(args) -> int:
    from service.params import Limits, train_params

    query = {"model_url": args.model_url, "labeled_url": args.labeled_url, "img_width": str(args.img_width),
             "img_height": str(args.img_height), "epochs": str(args.epochs)}
    if args.seed is not None:
        query["seed"] = str(args.seed)
    params = train_params(query, Limits())
    bar = _bar("epochs", params.epochs, "epoch")

    def on_epoch(epoch, epochs, m):
        bar.set_postfix_str(f"loss={m['loss']:.4f} acc={m['acc']:.3f} val_loss={m['val_loss']:.4f} "
                            f"val_acc={m['val_acc']:.3f}", refresh=False)
        bar.update(epoch - bar.n)

    try:
        result = _run_train(params, on_epoch)
    finally:
        bar.close()
    _emit(result, args.output)
    return 0


def _predict_args(args) -> dict:
    """The /predict query parameters of `predict`, `embed` and `query`, as the HTTP API receives them."""
    return {"model_url": args.model_url, "unlabeled_url": args.unlabeled_url,
            "img_width": str(args.img_width), "img_height": str(args.img_height)}


def cmd_predict(args) -> int:
    from service.params import Limits, predict_params

    params = predict_params(_predict_args(args), Limits())
    bar = None

    def on_progress(done, total):
        nonlocal bar
        bar = bar or _bar("scored", total, "img")
        bar.update(done - bar.n)

    try:
        items = _run_predict(params, on_progress)
    finally:
        if bar is not None:
            bar.close()
    if items.skipped:
        print(f"skipped {len(items.skipped)} unreadable file(s): "
              + ", ".join(s["url"] for s in items.skipped), file=sys.stderr)
    _emit(list(items), args.output)
    return 0


def cmd_embed(args) -> int:
    from service.params import Limits, embed_params

    items, embeddings = _run_embed(embed_params(_predict_args(args), Limits()))
    rows = [dict(item, embedding=[float(v) for v in embeddings[i]]) for i, item in enumerate(items)]
    if args.npy:
        import numpy as np

        np.save(args.npy, embeddings if embeddings is not None else np.zeros((0, 0), np.float32))
        print(f"wrote {args.npy} ({len(rows)} embeddings)", file=sys.stderr)
        rows = list(items)
    _emit(rows, args.output)
    return 0


def cmd_query(args) -> int:
    from service.params import Limits, query_params

    raw = {**_predict_args(args), "k": str(args.k), "strategy": args.strategy}
    for name in ("passes", "seed", "labeled_url"):
        if getattr(args, name) is not None:
            raw[name] = str(getattr(args, name))
    _emit(_run_query(query_params(raw, Limits(), max_k=10**9)), args.output)
    return 0


def cmd_simulate(args) -> int:
    import torch  # noqa: F401  (before anything that may import TensorFlow)

    from service.config import from_env
    from service.allocator import keep_freed_blocks
    from scoring.errors import ScoringError
    from active_learning.simulate import SimulationConfig, simulate, write

    if from_env()["TUNE_MALLOC"]:  # as the service does (ORCA_TUNE_MALLOC): many trainings in a row
        keep_freed_blocks()
    model = args.model
    if not os.path.splitext(model)[1]:  # a registry name: a fresh model of it, in the output folder
        from models.create import write_new_model

        os.makedirs(args.out, exist_ok=True)
        model = os.path.join(args.out, f"{model}_0.pt")
        write_new_model(args.model, model, args.img_width, args.img_height, seed=0)
    config = SimulationConfig(model=model, labeled_dir=args.labeled_dir, rows=args.img_width, cols=args.img_height,
                              strategies=args.strategies.split(","), seeds=[int(s) for s in args.seeds.split(",")],
                              initial=args.initial, k=args.k, rounds=args.rounds, epochs=args.epochs,
                              passes=args.passes, batch_size=args.batch_size, device=args.device)
    bar = _bar("rounds", len(config.strategies) * len(config.seeds) * config.rounds, "round")

    def on_round(strategy, seed, row):
        bar.set_postfix_str(f"{strategy} seed {seed}: {row['labels']} labels, val_acc {row['val_acc']:.3f}")
        bar.update(1)

    try:
        results = simulate(config, on_round=on_round)
    except ScoringError as exc:
        raise SystemExit(f"error: {exc}") from None
    finally:
        bar.close()
    json_path, png_path = write(results, args.out)
    print(f"wrote {json_path} and {png_path}", file=sys.stderr)
    return 0


def cmd_evaluate(args) -> int:
    from scoring.errors import ScoringError
    from training.evaluate import evaluate_folder

    model = _local_model(args.model_url)
    try:
        scores = evaluate_folder(model, args.data_url, args.img_width, args.img_height)
    except ScoringError as exc:
        raise SystemExit(str(exc)) from None
    _emit(scores, args.output)
    return 0


def cmd_new(args) -> int:
    from conversion.errors import ConversionError
    from models.create import UnsupportedFormat, write_new_model
    from models.registry import RegistryError

    try:
        entry, spec = write_new_model(args.name, args.out, rows=args.rows, cols=args.cols, seed=args.seed)
    except (UnsupportedFormat, RegistryError, ConversionError) as exc:
        raise SystemExit(str(exc)) from None
    print(f"wrote {args.out} ({entry.name}, {spec.rows}x{spec.cols}x{spec.channels})", file=sys.stderr)
    return 0


def cmd_convert(args) -> int:
    if os.path.exists(args.dst) and not args.force:
        raise SystemExit(f"{args.dst} exists; pass --force to replace it")
    import torch  # noqa: F401  (before TensorFlow, which the bridge imports)

    _quiet_tensorflow()
    from conversion.converting import convert
    from conversion.errors import ConversionError

    try:
        written = convert(args.src, args.dst)
    except ConversionError as exc:
        raise SystemExit(str(exc)) from None
    except ImportError as exc:
        if _missing_bridge(exc):
            raise _bridge_exit("convert", exc) from None
        raise
    print(f"wrote {written}", file=sys.stderr)
    return 0


def cmd_verify(args) -> int:
    import importlib.util

    for module in ("tensorflow", "tf_keras", "tf2onnx"):  # verify's per-file errors would hide a missing one
        if importlib.util.find_spec(module) is None:
            raise MissingExtra("verify", module, "bridge")
    _quiet_tensorflow()
    from conversion.__main__ import main as conversion_main

    argv = ["verify", *args.models] + (["--tolerance", str(args.tolerance)] if args.tolerance is not None else [])
    try:
        return conversion_main(argv)
    except ImportError as exc:
        if _missing_bridge(exc):
            raise _bridge_exit("verify", exc) from None
        raise


def cmd_score(args) -> int:
    from conversion.errors import ConversionError
    from service.config import from_env
    from scoring.errors import ScoringError

    try:
        from batch_scoring.run import score_archive
        import pyarrow  # noqa: F401
        import ray  # noqa: F401
    except ImportError as exc:
        raise MissingExtra("score", exc.name, "scale") from None
    config = from_env()
    try:
        summary = score_archive(args.model, args.source, args.out, rows=args.img_width, cols=args.img_height,
                                part_size=args.part_size, workers=args.workers, device=args.device,
                                batch_size=args.batch_size, precision=config.get("PREDICT_PRECISION") or "fp32",
                                max_pixels=config["MAX_PIXELS"], s3_attempts=config["S3_MAX_ATTEMPTS"],
                                address=args.address, num_cpus=args.num_cpus, public_base=config["PUBLIC_BASE_URL"],
                                service_url=config["PUBLIC_URL"], served_root=config["LOCAL_ROOT"],
                                allow_unconditional_writes=bool(config["ALLOW_UNCONDITIONAL_WRITES"]))
    except (ScoringError, ConversionError) as exc:
        raise SystemExit(f"error: {exc}") from None
    _emit(summary.to_dict(), None)
    return 0


def _positive(text: str) -> int:
    """argparse type: a whole number >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value}: must be at least 1")
    return value


def cmd_spectrogram(args) -> int:
    """DIR/<stem>.png for each audio file (or each one under a folder): audio.spectrogram's 2020 picture.
    Existing PNGs are kept; a file that fails is reported (name: reason) and the others go on. The clips are
    drawn `--batch` at a time on each of `--workers` threads (audio.spectrogram.pixels_from_files)."""
    from pathlib import Path

    from audio.decode import AUDIO_SUFFIXES, AudioError
    from audio.spectrogram import pixels_from_files, write_png

    files = []
    for item in map(Path, args.audio):
        if item.is_dir():
            files += sorted(p for p in item.rglob("*") if p.is_file() and p.suffix.lower() in AUDIO_SUFFIXES)
        else:
            files.append(item)
    out = Path(args.out)
    wrote = kept = 0
    failed, targets, todo = [], {}, []
    from tqdm import tqdm

    bar = tqdm(total=len(files), desc="spectrograms", unit="clip", file=sys.stderr, dynamic_ncols=True,
               disable=len(files) < 2)

    def fail(message) -> None:
        bar.write(f"error: {message}", file=sys.stderr)
        bar.update(1)

    for path in files:
        target = out / f"{path.stem}.png"
        if target in targets:
            failed.append(path)
            fail(AudioError(str(path), f"{targets[target]} writes the same {target.name}"))
        elif target.exists():
            targets[target] = path
            kept += 1
            bar.update(1)
        else:
            targets[target] = path
            todo.append(path)

    def write(path, pixels):  # on the drawing threads
        return write_png(pixels, out / f"{path.stem}.png")

    for path, result in pixels_from_files(todo, batch=args.batch, workers=args.workers, then=write):
        if isinstance(result, (AudioError, OSError)):  # FileExistsError: written meanwhile by someone else
            failed.append(path)
            fail(result)
        else:
            wrote += 1
            bar.update(1)
    bar.close()
    print(f"{wrote} written, {kept} kept (already there), {len(failed)} failed -> {out}", file=sys.stderr)
    return 1 if failed or not files else 0


# --------------------------------------------------------------------------- preprocess
# `orca preprocess`: the work is in audio.preprocess; here only where the input lives (local, S3) and printing.

def cmd_preprocess(args) -> int:
    from audio.hls import PlaylistError, orcasound_defaults
    from audio.preprocess import estimated_clips, local_inputs, preprocess

    if args.output.startswith("s3://"):
        raise SystemExit("error: OUTPUT is a local folder (upload it afterwards, e.g. aws s3 sync OUTPUT s3://...)")
    if args.duration < 1:
        raise SystemExit("error: --duration must be at least 1 (whole seconds)")
    if args.duration != 3:
        print(f"warning: --duration {args.duration}: the 2020 spectrogram is the picture of a 3-second clip, so "
              "these clips are written as mp3 only (no PNG)", file=sys.stderr)
    node, folder_time = orcasound_defaults(args.input)
    location = args.location if args.location is not None else (node or "")
    start = args.starting_timestamp if args.starting_timestamp is not None else (folder_time or 0)
    if not location:
        print("warning: no --location (and INPUT is no Orcasound .../<node>/hls/<unix time>/ URL): the clips are "
              f"named _{start}.mp3, ..., which /predict reports without a location", file=sys.stderr)
    close = None
    try:
        if args.input.startswith("s3://"):
            from service.segments import storage_inputs

            remote = storage_inputs(args.input)
            inputs, left, sequence, close = remote.inputs, remote.left, remote.sequence, remote.close
            total = None
        else:
            inputs, left, sequence = local_inputs(args.input)
            total = estimated_clips([i.path or i.name for i in inputs], args.duration, not args.drop_partial)
    except (OSError, PlaylistError, ValueError) as exc:
        raise SystemExit(f"error: {exc}") from None
    if sequence and args.starting_timestamp is None:
        print(f"warning: the playlist starts at segment {sequence}, not at the start of its session: the names "
              f"count from {start} as if it did (give --starting-timestamp for the true times)", file=sys.stderr)
    if left:
        shown = ", ".join(left[:5]) + (" …" if len(left) > 5 else "")
        print(f"note: {len(left)} file(s) of INPUT are not read: {shown}", file=sys.stderr)
    if not inputs:
        if close:
            close()
        raise SystemExit(f"error: {args.input}: no .ts segments or audio files to read")
    print(f"{len(inputs)} input file(s) → {args.output}/mp3/{location}_{start}.mp3 … "
          f"({args.duration} s clips{', full clips only' if args.drop_partial else ''})", file=sys.stderr)
    # each clip's spectrogram on one OpenMP thread (audio.spectrogram.one_thread): torch's threads would mostly
    # wait for each other (bench/README.md, bench.audio)
    bar = _bar("clips", total, "clip")

    def on_clip(result):
        bar.update(1)
        if result.status == "failed":
            bar.write(f"error: clip {result.name}: {result.reason}", file=sys.stderr)

    def on_problem(problem):
        bar.write(f"error: {problem}", file=sys.stderr)

    try:
        summary = preprocess(inputs, args.output, duration=args.duration, location=location,
                             starting_timestamp=start, partial=not args.drop_partial, on_clip=on_clip,
                             on_problem=on_problem)
    except OSError as exc:  # OUTPUT cannot be made (a file of that name, no permission, disk full)
        raise SystemExit(f"error: {args.output}: {exc.strerror or exc}") from None
    finally:
        bar.close()
        if close:
            close()
    tail = (f"; the last {summary.dropped_seconds:.2f} s are in no clip (shorter than 1 s)"
            if summary.dropped_seconds and not args.drop_partial else
            f"; the last {summary.dropped_seconds:.2f} s are in no clip (--drop-partial)" if summary.dropped_seconds
            else "")
    print(f"{summary.line()} ({summary.seconds:.2f} s of audio{tail})", file=sys.stderr)
    _emit(summary.to_dict(), args.summary)
    return 0 if summary.ok else 1


def _preprocess_parser(sub) -> None:
    pre = sub.add_parser(
        "preprocess", help="HLS segments (or long recordings) → OUTPUT/mp3/ clips + OUTPUT/spectrograms/ PNGs",
        description="Read INPUT's audio in order as one recording, cut it into clips of --duration seconds "
        "from 0 and write OUTPUT/mp3/<location>_<T + start>.mp3 (the source's rate and channels, 128 kb/s) and "
        "OUTPUT/spectrograms/<same>.png (what `orca spectrogram` draws from that mp3): the layout /predict "
        "reads, as orcaal's preprocess_unlabeled.py wrote it. As the original, the trailing partial clip is "
        "written when at least 1 s remains after the last full clip (--drop-partial: full clips only). "
        "Existing files are kept: a rerun completes what is missing. Bad inputs and clips are reported, the "
        "rest goes on; the exit status is 1 if any failed. See docs/audio.md.")
    pre.add_argument("input", help="a folder of liveNNN.ts segments (read in numeric order) or of wav/flac/mp3 "
                     "recordings, an .m3u8 playlist, one audio file, or the same on S3 (s3://bucket/prefix/)")
    pre.add_argument("output", help="local folder: OUTPUT/mp3/ and OUTPUT/spectrograms/")
    pre.add_argument("-d", "--duration", type=int, default=3, help="seconds per clip (default: %(default)s)")
    pre.add_argument("-l", "--location", help="the clips' name prefix (default: the node of an Orcasound URL "
                     ".../<node>/hls/<unix time>/, rpi_orcasound_lab → orcasoundlab; else '', as the original)")
    pre.add_argument("-s", "--starting-timestamp", "--starting_timestamp", dest="starting_timestamp", type=int,
                     help="unix time of the first sample, the first clip's name (default: the <unix time> folder "
                     "of an Orcasound URL, else 0)")
    pre.add_argument("--drop-partial", action="store_true",
                     help="write full clips only (default: also the trailing partial clip, as the original)")
    pre.add_argument("--summary", help="write the JSON summary to this file instead of stdout")
    pre.set_defaults(run=cmd_preprocess)


# --------------------------------------------------------------------------- main

def _image_args(p):
    p.add_argument("--img_width", "--img-width", type=int, required=True, help="image rows (as the HTTP API)")
    p.add_argument("--img_height", "--img-height", type=int, required=True, help="image columns")
    p.add_argument("--output", "-o", help="write the JSON here instead of stdout")


MODEL_URL_HELP = "the model: .h5, .onnx or .pt (s3:// or a local path)"
UNLABELED_URL_HELP = "the prefix holding spectrograms/<stem>.png (and mp3/): clips without a PNG are scored from audio"


def parser() -> argparse.ArgumentParser:
    from service import demo

    p = argparse.ArgumentParser(prog="orca", description="The orca ML endpoint's command line.",
                                epilog="\n\n".join(__doc__.split("\n\n")[1:]),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve = sub.add_parser("serve", help="serve /train and /predict (werkzeug, threaded; gunicorn in production)")
    serve.add_argument("--host", help="address to listen on (default: $HOST, else 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (default: $PORT, else 5001; 0 picks a free one)")
    serve.set_defaults(run=cmd_serve)
    demo_cmd = sub.add_parser("demo", help="lay out the bundled sample data under ./local and serve it",
                              description=demo.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    demo.add_arguments(demo_cmd)
    demo_cmd.set_defaults(run=cmd_demo)
    train = sub.add_parser("train", help="fine-tune a model, write the next version, print /train's JSON")
    train.add_argument("--model_url", "--model-url", required=True, help="the model to fine-tune: NAME_N.h5 or .pt "
                       "(s3:// or a local path); NAME_N+1 is written beside it")
    train.add_argument("--labeled_url", "--labeled-url", required=True,
                       help="the labeled set: a prefix holding train/<class>/ and validation/<class>/")
    train.add_argument("--epochs", type=int, required=True, help="epochs to train (at most ORCA_MAX_EPOCHS)")
    train.add_argument("--seed", type=int, help="0 … 2³²−1: shuffling, augmentation and dropout become repeatable (on the CPU)")
    _image_args(train)
    train.set_defaults(run=cmd_train)
    predict = sub.add_parser("predict", help="score every unlabeled clip (its PNG, else its mp3), print /predict's JSON")
    predict.add_argument("--model_url", "--model-url", required=True, help=MODEL_URL_HELP)
    predict.add_argument("--unlabeled_url", "--unlabeled-url", required=True, help=UNLABELED_URL_HELP)
    _image_args(predict)
    predict.set_defaults(run=cmd_predict)
    evaluate = sub.add_parser("evaluate", help="accuracy, ROC AUC and AP on a folder of <class>/ images")
    evaluate.add_argument("--model_url", "--model-url", required=True, help=MODEL_URL_HELP)
    evaluate.add_argument("--data_url", "--data-url", required=True, help="a local folder with two class folders")
    _image_args(evaluate)
    evaluate.set_defaults(run=cmd_evaluate)
    new = sub.add_parser("new", help="write a fresh, untrained model of the registry")
    new.add_argument("name", help="registry name (srkw_cnn, small_cnn, …) or package.module:Class")
    new.add_argument("out", help="NAME_0.pt (or srkw_cnn_0.h5)")
    new.add_argument("--rows", type=int, help="input rows, the img_width of /train and /predict (default: the "
                     "registered size)")
    new.add_argument("--cols", type=int, help="input columns, the img_height (default: the registered size)")
    new.add_argument("--seed", type=int, default=0, help="seed of the initial weights (default: 0)")
    new.set_defaults(run=cmd_new)
    conv = sub.add_parser("convert", help="convert a model between .h5, .onnx and .pt")
    conv.add_argument("src", help="the model to convert: .h5, .pt or .onnx")
    conv.add_argument("dst", help="the file to write; its extension (.h5, .pt, .onnx) picks the format")
    conv.add_argument("--force", action="store_true", help="replace an existing DST")
    conv.set_defaults(run=cmd_convert)
    verify = sub.add_parser("verify", help="Keras vs PyTorch vs ONNX Runtime parity of .h5 files (needs [bridge])")
    verify.add_argument("models", nargs="+", help="Keras .h5 model files, or folders of them")
    verify.add_argument("--tolerance", type=float,
                        help="largest allowed max|Δ| / max(1, max|y|) (default 1e-4)")
    verify.set_defaults(run=cmd_verify)
    score = sub.add_parser("score", help="score an archive of spectrograms on Ray into Parquet (needs [scale])",
                           description="Score every SOURCE/spectrograms/<stem>.png (or, without it, SOURCE/mp3/<stem>.mp3) with MODEL "
                           "on Ray Data (a local "
                           "Ray, or the cluster at --address / RAY_ADDRESS) into DEST/part-NNNNNN.parquet, one row "
                           "per clip with /predict's fields. Re-running completes what a failed run left. "
                           "See docs/scoring.md.")
    score.add_argument("model", help="model URL: .h5, .onnx or .pt (s3:// or a local path)")
    score.add_argument("source", help="the prefix holding spectrograms/ (and mp3/): /predict's unlabeled_url")
    score.add_argument("--out", required=True, help="where the Parquet parts go (s3:// or a local folder)")
    score.add_argument("--img_width", "--img-width", type=int, help="image rows (default: the model's input size)")
    score.add_argument("--img_height", "--img-height", type=int, help="image columns (default: the model's)")
    score.add_argument("--part-size", type=int, default=1000, help="clips per Parquet part (default 1000)")
    score.add_argument("--workers", type=int, help="scoring actors (default: one per GPU, else one per CPU)")
    score.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                       help="cuda: torch on GPU actors; cpu: ONNX Runtime on CPU actors; auto: cuda where Ray has GPUs")
    score.add_argument("--batch-size", type=int, help="images per scoring batch (default 16 on CPUs, 64 on GPUs)")
    score.add_argument("--address", help="Ray cluster to join (default: RAY_ADDRESS, else a local Ray)")
    score.add_argument("--num-cpus", type=int, help="CPUs of the local Ray this command starts (default: all)")
    score.set_defaults(run=cmd_score)
    embed = sub.add_parser("embed", help="/predict's items plus each clip's embedding, as /embed")
    embed.add_argument("--model_url", "--model-url", required=True, help=MODEL_URL_HELP)
    embed.add_argument("--unlabeled_url", "--unlabeled-url", required=True, help=UNLABELED_URL_HELP)
    embed.add_argument("--npy", help="write the embeddings to this .npy (rows in the JSON's order) and leave "
                       "them out of the JSON")
    _image_args(embed)
    embed.set_defaults(run=cmd_embed)
    query = sub.add_parser("query", help="the k clips to label next by a query strategy, as /query")
    query.add_argument("--model_url", "--model-url", required=True, help=MODEL_URL_HELP)
    query.add_argument("--unlabeled_url", "--unlabeled-url", required=True, help=UNLABELED_URL_HELP)
    query.add_argument("--k", type=int, required=True, help="how many clips to return")
    query.add_argument("--strategy", default="uncertainty",
                       help="uncertainty, entropy, bald, variation_ratio, coreset, badge or random")
    query.add_argument("--passes", type=int, help="Monte Carlo dropout passes (bald, variation_ratio; default 10)")
    query.add_argument("--seed", type=int, help="seed of the random choices (random, coreset, badge, dropout)")
    query.add_argument("--labeled_url", "--labeled-url", help="coreset: the labeled set to stay away from")
    _image_args(query)
    query.set_defaults(run=cmd_query)
    sim = sub.add_parser("simulate", help="pool-based simulation of query strategies on a labeled folder",
                         description="The training split of LABELED_DIR is the pool (labels hidden until "
                         "queried), its validation split the yardstick; see docs/active-learning.md.")
    sim.add_argument("labeled_dir", help="a folder with train/<class>/ and validation/<class>/ images")
    sim.add_argument("--model", required=True, help="a model file (.h5, .pt, .onnx) or a registry name (small_cnn)")
    sim.add_argument("--out", required=True, help="folder for simulation.json and simulation.png")
    sim.add_argument("--strategies", default="uncertainty,random", help="comma-separated (default uncertainty,random)")
    sim.add_argument("--seeds", default="0", help="comma-separated seeds (default 0)")
    sim.add_argument("--initial", type=int, default=4, help="labeled clips at the start (default 4)")
    sim.add_argument("--k", type=int, default=4, help="clips queried per round (default 4)")
    sim.add_argument("--rounds", type=int, default=3, help="training rounds (default 3)")
    sim.add_argument("--epochs", type=int, default=2, help="epochs per round (default 2)")
    sim.add_argument("--passes", type=int, default=10, help="Monte Carlo dropout passes (default 10)")
    sim.add_argument("--batch-size", type=int, default=32, help="training and scoring batch (default 32)")
    sim.add_argument("--device", help="torch device (default: CUDA if available)")
    sim.add_argument("--img_width", "--img-width", type=int, required=True, help="image rows")
    sim.add_argument("--img_height", "--img-height", type=int, required=True, help="image columns")
    sim.set_defaults(run=cmd_simulate)
    _preprocess_parser(sub)
    spec = sub.add_parser("spectrogram", help="the 2020 spectrogram PNG of audio clips (docs/audio.md)",
                          description="Writes OUT/<stem>.png for each audio file (mp3, wav, flac, .ts, ...) or "
                          "for every audio file under a folder; existing PNGs are kept.")
    spec.add_argument("audio", nargs="+", help="audio files or folders")
    spec.add_argument("--out", required=True, help="folder for the PNGs")
    spec.add_argument("--workers", type=_positive, default=None,
                      help="threads drawing clips (default: one per CPU)")
    spec.add_argument("--batch", type=_positive, default=16,
                      help="clips each thread decodes and draws together (default 16)")
    spec.set_defaults(run=cmd_spectrogram)
    return p


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    if args.command not in ("serve", "demo"):  # those two log at INFO, as servers do
        from service.config import from_env

        level = (from_env()["LOG_LEVEL"] or "WARNING").upper()
        logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
        for handler in logging.getLogger().handlers:
            handler.setLevel(level)
    from service.errors import ServiceError

    try:
        return args.run(args)
    except (ServiceError, MissingExtra) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `orca predict ... | head`: the reader left; no traceback
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
