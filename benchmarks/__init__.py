"""TensorGate's benchmark harness: benchmark models, closed-loop load generators, the model's
offline limit measured in the same run, and reports (markdown, JSON, PNG).

Entry point: ``tensorgate bench`` (see ``benchmarks.cli``). Recorded results live in
``benchmarks/results/``.
"""
