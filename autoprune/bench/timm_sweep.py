"""Benchmark: which of timm's model families autoprune prunes.

One small member per family is built untrained for ``--size``×``--size`` RGB input, traced, and
pruned by 30 % of every group (l1; in attention modules with a fused ``qkv`` layer, 30 % of the
heads, rounded up); it must still run and its MACs must fall. Each model runs in its own process
with a time limit, so a trace that never ends is reported, not waited for::

    python -m autoprune.bench.timm_sweep [--size 64] [--timeout 300] [--models NAME ...] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time

from autoprune.bench import print_report

PRUNES = (
    "vit_tiny_patch16_224",
    "deit_tiny_patch16_224",
    "deit3_small_patch16_224",
    "convnext_atto",
    "convnextv2_atto",
    "resnet18",
    "resnet50d",
    "efficientnet_b0",
    "mobilenetv3_small_100",
    "mobilenetv4_conv_small",
    "regnetx_002",
    "ghostnet_100",
    "densenet121",
    "dla34",
    "mobilevit_xxs",
    "fastvit_t8",
    "swin_tiny_patch4_window7_224",
)
"""The families that prune in this sweep, as docs/models-and-data.md names them (a slow test checks each)."""

DOES_NOT = (
    "eva02_tiny_patch14_224",
    "rexnet_100",
    "mixer_s16_224",
    "resmlp_12_224",
    "poolformer_s12",
    "caformer_s18",
    "levit_128s",
    "efficientformer_l1",
    "edgenext_xx_small",
    "pvt_v2_b0",
)

FAMILIES = PRUNES + DOES_NOT


def prune_one(name: str, size: int) -> dict[str, object]:
    """Build, trace and prune one model; what happened."""
    import torch

    from autoprune.models import build_model
    from autoprune.policy import Policy
    from autoprune.scorers import make_scorer
    from autoprune.trial.metrics import count_macs_params
    from autoprune.trial.surgery import Surgery, TracedModel, attention_modules

    torch.manual_seed(0)
    model = build_model(f"timm:{name}", num_classes=10, in_channels=3, image_size=size).eval()
    x = torch.randn(1, 3, size, size)
    before = count_macs_params(model, x)[0]
    start = time.perf_counter()
    traced = TracedModel(model, x)
    trace_s = time.perf_counter() - start
    copied, graph = traced.copy()
    surgery = Surgery(
        copied, x, Policy(dict.fromkeys(traced.names, 0.3), "l1", 1, 0.01), make_scorer("l1"), None, graph
    )
    surgery.step()
    with torch.no_grad():
        if not torch.isfinite(copied(x)).all():
            raise RuntimeError("the pruned model's outputs are not finite")
    after = count_macs_params(copied, x)[0]
    heads = [m.num_heads for m in attention_modules(copied).values()]
    return {"groups": len(traced.names), "trace_s": trace_s, "macs": before, "pruned_macs": after, "heads": heads}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=64, help="input size (default 64)")
    parser.add_argument("--timeout", type=int, default=300, help="seconds per model (default 300)")
    parser.add_argument("--models", nargs="+", default=list(FAMILIES), help="timm model names")
    parser.add_argument("--out", help="also write the report to this Markdown file")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        try:
            print(json.dumps({"ok": True, **prune_one(args.one, args.size)}))
        except Exception as exc:
            message = " ".join(str(exc).split())[:300]
            print(json.dumps({"ok": False, "error": f"{type(exc).__name__}: {message}"}))
        return
    import timm

    shown = sys.argv[1:] if argv is None else argv
    lines = [
        "# timm's families: which prune",
        "",
        f"Command: `python -m autoprune.bench.timm_sweep {shlex.join(shown)}`",
        "",
        f"timm {timm.__version__}; each model untrained at {args.size}×{args.size} RGB, 30 % of every group removed "
        f"(l1; 30 % of the heads, rounded up, in fused-qkv attention), in its own process, {args.timeout} s at most.",
        "",
        "| model | result | groups | trace (s) | MACs after / before | heads after |",
        "| --- | --- | ---: | ---: | ---: | --- |",
    ]
    for name in args.models:
        command = [sys.executable, "-m", "autoprune.bench.timm_sweep", "--one", name, "--size", str(args.size)]
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=args.timeout)
            outcome = json.loads(done.stdout.strip().splitlines()[-1]) if done.stdout.strip() else None
        except subprocess.TimeoutExpired:
            outcome = {"ok": False, "error": f"did not finish in {args.timeout} s"}
        if outcome is None:
            outcome = {"ok": False, "error": " ".join(done.stderr.split()[-30:])}
        if outcome["ok"]:
            share = outcome["pruned_macs"] / outcome["macs"]
            heads = ", ".join(str(h) for h in sorted(set(outcome["heads"]))) or "–"
            trace = f"{outcome['trace_s']:.1f}"
            lines.append(f"| `{name}` | prunes | {outcome['groups']} | {trace} | {100 * share:.0f} % | {heads} |")
        else:
            lines.append(f"| `{name}` | does not prune: {outcome['error']} | | | | |")
        print(lines[-1], flush=True)
    print_report(lines, args.out)


if __name__ == "__main__":
    main()
