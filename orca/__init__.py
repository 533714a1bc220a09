"""The `orca` command: serve, demo, train, predict, evaluate, new, convert, verify.

`orca.cli.main(argv)` is the console script (`orca`, also `python -m orca`). Importing this package
imports nothing heavy; the commands import what they use.
"""
