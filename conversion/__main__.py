"""`python -m conversion verify MODEL.h5|FOLDER [...]` (also `orca verify`): Keras vs PyTorch vs ONNX
Runtime parity table per file, the bit-exact round trip, and for several files a summary, one row each."""

from __future__ import annotations

import argparse
import os
import sys
import warnings


MODEL_SUFFIXES = (".h5", ".hdf5")


def model_files(arguments: list[str]) -> list[str]:
    """The files named, and the `.h5`/`.hdf5` files directly in each folder named, in order."""
    files = []
    for argument in arguments:
        if os.path.isdir(argument):
            files += sorted(os.path.join(argument, name) for name in os.listdir(argument)
                            if name.lower().endswith(MODEL_SUFFIXES) and not name.startswith("."))
        else:
            files.append(argument)
    return files


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m conversion",
                                     description="Keras .h5 ⇄ PyTorch ⇄ ONNX bridge tools")
    commands = parser.add_subparsers(dest="command", required=True)
    verify_cmd = commands.add_parser("verify", help="compare Keras, PyTorch and ONNX Runtime outputs")
    verify_cmd.add_argument("models", nargs="+", help="Keras .h5 model files, or folders of them")
    verify_cmd.add_argument("--tolerance", type=float, default=None,
                            help="largest allowed max|Δ| / max(1, max|y|) (default 1e-4)")
    verify_cmd.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    import torch  # noqa: F401  (before TensorFlow)

    from .errors import ConversionError
    from .verify import DEFAULT_TOLERANCE, round_trip_is_exact, verify

    tolerance = DEFAULT_TOLERANCE if args.tolerance is None else args.tolerance
    warnings.filterwarnings("ignore")
    rows = []  # (file, converted, parity, round trip, reason)
    for path in model_files(args.models):
        try:
            report = verify(path, seed=args.seed)
            exact = round_trip_is_exact(path)
        except (ConversionError, OSError) as exc:
            print(f"model: {path}\nerror: {exc}\n")
            rows.append((path, "no", "-", "-", str(exc).splitlines()[0]))
            continue
        except Exception as exc:  # noqa: BLE001 - one file's failure (e.g. Keras cannot load it) is its row
            print(f"model: {path}\nerror: {type(exc).__name__}: {exc}\n")
            rows.append((path, "yes", "-", "-", f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"))
            continue
        ok = report.ok(tolerance)
        print(report.table())
        print(f"{'OK' if ok else 'FAIL'}: worst {report.worst():.3e} (tolerance {tolerance:g})\n")
        rows.append((path, "yes", f"{report.worst():.1e} {'ok' if ok else 'FAIL'}",
                     "bit-exact" if exact else "DIFFERS", "" if ok and exact else "see the table above"))
    if len(rows) > 1:
        print(summary(rows))
    failed = [row for row in rows if row[1] != "yes" or not row[2].endswith(" ok") or row[3] != "bit-exact"]
    return 1 if failed else 0


def summary(rows) -> str:
    """One line per file: converted, parity, round trip, reason."""
    header = ("file", "converted", "parity", "round trip", "reason")
    names = [os.path.basename(row[0]) for row in rows]
    width = max(len(header[0]), *(len(name) for name in names))
    lines = [f"{header[0]:<{width}}  {header[1]:<9}  {header[2]:<13}  {header[3]:<10}  {header[4]}"]
    for name, (_, converted, parity, exact, reason) in zip(names, rows):
        lines.append(f"{name:<{width}}  {converted:<9}  {parity:<13}  {exact:<10}  {reason[:120]}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
