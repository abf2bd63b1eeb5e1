"""Command line: ``cmacc pretrain [--config FILE.yaml] [--set key=value ...] [--out DIR] [--resume]``."""
from __future__ import annotations

import argparse
import datetime
import logging
import sys
from pathlib import Path

from .config import ConfigError, load_config, resume_config


def _pretrain(args: argparse.Namespace) -> int:
    from .train import NonFiniteLoss, pretrain  # heavy imports after argument parsing

    if args.resume:
        if args.out is None:
            raise ConfigError("--resume needs --out DIR, the folder of the run to continue")
        out = Path(args.out)
        cfg = resume_config(out / "config.yaml", args.config, args.set)
    else:
        cfg = load_config(args.config, args.set)
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        out = Path(args.out) if args.out else Path("runs") / f"{cfg.method}-{stamp}"
    print(f"cmacc pretrain: method={cfg.method} M={cfg.M} K={cfg.K} N={cfg.N} m={cfg.m} tau={cfg.tau} "
          f"steps={cfg.steps} -> {out}", file=sys.stderr)
    try:
        summary = pretrain(cfg, out, resume=args.resume)
    except NonFiniteLoss as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if "stopped_at" in summary:
        print(f"stopped by {summary['signal']} at step {summary['stopped_at']}; continue with "
              f"`cmacc pretrain --out {out} --resume`", file=sys.stderr)
        return 130 if summary["signal"] == "SIGINT" else 143
    neg = summary["negatives"]
    lines = [f"method {summary['method']}: {summary['steps']} steps, final loss {summary['final_loss']:.3f}",
             f"negatives: {neg['mean_categories']:.2f} distinct classes per {neg['per_step']} enqueued "
             f"(uniform draws: {neg['uniform_expectation']:.2f})"]
    if "probe" in summary:
        p = summary["probe"]
        for mod in ("video", "audio"):
            lines.append(f"linear probe {mod}: pretrained {p[mod]['pretrained']:.1f}%  "
                         f"random init {p[mod]['random_init']:.1f}%  (chance {p['chance']:.1f}%)")
    lines.append(f"wrote {out}/summary.json")
    print("\n".join(lines))
    return 0


def _cuda() -> bool:
    import torch
    return torch.cuda.is_available()


def _bench_sampler(args: argparse.Namespace) -> int:
    from . import bench
    if args.pool is None:
        args.pool = 38400 if args.device.startswith("cuda") else 4800
    return bench.main(args)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="cmacc", description="Cross-Modal Active Contrastive Coding")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("pretrain", help="self-supervised audio-visual pretraining (built-in dataset by default)")
    p.add_argument("--config", type=Path, help="YAML file of config keys (may name a preset: cpu | paper)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override one config key, e.g. --set method=xmoco --set K=256 (repeatable)")
    p.add_argument("--out", type=Path, help="run folder (default runs/<method>-<time>)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.set_defaults(func=_pretrain)

    b = sub.add_parser("bench", help="benchmarks (sampler throughput)")
    bsub = b.add_subparsers(dest="what", required=True)
    bs = bsub.add_parser("sampler", help="one modality's active selection: materialised vs factorised vs Triton")
    bs.add_argument("--device", default="cuda" if _cuda() else "cpu", help="cpu | cuda | cuda:N")
    bs.add_argument("--pool", type=int, default=None, help="N candidates (default 38400 on cuda, 4800 on cpu)")
    bs.add_argument("--batch", type=int, default=128, help="M queries = picks (default 128)")
    bs.add_argument("--dim", type=int, default=128, help="d (default 128)")
    bs.add_argument("--rounds", type=int, default=None, help="k-means++ picks (default M)")
    bs.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32", help="input dtype (maths is fp32)")
    bs.add_argument("--repeats", type=int, default=3)
    bs.add_argument("--impl", help="comma list of materialised,factorised,triton (default all)")
    bs.add_argument("--json", help="append result rows (with device, versions, git revision) to this file")
    bs.set_defaults(func=_bench_sampler)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except (ConfigError, FileExistsError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
