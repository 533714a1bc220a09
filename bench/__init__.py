"""Benchmark of this service against the original endpoint's tf_keras pipeline (`python -m bench.run`)."""
