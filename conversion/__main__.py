"""`python -m conversion verify MODEL.h5 [...]`: Keras vs PyTorch vs ONNX Runtime parity table."""

from __future__ import annotations

import argparse
import sys
import warnings


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m conversion",
                                     description="Keras .h5 ⇄ PyTorch ⇄ ONNX bridge tools")
    commands = parser.add_subparsers(dest="command", required=True)
    verify_cmd = commands.add_parser("verify", help="compare Keras, PyTorch and ONNX Runtime outputs")
    verify_cmd.add_argument("models", nargs="+", help="Keras .h5 model files")
    verify_cmd.add_argument("--tolerance", type=float, default=None,
                            help="largest allowed max|Δ| / max(1, max|y|) (default 1e-4)")
    verify_cmd.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    import torch  # noqa: F401  (before TensorFlow)

    from .errors import ConversionError
    from .verify import DEFAULT_TOLERANCE, verify

    tolerance = DEFAULT_TOLERANCE if args.tolerance is None else args.tolerance
    warnings.filterwarnings("ignore")
    failed = 0
    for path in args.models:
        try:
            report = verify(path, seed=args.seed)
        except ConversionError as exc:
            print(f"model: {path}\nerror: {exc}\n")
            failed += 1
            continue
        verdict = "OK" if report.ok(tolerance) else "FAIL"
        print(report.table())
        print(f"{verdict}: worst {report.worst():.3e} (tolerance {tolerance:g})\n")
        failed += not report.ok(tolerance)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
