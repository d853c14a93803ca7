"""Benchmarks behind BENCHMARKS.md; run each as ``python -m benchmarks.<script>`` from the repository root."""
