"""What decompose_unmasked_sdpa buys on ExecuTorch/XNNPACK, and what it would cost ORT and OpenVINO (issue 11).

A ViT-Tiny-like model (patch 16, dim 192, 3 heads, MLP ×4, ``--blocks`` blocks, 224×224, batch 1,
fp32; attention through ``F.scaled_dot_product_attention`` with no mask, as timm's ViT runs it)
and the zoo's ``pvt_v2_tiny`` are compiled through ``edgeformer.compiler.compile`` twice per
runtime: with and without the pass (ExecuTorch ships it, so "without" is ``-decompose_unmasked_sdpa``;
ORT and OpenVINO do not, so "with" is ``+decompose_unmasked_sdpa``).  Reported:

- ExecuTorch placement from the manifest: delegated vs portable op counts, partitions, the
  portable op types, and the portable kernels' share of op time (ETDump, ``profile_ops``);
- latency of each pair, timed in ONE process in alternating blocks (a pause and an untimed call
  at each switch) at ``--threads`` threads: median, IQR, and the with/without ratio (median of
  per-round ratios, with its IQR).  The machine is shared: only same-run ratios count.

Writes bench-results/sdpa_executorch.json.

    python benchmarks/sdpa_executorch.py [--blocks 4] [--rounds 15] [--per-round 5] [--threads 2]
                                         [--runtimes executorch,onnxruntime,openvino]
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from _common import write_result  # noqa: E402

PASS = "decompose_unmasked_sdpa"
PROFILES = {"executorch": "host-executorch", "onnxruntime": "host-ort", "openvino": "host-openvino"}


def vit_tiny(blocks: int):
    """ViT-Tiny's shape (timm vit_tiny_patch16_224) with ``blocks`` blocks; SDPA without a mask."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    class Attention(nn.Module):
        def __init__(self, dim, heads):
            super().__init__()
            self.heads = heads
            self.qkv = nn.Linear(dim, 3 * dim)
            self.proj = nn.Linear(dim, dim)

        def forward(self, x):
            b, n, c = x.shape
            q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
            return self.proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, c))

    class Block(nn.Module):
        def __init__(self, dim, heads):
            super().__init__()
            self.norm1, self.attn = nn.LayerNorm(dim, eps=1e-6), Attention(dim, heads)
            self.norm2 = nn.LayerNorm(dim, eps=1e-6)
            self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

        def forward(self, x):
            x = x + self.attn(self.norm1(x))
            return x + self.mlp(self.norm2(x))

    class ViT(nn.Module):
        def __init__(self, dim=192, heads=3, depth=blocks, patch=16, size=224, classes=1000):
            super().__init__()
            self.patch_embed = nn.Conv2d(3, dim, patch, stride=patch)
            self.cls_token = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
            self.pos_embed = nn.Parameter(torch.randn(1, (size // patch) ** 2 + 1, dim) * 0.02)
            self.blocks = nn.Sequential(*[Block(dim, heads) for _ in range(depth)])
            self.norm, self.head = nn.LayerNorm(dim, eps=1e-6), nn.Linear(dim, classes)

        def forward(self, x):
            x = self.patch_embed(x).flatten(2).transpose(1, 2)
            x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], 1) + self.pos_embed
            return self.head(self.norm(self.blocks(x))[:, 0])

    torch.manual_seed(0)
    return ViT().eval(), [(1, 3, 224, 224)]


def interleave(candidates: dict, *, rounds: int, per_round: int, settle_s: float = 0.1) -> dict[str, list[list[float]]]:
    """Alternating blocks, the order reversed every other round; a pause and an untimed call per switch."""
    names = list(candidates)
    samples: dict[str, list[list[float]]] = {n: [] for n in names}
    for fn in candidates.values():
        for _ in range(3):
            fn()
    for r in range(rounds):
        for n in names if r % 2 == 0 else names[::-1]:
            time.sleep(settle_s)
            candidates[n]()
            got = []
            for _ in range(per_round):
                t0 = time.perf_counter()
                candidates[n]()
                got.append((time.perf_counter() - t0) * 1e3)
            samples[n].append(got)
    return samples


def _quartiles(xs: list[float]) -> list[float]:
    q = statistics.quantiles(xs, n=4)
    return [q[0], q[2]]


def latency(samples: dict[str, list[list[float]]]) -> dict:
    flat = {n: [x for block in s for x in block] for n, s in samples.items()}
    ratios = [statistics.median(a) / statistics.median(b) for a, b in zip(samples["with"], samples["without"])]
    return {
        **{n: {"median_ms": statistics.median(s), "iqr_ms": _quartiles(s), "runs": len(s)} for n, s in flat.items()},
        "ratio_with_over_without": statistics.median(ratios),
        "ratio_iqr": _quartiles(ratios),
    }


def placement(details: dict) -> dict:
    keys = ("delegated_ops", "delegated_subgraphs", "fallback_ops", "fallback_op_types", "delegation_summary")
    return {k: details.get(k) for k in keys}


def portable_share(target, artifact, inputs) -> dict:
    """Share of op time (ETDump) on portable kernels vs inside XNNPACK."""
    prof = target.profile_ops(artifact, inputs, 10)
    by_device: dict[str, float] = {}
    for o in prof.ops:
        by_device[o.device or "?"] = by_device.get(o.device or "?", 0.0) + o.time_ms
    total = sum(by_device.values()) or 1.0
    return {
        "end_to_end_ms": prof.end_to_end_ms,
        "op_ms_by_device": by_device,
        "portable_share_of_op_time": by_device.get("portable", 0.0) / total,
    }


def bench(model_name: str, runtime: str, args, tmp: Path) -> dict:
    import torch

    from edgeformer.compiler import compile as compile_model
    from edgeformer.device_profiles import load_profile
    from edgeformer.runtime import load_artifact
    from edgeformer.sources import load_model
    from edgeformer.targets import get_target

    if model_name.startswith("vit"):
        model, shapes = vit_tiny(args.blocks)
    else:
        model, shapes = model_name, None
    source = load_model(model, input_shapes=shapes)
    inputs = [t.numpy() for t in source.graph.example_inputs]
    profile = load_profile(PROFILES[runtime])
    profile.options.threads = args.threads
    ships = PASS in get_target(profile.target).pipeline.names
    edits = {"with": "" if ships else f"+{PASS}", "without": f"-{PASS}" if ships else ""}
    out, runners, arts = {"runtime": runtime, "ships_the_pass": ships}, {}, {}
    for variant, passes in edits.items():
        t0 = time.perf_counter()
        report = compile_model(
            model,
            profile,
            tmp / f"{model_name}-{runtime}-{variant}",
            input_shapes=shapes,
            passes=passes or None,
            use_cache=False,
        )
        m = report.manifest
        rec = next((p for p in m.passes if p.name == PASS), None)
        out[variant] = {
            "compile_s": round(time.perf_counter() - t0, 2),
            "numerics": m.numerics.status,
            "max_abs_error": m.numerics.max_abs_error,
            "sdpa_rewritten": rec.matched if rec else 0,
        }
        if runtime == "executorch":
            out[variant].update(placement(m.target_details))
        arts[variant] = load_artifact(report.path)
        runner = arts[variant].runner()
        runners[variant] = lambda r=runner: r.run(inputs)
    torch.set_num_threads(args.threads)
    out["latency"] = latency(interleave(runners, rounds=args.rounds, per_round=args.per_round))
    if runtime == "executorch":
        for variant, art in arts.items():
            out[variant].update(portable_share(art.target, art, inputs))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="vit_tiny,pvt_v2_tiny")
    ap.add_argument("--runtimes", default="executorch,onnxruntime,openvino")
    ap.add_argument("--blocks", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--per-round", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    logging.basicConfig(level=logging.WARNING)
    result = {"threads": args.threads, "blocks": args.blocks, "models": {}}
    with tempfile.TemporaryDirectory(prefix="edgeformer-sdpa-") as tmp:
        for name in args.models.split(","):
            key = f"vit_tiny_{args.blocks}blocks_224" if name.startswith("vit") else name
            result["models"][key] = {}
            for rt in args.runtimes.split(","):
                got = bench(name, rt, args, Path(tmp))
                result["models"][key][rt] = got
                lat = got["latency"]
                line = (
                    f"{key:24s} {rt:11s} with {lat['with']['median_ms']:8.3f} ms  without "
                    f"{lat['without']['median_ms']:8.3f} ms  ratio {lat['ratio_with_over_without']:.3f} "
                    f"[{lat['ratio_iqr'][0]:.3f}, {lat['ratio_iqr'][1]:.3f}]"
                )
                if rt == "executorch":
                    w, wo = got["with"], got["without"]
                    line += (
                        f"\n{'':36s}delegated/portable ops with {w['delegated_ops']}/{w['fallback_ops']} "
                        f"({w['delegated_subgraphs']} partitions), without {wo['delegated_ops']}/{wo['fallback_ops']} "
                        f"({wo['delegated_subgraphs']}); portable share of op time "
                        f"{w['portable_share_of_op_time']:.1%} vs {wo['portable_share_of_op_time']:.1%}"
                    )
                print(line, flush=True)
    result["note"] = f"ratio = with / without {PASS} (median of per-round ratios); < 1: the pass is faster"
    print(write_result("sdpa_executorch", result))


if __name__ == "__main__":
    main()
