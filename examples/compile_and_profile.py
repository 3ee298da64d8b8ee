"""Compile a zoo model for this CPU, check it against PyTorch, and time it.

python examples/compile_and_profile.py [model] [profile]
"""

import sys

import edgeformer

model = sys.argv[1] if len(sys.argv) > 1 else "efficientformer_l1"
profile = sys.argv[2] if len(sys.argv) > 2 else "host-ort"

report = edgeformer.compile(model, profile, f"out/{model}-{profile}")
n = report.manifest.numerics
print(f"{model}: numerics {n.status}, max abs error {n.max_abs_error:.2e}, cosine {n.cosine:.6f}")

result = edgeformer.profile(report.path, min_runs=20, min_seconds=0.5, ops=True)
print(f"median {result.latency.median_ms:.2f} ms, p90 {result.latency.p90_ms:.2f} ms")
for op in result.ops["ops"][:5]:
    print(f"  {op['time_ms']:.3f} ms  {op['type']:<12} {op.get('source') or op['name']}")
