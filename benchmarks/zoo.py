"""Every zoo model at its real size: params and MACs vs published, export, host-ort compile, numerics.

The test suite covers the tiny configurations and EfficientFormer-L1; this is the full sweep.

    python benchmarks/zoo.py [--models efficientformer_l1,poolformer_s12] [--skip-compile]
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import write_result  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", help="comma-separated names (default: every non-tiny model)")
    ap.add_argument("--skip-compile", action="store_true")
    args = ap.parse_args(argv)
    warnings.filterwarnings("ignore")
    logging.getLogger("torch").setLevel(logging.ERROR)

    import torch

    from edgeformer.compiler import compile
    from edgeformer.models import list_models
    from edgeformer.sources import load_model

    torch.set_num_threads(2)
    specs = [s for s in list_models() if "tiny" not in s.tags]
    if args.models:
        wanted = set(args.models.split(","))
        specs = [s for s in specs if s.name in wanted]
    rows = []
    print(
        f"{'model':<26}{'params':>12}{'published':>11}{'Δ%':>7}{'MACs G':>9}{'published':>10}{'Δ%':>7}"
        f"{'export s':>10}{'compile s':>10}{'max|err|':>10}{'cosine':>11}"
    )
    for spec in specs:
        t0 = time.perf_counter()
        src = load_model(spec.name)
        export_s = time.perf_counter() - t0
        params = sum(p.numel() for p in src.module.parameters())
        macs = src.graph.summary().total_macs
        row = {
            "model": spec.name,
            "params": params,
            "published_params": spec.published_params,
            "macs": macs,
            "published_macs": spec.published_macs,
            "export_s": export_s,
            "registry_params": spec.params,
            "registry_macs": spec.macs,
        }
        if not args.skip_compile:
            with tempfile.TemporaryDirectory() as tmp:
                t0 = time.perf_counter()
                try:
                    report = compile(spec.name, "host-ort", Path(tmp) / "a", use_cache=False)
                    n = report.manifest.numerics
                    row.update(
                        compile_s=time.perf_counter() - t0,
                        numerics=n.status,
                        max_abs_error=n.max_abs_error,
                        cosine=n.cosine,
                    )
                except Exception as err:  # noqa: BLE001 - report every model, keep going
                    row.update(compile_s=time.perf_counter() - t0, numerics="error", error=str(err)[:300])
        rows.append(row)

        def pct(a, b):
            return f"{100 * (a - b) / b:+.1f}" if b else "-"

        print(
            f"{spec.name:<26}{params:>12,}{(spec.published_params or 0) / 1e6:>10.2f}M"
            f"{pct(params, spec.published_params):>7}{macs / 1e9:>9.3f}{(spec.published_macs or 0) / 1e9:>10.2f}"
            f"{pct(macs, spec.published_macs):>7}{export_s:>10.1f}{row.get('compile_s', 0):>10.1f}"
            f"{(row.get('max_abs_error') or 0):>10.2e}{(row.get('cosine') or 0):>11.7f}"
            + (f"  {row.get('error', '')[:80]}" if row.get("numerics") == "error" else ""),
            flush=True,
        )
    path = write_result("zoo", {"models": rows})
    print(f"wrote {path}")
    return 0 if all(r.get("numerics", "passed") == "passed" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
