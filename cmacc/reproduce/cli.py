"""``cmacc reproduce``: its subcommands, and the dispatch from flags to an experiment's Settings."""
from __future__ import annotations

import argparse
import contextlib
from pathlib import Path

from ..config import ConfigError
from . import METHODS


def _ints(text: str, flag: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.split(","))
    except ValueError:
        raise ConfigError(f"{flag} takes comma-separated integers, got {text!r}") from None


def reproduce(args: argparse.Namespace) -> int:
    """cmacc reproduce mi|ohem|fig2|table1: settings from the defaults (or --quick) and the flags."""
    from dataclasses import fields, replace

    from . import ablation, common, fig2, mi, ohem, table1
    module = {"mi": mi, "ohem": ohem, "fig2": fig2, "table1": table1, "avid": table1,
              "ablation": ablation}[args.experiment]
    base = (table1.AVID_QUICK if args.quick else {"methods": table1.AVID_METHODS}) if args.experiment == "avid" \
        else module.QUICK if args.quick else {}
    s = module.Settings(**base)
    names = {f.name for f in fields(s)}
    for flag in ("chars", "seeds", "batches"):
        if getattr(args, flag, None):
            value = _ints(getattr(args, flag), "--" + flag)
            s = replace(s, **{flag: value if args.experiment == "mi" or flag != "chars" else value[0]})
    if getattr(args, "methods", None):
        s = replace(s, methods=tuple(args.methods.split(",")))
    if getattr(args, "arms", None):
        s = replace(s, arms=tuple(args.arms.split(",")))
    if getattr(args, "on", None):
        s = replace(s, on=args.on)
    if args.experiment == "ablation" and not args.arms and s.on == "mi":  # the default arms that apply
        s = replace(s, arms=tuple(a for a in s.arms if a not in ablation.MI_ONLY_NOT))
    for key in ("steps", "train_size", "samples", "probe_every"):
        if getattr(args, key, None) is not None and key in names:
            s = replace(s, **{key: getattr(args, key)})
    s = replace(s, overrides=list(s.overrides) + list(args.set))
    chars = s.chars if args.experiment == "mi" else (s.chars,) if "chars" in names else ()
    bad = [k for k in chars if not 1 <= k <= 9]
    if bad:
        raise ConfigError(f"--chars: k must be 1..9 (cells of the 3 x 3 canvas), got {bad}")
    every = getattr(s, "probe_every", 0)
    if not 0 <= every <= getattr(s, "steps", every):
        raise ConfigError(f"--probe-every: must be 0 (off) .. --steps ({s.steps}), got {every}")
    out = args.out or Path("reproductions") / (args.experiment + ("-quick" if args.quick else ""))
    with common.kept_only() if args.kept_only else contextlib.nullcontext():
        _run_experiment(args, module, s, out)
    return 0


def _run_experiment(args: argparse.Namespace, module, s, out: Path) -> None:
    from dataclasses import replace

    from . import mi, table1
    if args.experiment in ("table1", "avid"):  # every key checked before any run
        if args.runs:
            s = replace(s, runs=str(args.runs))
        table1.check(s)
        table1.run(out, s, args.quick, args.experiment)
    elif args.experiment == "ablation":
        module.check(s, str(args.omniglot or ""))
        module.run(str(args.omniglot or ""), out, s, args.quick)
    elif args.experiment == "mi":
        mi.run_config(s, str(args.omniglot), s.methods[0], s.chars[0], s.seeds[0])
        mi.run(str(args.omniglot), out, s, args.quick)
    else:
        module.check(s, str(args.omniglot))
        module.run(str(args.omniglot), out, s, args.quick)


def add_parser(sub) -> None:
    rp = sub.add_parser("reproduce", help="the papers' claims at laptop scale: mi (Fig. 3a), ohem (Table 5), "
                        "fig2 (Fig. 2), table1 (Table 1), avid (AVID's Table 1), ablation (cmacc's deviations)")
    rsub = rp.add_subparsers(dest="experiment", required=True)
    helps = {"mi": "Spatial-MultiOmniglot: probe accuracy vs number of characters (Fig. 3a)",
             "ohem": "random vs OHEM vs active negatives at M = 32, 64, 128 on Spatial-MultiOmniglot (Table 5)",
             "fig2": "distinct classes among each step's negatives: random vs gradient vs feature (Fig. 2)",
             "table1": "SMoCo, XMoCo w/o fcl, XMoCo, CM-ACC on the built-in data (Table 1)",
             "avid": "Self- vs Cross- vs Joint-AVID beside xmoco and cmacc on the built-in data (AVID Table 1)",
             "ablation": "cmacc's deviations from Algorithm 1 one at a time, against xmoco (built-in data or "
                         "Spatial-MultiOmniglot)"}
    defaults = {name: ",".join(methods) for name, methods in METHODS.items()}
    for name, text in helps.items():
        m = rsub.add_parser(name, help=text)
        if name == "ablation":
            _ablation_flags(m)
        elif name in ("table1", "avid"):
            m.add_argument("--runs", type=Path, help="where runs are kept (default OUT/runs); table1's folder "
                           "lets avid reuse its xmoco and cmacc runs")
        else:
            m.add_argument("--omniglot", type=Path, required=True, help="an Omniglot images_background*.zip")
            m.add_argument("--chars", help="comma list of k (default 1..9)" if name == "mi"
                           else f"used cells k (default {3 if name == 'ohem' else 1})")
            m.add_argument("--train-size", type=int, dest="train_size", help="training pairs (default 10000)")
        if name == "mi":
            m.add_argument("--probe-every", type=int, dest="probe_every",
                           help="keep a checkpoint every N steps and probe each: the learning curves (mi_curves.png)")
        if name in ("ohem", "fig2"):
            m.add_argument("--batches", help="comma list of M (default 32,64,128)")
        if name == "ohem":
            m.add_argument("--samples", type=int, help="training pairs seen per run: steps = samples / M (9600)")
        else:
            m.add_argument("--steps", type=int, help="pretraining steps per run (default %s)"
                           % {"mi": 300, "fig2": 100, "table1": 360, "avid": 360, "ablation": "360 / mi 300"}[name])
        m.add_argument("--quick", action="store_true", help="CI-sized: two settings, one seed, tiny runs")
        if name != "ablation":
            m.add_argument("--methods", help=f"comma list of --set method= names (default {defaults[name]})")
        m.add_argument("--seeds", help="comma list (default 0,1,2)")
        m.add_argument("--out", type=Path, help=f"output folder (default reproductions/{name})")
        m.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config keys for every run")
        m.add_argument("--kept-only", action="store_true", dest="kept_only",
                       help="train nothing: gather the runs already kept in OUT (e.g. by parallel processes)")
        m.set_defaults(func=reproduce)


def _ablation_flags(m) -> None:
    from . import ABLATION_ARMS
    m.add_argument("--on", choices=("builtin", "mi"), default="builtin",
                   help="builtin: the built-in data's linear probes (default); mi: Spatial-MultiOmniglot at --chars")
    m.add_argument("--arms", help=f"comma list (default all: {','.join(ABLATION_ARMS)})")
    m.add_argument("--omniglot", type=Path, help="an Omniglot images_background*.zip (--on mi)")
    m.add_argument("--chars", help="--on mi: used cells k (default 3)")
    m.add_argument("--train-size", type=int, dest="train_size", help="training videos / pairs (default 3072 / 10000)")
