"""`python -m bench.run`: this service against the original endpoint's pipeline, on the same machine.

1. makes a dataset of spectrograms derived from the bundled sample PNGs (`bench.dataset`);
2. starts moto's S3 server on 127.0.0.1 (a free port) and uploads the data and a fresh
   `srkw_cnn_0.h5`;
3. runs the reference (`bench.reference`: tf_keras ImageDataGenerator + predict / fit, the original
   pipeline) in its own process: /predict twice (cold, warm) and /train;
4. starts this service (`python -m service`, its own process, no TensorFlow) pointed at the same
   S3 server and times, over real HTTP, /predict cold (first call), /predict warm (second call)
   and /train with the same epochs;
5. with `--rounds N` (default 2), times N whole active-learning rounds on each side
   (`bench.rounds`: train, predict with the new model, 5 % of the clips labeled);
6. with `--cold-pairs K` (default 2), times K more cold /predict calls on each side, in pairs of new
   processes (`bench.cold`), and reports the median ratio;
7. with `--audio-clips N` (default 40, `--quick` 8, 0: none), from audio to scores on N clips
   (`bench.from_audio`): the 2020 preprocessing + the original /predict against this service's cold
   /predict on the audio-only set, and that against its /predict on the same clips' PNGs;
8. prints a table and writes `results.json` and `results.png` into --out.

Images per second: /predict = unlabeled images / request seconds; /train = training images × epochs
/ request seconds; every request figure includes the S3 downloads and model loading, as a client
sees it. speedup = ours / reference (> 1: this service is faster). Peak memory = VmHWM of each
process (the reference's process includes TensorFlow's import; the service's includes torch's).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import torch  # noqa: F401  (torch before anything that might import TensorFlow; see docs/design.md)

from .chart import bar_chart
from .cold import cold_pairs, print_cold_pairs
from .dataset import make_dataset
from .from_audio import print_audio, run_audio
from .memory import GpuMemoryPeak, proc_status_mib
from .reference_process import run_reference
from .rounds import print_rounds, reference_rounds, service_rounds, summary, undo
from .s3 import upload_tree

ROOT = Path(__file__).resolve().parent.parent
BUCKET = "orcabench"
QUICK = {"unlabeled": 32, "labeled": 16, "epochs": 1, "rounds": 1, "cold_pairs": 1, "audio_clips": 8}
DEFAULTS = {"unlabeled": 256, "labeled": 128, "epochs": 2, "rounds": 2, "cold_pairs": 2, "audio_clips": 40}
AWS_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_SESSION_TOKEN": "testing",
           "AWS_DEFAULT_REGION": "us-east-1"}
STAGES = ("predict_cold", "predict_warm", "train", "predict_new_model")
# The reference's cost does not depend on the weights: its /predict after a training is its warm run.
REFERENCE_STAGE = {"predict_cold": "predict_cold", "predict_warm": "predict_warm", "train": "train",
                   "predict_new_model": "predict_warm"}

_T0 = time.perf_counter()


LOAD: dict[str, list[float]] = {}  # 1-minute load average when each stage ended


def progress(message: str) -> None:
    print(f"[bench {time.perf_counter() - _T0:7.1f} s] {message}", flush=True)


def cpu_model() -> str:
    """`lscpu`'s model name (the figure's machine), else the platform's processor string."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return platform.processor() or platform.machine()


def pixel_cache_counts(metrics_text: str) -> dict:
    """The service's `orca_pixel_*` samples from its /metrics text (decodes, hits, misses)."""
    counts = {}
    for line in metrics_text.splitlines():
        if line.startswith("orca_pixel_") and not line.startswith("#") and "_created" not in line:
            name, _, value = line.rpartition(" ")
            counts[name] = float(value)
    return counts


def note_load(stage: str) -> None:
    """Other processes on the machine skew every timing: record the load average per stage."""
    LOAD[stage] = [round(v, 2) for v in os.getloadavg()]


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.splitlines()[0])
    parser.add_argument("--unlabeled", type=int, help=f"unlabeled spectrograms (default {DEFAULTS['unlabeled']})")
    parser.add_argument("--labeled", type=int, help=f"labeled spectrograms, 3/4 train (default {DEFAULTS['labeled']})")
    parser.add_argument("--rows", type=int, default=607, help="img_width: image rows (default 607)")
    parser.add_argument("--cols", type=int, default=617, help="img_height: image columns (default 617)")
    parser.add_argument("--epochs", type=int, help=f"training epochs (default {DEFAULTS['epochs']})")
    parser.add_argument("--rounds", type=int, help=f"whole active-learning rounds timed after the stages "
                        f"(default {DEFAULTS['rounds']}; 0: none)")
    parser.add_argument("--cold-pairs", type=int, help="cold /predict pairs (reference, then ours, new processes) "
                        f"timed after the rounds (default {DEFAULTS['cold_pairs']}; 0: none)")
    parser.add_argument("--audio-clips", type=int, help="clips of the from-audio comparison (bench.from_audio) "
                        f"timed at the end (default {DEFAULTS['audio_clips']}; 0: none)")
    parser.add_argument("--original-python", metavar="PYTHON",
                        help="the from-audio comparison's 2020 preprocessing in the 2020 environment: DEST/venv/bin/python "
                        "of ../shared/tools/spectrogram-reference/setup.sh DEST (default: the current-library stand-in, "
                        "bench.audio.Original)")
    parser.add_argument("--out", default="bench/results", help="folder for results.json/results.png")
    parser.add_argument("--quick", action="store_true",
                        help=f"smoke run: {QUICK} unless given explicitly")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds per stage before giving up")
    parser.add_argument("--no-reference", action="store_true",
                        help="time this service only (also chosen, with a note, where TensorFlow is not installed)")
    args = parser.parse_args(argv)
    base = QUICK if args.quick else DEFAULTS
    for key, value in base.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    for key in ("unlabeled", "labeled", "rows", "cols", "epochs"):
        if getattr(args, key) < 1:
            parser.error(f"--{key} must be positive")
    for key in ("rounds", "cold_pairs", "audio_clips"):
        if getattr(args, key) < 0:
            parser.error(f"--{key.replace('_', '-')} must be 0 or more")
    return args


class Service:
    """`python -m service` in a subprocess on a free port; its output goes to `log_path`."""

    def __init__(self, env: dict, log_path: Path, timeout: float = 120):
        self.log_path = log_path
        self.log = open(log_path, "wb")
        started = time.perf_counter()
        self.process = subprocess.Popen([sys.executable, "-m", "service"], cwd=ROOT, env=env,
                                        stdout=self.log, stderr=subprocess.STDOUT)
        self.base = None
        while time.perf_counter() - started < timeout:
            text = log_path.read_text(errors="replace")
            marker = "listening on "
            if marker in text:
                self.base = text.split(marker, 1)[1].split()[0].rstrip("/")
                break
            if self.process.poll() is not None:
                raise RuntimeError(f"the service exited with {self.process.returncode}:\n{text[-3000:]}")
            time.sleep(0.1)
        if self.base is None:
            self.stop()
            raise RuntimeError(f"the service did not start within {timeout} s")
        self.get("/")  # not /health: see bench/README.md (it loads torch in the service as of this commit)
        self.startup_s = time.perf_counter() - started
        self.ready_s = self.wait_ready(started + timeout) - started  # as a readiness probe would: torch loaded

    def wait_ready(self, deadline: float) -> float:
        """Poll /ready until it answers 200 (503 while torch loads, ORCA_PRELOAD_TORCH); the time then."""
        while True:
            try:
                with urllib.request.urlopen(f"{self.base}/ready", timeout=30):
                    return time.perf_counter()
            except urllib.error.HTTPError as error:
                if error.code != 503 or time.perf_counter() > deadline or self.process.poll() is not None:
                    raise RuntimeError(f"/ready answered {error.code}: {error.read()[:2000]!r}") from error
            time.sleep(0.2)

    def get(self, path: str, timeout: float = 3600, **params):
        url = f"{self.base}{path}" + (f"?{urllib.parse.urlencode(params)}" if params else "")
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as error:
            raise RuntimeError(f"GET {path} answered {error.code}: {error.read()[:2000]!r}") from error

    def text(self, path: str, timeout: float = 60) -> str:
        with urllib.request.urlopen(f"{self.base}{path}", timeout=timeout) as response:
            return response.read().decode()

    def timed(self, path: str, timeout: float, **params):
        t0 = time.perf_counter()
        body = self.get(path, timeout=timeout, **params)
        return body, time.perf_counter() - t0

    def memory(self) -> dict:
        return proc_status_mib(self.process.pid)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()


def reference_missing() -> str | None:
    """Why the reference cannot run here (TensorFlow or tf_keras not installed), or None."""
    import importlib.util

    missing = [name for name in ("tensorflow", "tf_keras") if importlib.util.find_spec(name) is None]
    return f"{' and '.join(missing)} not installed" if missing else None


def print_table(results: dict) -> None:
    ips, speedup = results["images_per_second"], results["speedup"]
    ref, ours = results["reference"], results["ours"]
    blank = "-"
    rows = [("stage", "reference s", "ours s", "reference img/s", "ours img/s", "speed-up")]
    for stage in STAGES:
        rows.append((stage, f"{ref['seconds'][stage]:.2f}" if ref else blank, f"{ours['seconds'][stage]:.2f}",
                     f"{ips[stage]['reference']:.2f}" if ref else blank, f"{ips[stage]['ours']:.2f}",
                     f"{speedup[stage]:.2f}x" if ref else blank))
    rows.append(("peak RSS MiB", f"{ref['peak_rss_mib']:.0f}" if ref else blank, f"{ours['peak_rss_mib']:.0f}",
                 "", "", ""))
    if ours.get("peak_gpu_mib") is not None:
        rows.append(("peak GPU MiB", blank, f"{ours['peak_gpu_mib']:.0f}", "", "", ""))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for n, row in enumerate(rows):
        print("  ".join(cell.rjust(w) if i else cell.ljust(w) for i, (cell, w) in enumerate(zip(row, widths))))
        if n == 0:
            print("  ".join("-" * w for w in widths))
    if ref:
        print(f"reference download alone: predict cold {ref['download_s']['predict_cold']:.2f} s, "
              f"train {ref['download_s']['train']:.2f} s; "
              f"max |ours - reference| prediction: {results['parity']['max_abs_diff_predict']:.2e}")
    else:
        print(f"reference not run ({results['reference_skipped']}): no speed-up; the figures are ours alone")
    print(f"load average (1, 5, 15 min) after each stage on {os.cpu_count()} cores: "
          + ", ".join(f"{k} {v}" for k, v in results.get("load_average", {}).items()))


def main(argv=None) -> dict:
    args = parse_args(argv)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, value in AWS_ENV.items():
        os.environ[name] = value
    os.environ.pop("AWS_PROFILE", None)

    import logging

    import boto3
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # moto's per-request lines

    from models.srkw_cnn import write_fresh_h5

    config = {"unlabeled": args.unlabeled, "labeled": args.labeled, "rows": args.rows, "cols": args.cols,
              "epochs": args.epochs, "rounds": args.rounds, "cold_pairs": args.cold_pairs,
              "audio_clips": args.audio_clips, "original_python": args.original_python, "quick": args.quick,
              "cpu_count": os.cpu_count(),
              "cpu_model": cpu_model(),
              "machine": platform.machine(), "python": platform.python_version(),
              "torch": torch.__version__, "orca_device": os.environ.get("ORCA_DEVICE") or "auto",
              "cuda_available": torch.cuda.is_available(),
              "cuda_device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}
    skipped = "--no-reference" if args.no_reference else reference_missing()
    note_load("start")
    progress(f"config {json.dumps(config)}")
    with tempfile.TemporaryDirectory(prefix="orca-bench-") as tmp:
        tmp = Path(tmp)
        data = make_dataset(tmp / "data", args.unlabeled, args.labeled, progress=lambda m: progress(f"dataset: {m}"))
        train_images = sum(len(v) for (split, _), v in data["labeled"].items() if split == "train")
        config["train_images"] = train_images
        config["validation_images"] = args.labeled - train_images
        model_path = write_fresh_h5(tmp / "srkw_cnn_0.h5", args.rows, args.cols, seed=0)

        moto = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        moto.start()
        service = None
        try:
            host, port = moto.get_host_and_port()
            endpoint = f"http://{host}:{port}"
            os.environ["AWS_ENDPOINT_URL"] = endpoint
            s3 = boto3.client("s3")
            s3.create_bucket(Bucket=BUCKET)
            s3.upload_file(model_path, BUCKET, "models/srkw_cnn_0.h5")
            n = upload_tree(s3, BUCKET, tmp / "data" / "unlabeled", "unlabeled/")
            n += upload_tree(s3, BUCKET, tmp / "data" / "labeled", "labeled/")
            progress(f"moto S3 on {endpoint}: uploaded the model and {n} spectrograms")
            env = dict(os.environ)

            ref, ref_rounds, cfg = None, None, None
            if skipped:
                progress(f"reference not run: {skipped}")
            else:
                progress("reference (tf_keras, own process): predict cold, predict warm, train ...")
                cfg = {"bucket": BUCKET, "model_key": "models/srkw_cnn_0.h5", "unlabeled_prefix": "unlabeled/",
                       "labeled_prefix": "labeled/", "output_key": "reference/models/srkw_cnn_1.h5",
                       "rows": args.rows, "cols": args.cols, "epochs": args.epochs}
                ref = run_reference(cfg, env, out_dir / "reference.json", out_dir / "reference.log", args.timeout,
                                    append=False)
                note_load("reference")
                progress(f"reference done: predict cold {ref['predict_cold']['timings']['total_s']:.1f} s, "
                         f"warm {ref['predict_warm']['timings']['total_s']:.1f} s, "
                         f"train {ref['train']['timings']['total_s']:.1f} s")
                if args.rounds:
                    ref_rounds, moves = reference_rounds(args.rounds, cfg, env, out_dir, s3, BUCKET, args.timeout,
                                                         progress)
                    undo(s3, BUCKET, moves)  # the service's rounds start from the same dataset
                    note_load("reference_rounds")

            progress("service (python -m service, own process) starting ...")
            service_env = dict(env, HOST="127.0.0.1", PORT="0", ORCA_LOCAL_ROOT="",
                               ORCA_WORK_DIR=str(tmp), ORCA_CACHE_DIR=str(tmp / "cache"),  # cold = empty cache
                               PYTHONUNBUFFERED="1")
            def fresh_service(name: str) -> Service:  # a new process and an empty cache: cold
                return Service(dict(service_env, ORCA_CACHE_DIR=str(tmp / f"cache-{name}")),
                               out_dir / f"service_{name}.log")

            service = Service(service_env, out_dir / "service.log")
            idle = service.memory()
            gpu = GpuMemoryPeak()
            gpu_before = gpu.read_mib() if config["cuda_available"] else None
            progress(f"service up at {service.base} in {service.startup_s:.1f} s, ready in {service.ready_s:.1f} s")
            predict_params = dict(model_url=f"s3://{BUCKET}/models/srkw_cnn_0.h5",
                                  unlabeled_url=f"s3://{BUCKET}/unlabeled/", img_width=args.rows,
                                  img_height=args.cols)
            ours_seconds, answers = {}, {}
            for stage in ("predict_cold", "predict_warm"):
                progress(f"ours: GET /predict ({stage.split('_')[1]}) on {args.unlabeled} images ...")
                answers[stage], ours_seconds[stage] = service.timed("/predict", args.timeout, **predict_params)
                note_load(f"ours_{stage}")
                progress(f"ours: {stage} {ours_seconds[stage]:.1f} s")
            memory_after_predict = service.memory()
            progress(f"ours: GET /train ({args.epochs} epochs on {train_images} images) ...")
            train_answer, ours_seconds["train"] = service.timed(
                "/train", args.timeout, model_url=f"s3://{BUCKET}/models/srkw_cnn_0.h5",
                labeled_url=f"s3://{BUCKET}/labeled/", img_width=args.rows, img_height=args.cols,
                epochs=args.epochs, seed=0)
            note_load("ours_train")
            progress(f"ours: train {ours_seconds['train']:.1f} s -> {train_answer.get('model_url')}")
            # the client's next call: /predict with the version just written (new model, warm mirror)
            progress(f"ours: GET /predict with the new model on {args.unlabeled} images ...")
            answers["predict_new_model"], ours_seconds["predict_new_model"] = service.timed(
                "/predict", args.timeout, **dict(predict_params, model_url=train_answer["model_url"]))
            note_load("ours_predict_new_model")
            progress(f"ours: predict_new_model {ours_seconds['predict_new_model']:.1f} s")
            ours_rounds = service_rounds(args.rounds, service, train_answer["model_url"], BUCKET, args.rows,
                                         args.cols, args.epochs, s3, args.timeout, progress)
            if args.rounds:
                note_load("ours_rounds")
            metrics_text = service.text("/metrics")
            memory_end = service.memory()
            peak_gpu = gpu.stop()
            service.stop()
            cold = None
            if args.cold_pairs:
                cold = cold_pairs(args.cold_pairs, cfg, env, out_dir, lambda pair: fresh_service(f"cold_{pair}"),
                                  predict_params, args.timeout, progress)
                note_load("cold_pairs")
            audio = None
            if args.audio_clips:
                audio_cfg = dict(cfg, original_python=args.original_python) if cfg and args.original_python else cfg
                audio = run_audio(args.audio_clips, s3, BUCKET, tmp / "audio-data", audio_cfg, env, out_dir, fresh_service,
                                  model_path, args.rows, args.cols, args.timeout, progress, note_load)
        finally:
            if service is not None:
                service.stop()
            moto.stop()

    work = {"predict_cold": args.unlabeled, "predict_warm": args.unlabeled, "train": train_images * args.epochs,
            "predict_new_model": args.unlabeled}
    ips = {stage: {"ours": work[stage] / ours_seconds[stage]} for stage in STAGES}
    results = {
        "config": config,
        "reference": None,
        "reference_skipped": skipped,
        "ours": {
            "seconds": ours_seconds,
            "startup_s": service.startup_s,
            "ready_s": service.ready_s,
            "idle_rss_mib": idle.get("VmRSS", 0.0),
            "peak_rss_after_predict_mib": memory_after_predict.get("VmHWM", 0.0),
            "peak_rss_mib": memory_end.get("VmHWM", 0.0),
            "gpu_mib_before_service_work": gpu_before,
            "peak_gpu_mib": peak_gpu,
            "train_result": train_answer,
        },
        "images_per_second": ips,
        "speedup": None,
        "load_average": LOAD,
        "parity": None,
        "rounds": summary(ref_rounds, ours_rounds) if args.rounds else None,
        "pixel_cache": pixel_cache_counts(metrics_text),
        "cold_pairs": cold,
        "audio": audio,
    }
    if ref is not None:
        add_reference(results, ref, work, answers)
    (out_dir / "results.json").write_text(json.dumps(results, indent=1))
    draw_chart(out_dir / "results.png", results, args, train_images)
    print_table(results)
    if results["rounds"]:
        print_rounds(results["rounds"])
    if results["cold_pairs"]:
        print_cold_pairs(results["cold_pairs"])
    if results["audio"]:
        print_audio(results["audio"])
    print(f"service pixel cache over the whole run: {results['pixel_cache']}")
    progress(f"wrote {out_dir / 'results.json'} and {out_dir / 'results.png'}")
    return results


def add_reference(results: dict, ref: dict, work: dict, answers: dict) -> None:
    """The reference's figures, the speed-ups and the prediction parity, into `results`."""
    ref_seconds = {stage: ref[REFERENCE_STAGE[stage]]["timings"]["total_s"] for stage in STAGES}
    ips = results["images_per_second"]
    for stage in STAGES:
        ips[stage]["reference"] = work[stage] / ref_seconds[stage]
    results["speedup"] = {stage: ips[stage]["ours"] / ips[stage]["reference"] for stage in STAGES}
    ours_values = {os.path.basename(item["audio_url"]).rsplit(".", 1)[0] + ".png": item["predicted_value"]
                   for item in answers["predict_warm"]}
    ref_values = ref["predict_warm"]["predictions"]
    common = sorted(set(ours_values) & set(ref_values))
    results.update({
        "reference": {
            "seconds": ref_seconds,
            "download_s": {stage: ref[REFERENCE_STAGE[stage]]["timings"]["download_s"] for stage in STAGES},
            "predict_compute_s": {stage: ref[stage]["timings"]["predict_s"] for stage in ("predict_cold", "predict_warm")},
            "fit_s": ref["train"]["timings"]["fit_s"],
            "import_s": ref["import_s"],
            "peak_rss_mib": ref["memory_mib"].get("VmHWM", 0.0),
            "tensorflow": ref["tensorflow"],
            "tf_gpus": ref["tf_gpus"],
            "train_result": ref["train"]["result"],
        },
        "parity": {"compared_predictions": len(common),
                   "max_abs_diff_predict": max((abs(ours_values[k] - ref_values[k]) for k in common), default=0.0)},
    })


def draw_chart(path: Path, results: dict, args, train_images: int) -> None:
    ips, speedup, config = results["images_per_second"], results["speedup"], results["config"]
    sides = ("reference", "ours") if results["reference"] else ("ours",)
    notes = []
    if speedup:
        notes.append("speed-up (ours / reference): " + ", ".join(f"{s} {speedup[s]:.2f}x" for s in STAGES))
        notes.append(f"peak RSS: reference {results['reference']['peak_rss_mib']:.0f} MiB, "
                     f"service {results['ours']['peak_rss_mib']:.0f} MiB")
    else:
        notes.append(f"reference not run ({results['reference_skipped']}); "
                     f"service peak RSS {results['ours']['peak_rss_mib']:.0f} MiB")
    if results["ours"].get("peak_gpu_mib") is not None:
        notes.append(f"peak GPU memory in use (nvidia-smi): {results['ours']['peak_gpu_mib']:.0f} MiB "
                     f"on {config.get('cuda_device')}")
    groups, series = list(STAGES), {side: [ips[s][side] for s in STAGES] for side in sides}
    audio = results.get("audio")
    if audio:  # mp3 clips to scores: the original's preprocessing + /predict against ours from audio, clips/s
        groups.append("from_audio")
        series["ours"].append(audio["clips"] / audio["ours_audio"]["seconds"])
        if audio["original"]:  # run with the reference
            series["reference"].append(audio["clips"] / audio["original"]["seconds"])
        notes.append(f"from_audio: {audio['clips']} mp3 clips to scores (original: 2020 preprocessing + /predict); "
                     + (f"original / ours {audio['speedup']:.2f}x; " if audio["speedup"] else "")
                     + f"ours from audio / from PNG, seconds per clip: {audio['audio_vs_png']:.2f}")
    notes.append(f"{os.cpu_count()} CPU cores, ORCA_DEVICE={config['orca_device']}, "
                 f"cuda available: {config['cuda_available']}")
    bar_chart(path, groups, series,
              title=(f"orca ML endpoint{' vs original tf_keras pipeline' if speedup else ''}: {args.unlabeled} "
                     f"unlabeled, {train_images} train images x {args.epochs} epochs, {args.rows}x{args.cols}"),
              unit="images (clips) / s", notes=notes)


if __name__ == "__main__":
    main()
