"""Reference models × device profiles: does each compile, and does it match PyTorch?

Runnable targets are checked numerically against PyTorch; compile-only ones (Core ML on Linux,
cross-compiled TVM, Android) report their structural checks.  TVM compiles untuned unless a tuning
database exists (correct numbers, slow code).

    python benchmarks/target_matrix.py [--models ...] [--profiles ...]
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

MODELS = "efficientformer_l1,poolformer_s12,lmuformer"
PROFILES = "host-ort,host-openvino,host-executorch,host-tvm,iphone12-coreml,android-arm64-xnnpack,rpi4-tvm"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=MODELS)
    ap.add_argument("--profiles", default=PROFILES)
    args = ap.parse_args(argv)
    warnings.filterwarnings("ignore")
    logging.getLogger("torch").setLevel(logging.ERROR)

    from edgeformer.compiler import compile

    rows = []
    print(f"{'model':<20}{'profile':<24}{'status':<10}{'max|err|':>10}{'compile s':>11}{'MB':>8}  notes")
    for model in args.models.split(","):
        for profile in args.profiles.split(","):
            with tempfile.TemporaryDirectory() as tmp:
                t0 = time.perf_counter()
                row = {"model": model, "profile": profile}
                try:
                    r = compile(model, profile, Path(tmp) / "a", use_cache=False)
                    n = r.manifest.numerics
                    checks = r.manifest.structural_checks
                    row.update(
                        status=n.status,
                        max_abs_error=n.max_abs_error,
                        cosine=n.cosine,
                        reason=n.reason,
                        structural_checks_passed=sum(checks.values()),
                        structural_checks=len(checks),
                        megabytes=sum(f.bytes for f in r.manifest.files) / 1e6,
                        details={k: v for k, v in r.manifest.target_details.items() if not isinstance(v, (dict, list))},
                    )
                except Exception as err:  # noqa: BLE001 - report every cell, keep going
                    row.update(status="error", reason=str(err)[:300])
                row["compile_s"] = time.perf_counter() - t0
            rows.append(row)
            note = row.get("reason", "")[:70]
            if row.get("structural_checks"):
                note = f"{row['structural_checks_passed']}/{row['structural_checks']} structural checks; " + note
            err = row.get("max_abs_error")
            print(
                f"{model:<20}{profile:<24}{row['status']:<10}{(f'{err:.1e}' if err is not None else '-'):>10}"
                f"{row['compile_s']:>11.1f}{row.get('megabytes', 0):>8.1f}  {note}",
                flush=True,
            )
    path = write_result("target_matrix", {"rows": rows})
    print(f"wrote {path}")
    return 0 if all(r["status"] in ("passed", "skipped") for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
