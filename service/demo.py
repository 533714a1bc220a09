"""`orca demo` (`make demo`; also `python -m service.demo`): run the endpoint on the bundled Orcasound sample data.

Lays out, under `./local/` (or `--dir`), without touching files that already exist:

    local/models/srkw_cnn_0.h5                     a fresh, untrained srkw_cnn (607×617)
    local/labeled/{train,validation}/{calls,nocalls}/*.png   from sample_data/orcasound
    local/unlabeled/spectrograms/orcasoundlab_<unix seconds>.png   sample_data/orcasound/test, renamed
    local/unlabeled/mp3/                           (empty: these spectrograms come without their audio)
    local/unlabeled_audio/mp3/orcasoundlab_<unix seconds>.mp3   the 4 real clips of sample_data/orcasound_audio
    local/labeled_audio/{train,validation}/{calls,nocalls}/*.mp3   the same 4 clips, 2 calls + 2 nocalls:
                                                   the first of each class (by name) trains, the second validates

then serves the endpoint on it, with its job database under `local/state/`, its caches (models, ONNX
exports, decoded pixels) under `local/cache/` and a request's scratch under `local/work/` (unless
ORCA_STATE_DIR, ORCA_CACHE_DIR, ORCA_WORK_DIR say otherwise), so `make clean` removes all it made, and prints ready-to-paste curl lines: /train and /predict on the PNG sets,
then on the audio sets (scored straight from the mp3s: docs/audio.md, "Audio datasets"). The audio sets
are small: 4 clips, 2 of them to train on; they show the audio path works, not a trained model.
"""

from __future__ import annotations

import argparse
import os
import shutil
from pathlib import Path

from .config import from_env

SAMPLE = Path(__file__).resolve().parent.parent / "sample_data" / "orcasound"
SAMPLE_AUDIO = Path(__file__).resolve().parent.parent / "sample_data" / "orcasound_audio"  # mp3/{calls,nocalls}/
FIRST_TIMESTAMP = 1594154118  # the first clip of the original README's example
ROWS, COLS = 607, 617


def _copy_missing(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    if not dst.exists():
        shutil.copyfile(src, dst)


def prepare(root: str | os.PathLike = "local", sample: Path = SAMPLE, sample_audio: Path = SAMPLE_AUDIO) -> dict[str, str]:
    """Create the demo layout under `root`; return the URLs to call the endpoint with."""
    root = Path(root)
    model = root / "models" / "srkw_cnn_0.h5"
    if not model.exists():
        from models.srkw_cnn import write_fresh_h5

        model.parent.mkdir(parents=True, exist_ok=True)
        write_fresh_h5(model, ROWS, COLS, seed=0)
    for split in ("train", "validation"):
        for png in sorted((sample / split).glob("*/*.png")):
            _copy_missing(png, root / "labeled" / split / png.parent.name / png.name)
    tests = sorted((sample / "test").glob("*/*.png"))
    for i, png in enumerate(tests):
        _copy_missing(png, root / "unlabeled" / "spectrograms" / f"orcasoundlab_{FIRST_TIMESTAMP + 3 * i}.png")
    (root / "unlabeled" / "mp3").mkdir(parents=True, exist_ok=True)
    for cls in ("calls", "nocalls"):
        clips = sorted((sample_audio / "mp3" / cls).glob("*.mp3"))
        for i, mp3 in enumerate(clips):
            _copy_missing(mp3, root / "unlabeled_audio" / "mp3" / mp3.name)
            split = "train" if i % 2 == 0 else "validation"
            _copy_missing(mp3, root / "labeled_audio" / split / cls / mp3.name)
    return {
        "model_url": f"{root.as_posix()}/models/srkw_cnn_0.h5",
        "labeled_url": f"{root.as_posix()}/labeled/",
        "unlabeled_url": f"{root.as_posix()}/unlabeled/",
        "labeled_audio_url": f"{root.as_posix()}/labeled_audio/",
        "unlabeled_audio_url": f"{root.as_posix()}/unlabeled_audio/",
    }


def service_config(root: str | os.PathLike = "local") -> dict:
    """What the demo serves `root` with (overlaying the environment): local URLs inside `root`; the
    state, caches and scratch space under it too, except those the environment sets."""
    root = Path(root).resolve()
    config = {"LOCAL_ROOT": str(root)}
    env = from_env()
    for key, name in (("STATE_DIR", "state"), ("CACHE_DIR", "cache"), ("WORK_DIR", "work")):
        if env[key] is None:
            config[key] = str(root / name)
    if "WORK_DIR" in config:  # tempfile wants it to exist; the others are created on first use
        Path(config["WORK_DIR"]).mkdir(parents=True, exist_ok=True)
    return config


def curl_lines(base: str, urls: dict[str, str]) -> list[str]:
    """/train and /predict on the PNG sets, then the same on the audio sets."""
    size = f"img_width={ROWS}&img_height={COLS}"
    model = urls["model_url"]
    return [
        f"curl '{base}/train?model_url={model}&labeled_url={urls['labeled_url']}&{size}&epochs=1'",
        f"curl '{base}/predict?model_url={model}&unlabeled_url={urls['unlabeled_url']}&{size}'",
        f"curl '{base}/train?model_url={model}&labeled_url={urls['labeled_audio_url']}&{size}&epochs=1'",
        f"curl '{base}/predict?model_url={model}&unlabeled_url={urls['unlabeled_audio_url']}&{size}'",
    ]


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The demo's options (`python -m service.demo` and `orca demo`)."""
    parser.add_argument("--dir", default="local", help="where to lay out the demo data (default: local)")
    config = from_env()
    parser.add_argument("--host", default=config["HOST"], help="address to listen on (default: $HOST, else "
                        "127.0.0.1)")
    parser.add_argument("--port", type=int, default=config["PORT"], help="port (default: $PORT, else 5001; 0 picks "
                        "a free one)")
    parser.add_argument("--prepare-only", action="store_true", help="lay out the data, do not serve")
    return parser


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    run(add_arguments(parser).parse_args(argv))


def run(args: argparse.Namespace) -> None:
    """Lay out the demo data under `args.dir`, then serve it (unless `args.prepare_only`)."""
    urls = prepare(args.dir)
    print(f"demo data ready under {Path(args.dir).resolve()}", flush=True)
    if args.prepare_only:
        for line in curl_lines(f"http://127.0.0.1:{args.port}", urls):
            print("  " + line)
        return
    import logging

    from .__main__ import make, run
    from .app import create_app

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    server = make(create_app(service_config(args.dir)), args.host, args.port)
    host = "127.0.0.1" if args.host in ("0.0.0.0", "") else args.host
    print(f"orca ML endpoint listening on http://{host}:{server.server_port}/", flush=True)
    print("try (the first line trains one epoch and writes srkw_cnn_1.h5 beside srkw_cnn_0.h5; the last two "
          "train and score from the mp3 clips):")
    for line in curl_lines(f"http://{host}:{server.server_port}", urls):
        print("  " + line, flush=True)
    run(server)


if __name__ == "__main__":
    main()
