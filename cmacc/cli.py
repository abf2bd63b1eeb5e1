"""Command line: ``cmacc pretrain [--config FILE.yaml] [--set key=value ...] [--out DIR] [--resume]``."""
from __future__ import annotations

import argparse
import datetime
import logging
import os
import sys
from pathlib import Path

from .config import ConfigError, load_config, resume_config
from .errors import InputError


def _pretrain(args: argparse.Namespace) -> int:
    from . import methods
    from .engine.train import Diverged, pretrain
    from .system import dist  # heavy imports after argument parsing

    if args.resume:
        if args.out is None:
            raise ConfigError("--resume needs --out DIR, the folder of the run to continue")
        cfg = resume_config(Path(args.out) / "config.yaml", args.config, args.set)
    else:
        cfg = load_config(args.config, args.set)
    comm = dist.init(cfg.run.device, cfg.run.dist_timeout)  # torchrun / srun, or world size 1
    try:
        if not comm.is_main:
            logging.getLogger("cmacc").setLevel(logging.WARNING)
        stamp = comm.broadcast_object(datetime.datetime.now().strftime("%Y%m%d-%H%M%S"))  # one folder
        out = Path(args.out) if args.out else Path("runs") / f"{cfg.method}-{stamp}"
        if comm.is_main:
            world = f" on {comm.world} ranks ({cfg.M // comm.world} clips each)" if comm.distributed else ""
            sizes = methods.family(cfg.method).describe(cfg)
            print(f"cmacc pretrain: method={cfg.method} {sizes} steps={cfg.steps}{world} -> {out}", file=sys.stderr)
        try:
            summary = pretrain(cfg, out, resume=args.resume, comm=comm)
        except (Diverged, dist.CommError) as e:
            print(f"error: {e}" if isinstance(e, dist.CommError) or not comm.distributed
                  else f"error (rank {comm.rank}): {e}", file=sys.stderr)
            return 1
    finally:
        comm.close()
    if "stopped_at" in summary:
        if comm.is_main:
            print(f"stopped by {summary['signal']} at step {summary['stopped_at']}; continue with "
                  f"`cmacc pretrain --out {out} --resume`", file=sys.stderr)
        return 130 if summary["signal"] == "SIGINT" else 143
    if not comm.is_main:
        return 0
    neg, p, data = summary["negatives"], summary["probe"], summary["data"]
    lines = [f"method {summary['method']}: {summary['steps']} steps, final loss {summary['final_loss']:.3f}"]
    if summary.get("already_complete"):
        lines[0] += f" (finished earlier: nothing to do; raise steps above {summary['steps']} to continue)"
    if neg["mean_categories"] is not None:
        lines.append(f"negatives: {neg['mean_categories']:.2f} distinct classes per {neg['per_step']} enqueued "
                     f"(uniform draws: {neg['uniform_expectation']:.2f})")
    if "skipped" in p:
        lines.append(f"linear probe: skipped ({p['skipped']})")
    else:
        for mod in ("video", "audio"):
            lines.append(f"linear probe {mod}: pretrained {p[mod]['pretrained']:.1f}%  "
                         f"random init {p[mod]['random_init']:.1f}%  (chance {p['chance']:.1f}%)")
    if data.get("left_out") or data["skipped_while_training"]:
        lines.append(f"data: {len(data['left_out'])} files left out at start, "
                     f"{data['skipped_while_training']} clips skipped while training (see run.json, skipped.jsonl)")
        for e in data["left_out"]:
            lines.append(f"  left out {e['path']}: {e['reason']} ({e['detail']})")
    t = summary["time"]
    if comm.distributed and t["steps_per_second"]:
        lines.append(f"distributed: {comm.world} ranks ({comm.backend}), {t['steps_per_second']:.2f} steps/s, "
                     f"{1e3 * t['comm_per_step']:.1f} ms per step in collectives")
    lines += [f"warning: {w}" for w in summary.get("warnings", [])]
    lines.append(f"{'kept' if summary.get('already_complete') else 'wrote'} {out}/summary.json")
    print("\n".join(lines))
    return 0


def _cuda() -> bool:
    import torch
    return torch.cuda.is_available()


def _bench_sampler(args: argparse.Namespace) -> int:
    from .bench import sampler as bench
    if args.pool is None:
        args.pool = 38400 if args.device.startswith("cuda") else 4800
    return bench.main(args)


def _bench_data(args: argparse.Namespace) -> int:
    from .bench import data
    return data.main(args)


def _bench_dist(args: argparse.Namespace) -> int:
    from .bench import dist
    return dist.main(args)


def _bench_kernels(args: argparse.Namespace) -> int:
    from .bench import kernels
    return kernels.main(args)


def _scan(args: argparse.Namespace) -> int:
    from .data.manifest import from_folder, read_manifest
    from .data.scan import default_workers, left_out, scan_paths, summarize, write_report
    from .data.fingerprint import manifest_digest
    if args.source.is_dir():
        m, root = from_folder(args.source), args.source.resolve()
    elif args.source.is_file():
        m, root = read_manifest(args.source), None
    else:
        raise FileNotFoundError(f"{args.source} is neither a manifest nor a folder")
    paths = [r.path for r in m.rows]
    fp = manifest_digest(m, root)
    cfg = load_config(args.config, args.set)  # judge too-short and blank files as that run will
    on_blank, clip = cfg.data.on_blank, cfg.data.frames / cfg.data.fps
    if args.clip_seconds is not None:
        if (args.config or args.set) and abs(args.clip_seconds - clip) > 1e-9:
            raise ConfigError(f"--clip-seconds {args.clip_seconds:g} disagrees with the config's data.frames / "
                              f"data.fps = {clip:g} s; give one of them")
        clip = args.clip_seconds
    records = scan_paths(paths, clip_seconds=clip, decode=args.decode, workers=args.workers or default_workers())
    print(summarize(records))
    print(f"data fingerprint {fp['digest'][:16]} ({fp['rows']} rows, {fp['classes']} classes; sha256 {fp['digest']})")
    origin = "--clip-seconds" if args.clip_seconds is not None else \
        "the config's data.frames / data.fps" if args.config or args.set else \
        "the default config's data.frames / data.fps; --config FILE for your run's"
    print(f"too-short: shorter than one clip of {clip:g} s ({origin}); blank/silent files: data.on_blank={on_blank}")
    if args.out:
        write_report(records, args.out)
        print(f"wrote {args.out}")
    return 1 if any(left_out(r, on_blank) for r in records) else 0


def _manifest(args: argparse.Namespace) -> int:
    from .data import manifest as mf
    from .data.fingerprint import manifest_digest
    missing: list = []
    report = None
    if args.layout == "folder":
        m = mf.from_folder(args.root, label_from_parent=not args.no_labels)
    else:
        if args.annotations is None:
            raise ConfigError(f"cmacc manifest {args.layout} needs --annotations")
        build = {"kinetics": lambda: mf.from_kinetics(args.annotations, args.root),
                 "kinetics_sound": lambda: mf.from_kinetics_sound(args.annotations, args.root),
                 "audioset": lambda: mf.from_audioset(args.annotations, args.root),
                 "vggsound": lambda: mf.from_vggsound(args.annotations, args.root),
                 "ucf101": lambda: mf.from_ucf101(args.root, args.annotations, args.split_id),
                 "hmdb51": lambda: mf.from_hmdb51(args.root, args.annotations, args.split_id),
                 "esc50": lambda: mf.from_esc50(args.annotations, args.root)}[args.layout]
        m, missing, *extra = build()
        report = extra[0] if extra else None
    found = len(m)
    if args.subset is not None:
        m = mf.subset(m, args.subset, args.seed, _with_audio(args.with_audio) if args.with_audio else None)
    elif args.with_audio:
        raise ConfigError("--with-audio SCAN chooses the rows of --subset N; give --subset too")
    m.write(args.out)
    splits = {s: sum(r.split == s for r in m.rows) for s in sorted({r.split for r in m.rows})}
    fp = manifest_digest(m, args.out.resolve().parent)  # paths as written: relative to the manifest
    if args.layout != "folder":
        print(f"{args.layout}: {found + len(missing)} annotated, {found} found, {len(missing)} missing")
    if report:
        print(f"kinetics_sound: {report['in_annotations']} of its {report['classes']} classes are in the annotations"
              + (f"; absent: {', '.join(report['absent'])}" if report["absent"] else ""))
    print(f"wrote {args.out}: {len(m)} rows, {len(m.classes)} classes, splits {splits}"
          + (f" (subset of {found}, seed {args.seed})" if args.subset is not None else ""))
    print(f"data fingerprint {fp['digest'][:16]} (sha256 {fp['digest']})")
    if missing:
        where = args.out.with_name(args.out.stem + ".missing.csv")
        mf.write_missing(missing, where)
        print(f"{len(missing)} annotated files were not found: {where} (e.g. {missing[0]})")
        return 1
    return 0


def _with_audio(scan_path: Path) -> set[str]:
    """Paths that a scan report found usable and carrying an audio stream."""
    from .data.scan import read_report
    return {p for p, r in read_report(scan_path).items() if r.usable and "no-audio" not in r.problems}


def _export(args: argparse.Namespace) -> int:
    from .evaluation.encoders import export
    r = export(args.run, args.out)
    print(f"wrote {r['out']}: f_v {r['arch']['video']} + f_a {r['arch']['audio']} ({r['parameters']:,} parameters) "
          f"from {r['checkpoint']} (step {r['step']}, method {r['method']})")
    return 0


def _pretraining_config(args: argparse.Namespace):
    """The built-in data is defined by its pretraining config (seed, classes, sizes): ``eval
    synthetic`` of a run or an export starts from the config the encoders were trained with."""
    if args.task != "synthetic" or not (args.run or args.encoders):
        return None
    if args.run:
        from .config import read_yaml
        path = Path(args.run) / "config.yaml"
        if not path.is_file():
            raise ConfigError(f"{path} does not exist: --run needs a cmacc run folder")
        cfg = dict(read_yaml(path))
    else:
        from .models.io import read_export
        cfg = dict(read_export(args.encoders).get("source", {}).get("config") or {})
        if not cfg:
            return None
    cfg.pop("preset", None)  # the values are already resolved
    return (f"the config of {args.run or args.encoders}", cfg)


def _eval(args: argparse.Namespace) -> int:
    from .evaluation import run
    given_model = [s for s in args.set if s.startswith("model.")]
    if given_model and (args.encoders or args.run):
        raise ConfigError(f"{given_model[0]}: model.* chooses the --random-init architecture; an export or run "
                          f"brings its own")
    cfg = load_config(args.config, args.set, base=_pretraining_config(args))
    out = args.out or Path("evals") / (Path(args.encoders).stem if args.encoders else
                                       Path(args.run).name if args.run else "random-init")
    if args.data is None and args.task != "synthetic":
        raise ConfigError(f"cmacc eval {args.task} needs --data ROOT")
    protocol = args.protocol or {"esc50": "linear", "retrieval": "cosine", "synthetic": "linear"}.get(args.task,
                                                                                                     "finetune")
    run(args.task, cfg, data=args.data, protocol=protocol, out=out, encoders_file=args.encoders,
        run_dir=args.run, random_init=args.random_init, cv=args.cv, split=args.split, splits=args.splits,
        dataset=args.dataset)
    return 0


def _embed(args: argparse.Namespace) -> int:
    from .evaluation import device_of, embed, encoders
    from .system import cores
    given_model = [s for s in args.set if s.startswith("model.")]
    if given_model and (args.encoders or args.run):
        raise ConfigError(f"{given_model[0]}: model.* chooses the --random-init architecture; an export or run "
                          f"brings its own")
    cfg = load_config(args.config, args.set + [f"eval.crops={args.clips}"])
    cores.apply(cores.plan(cfg.run.threads, 0))
    enc = encoders.resolve(cfg, encoders=args.encoders, run=args.run, random=args.random_init)
    req = embed.Request(tower=args.tower, level=args.level, clips=args.clips, stage=args.stage,
                        shard_files=args.shard_files)
    embed.run(cfg, enc, args.data, args.out, req, device_of(cfg))
    return 0


def _add_embed(sub) -> None:
    em = sub.add_parser("embed", help="embeddings of your own videos and audio files with trained (or random) "
                        "towers: video.npy / audio.npy, index.csv, embed.json; resumable")
    src = em.add_mutually_exclusive_group()
    src.add_argument("--encoders", help="an encoder file from `cmacc export`")
    src.add_argument("--run", help="a run folder: its newest intact checkpoint")
    src.add_argument("--random-init", action="store_true", help="random weights (the default architectures)")
    em.add_argument("--data", nargs="+", required=True, help="folders, manifest CSVs or media files")
    em.add_argument("--out", type=Path, required=True, help="output folder (rerun with the same one to resume)")
    em.add_argument("--tower", choices=("video", "audio", "both"), default="both",
                    help="which encoder(s); audio-only files need --tower audio (default both)")
    em.add_argument("--level", choices=("clip", "video"), default="clip",
                    help="one row per clip (default) or per file: the mean over its clips")
    em.add_argument("--clips", type=int, default=10, help="uniformly spaced clips per file, as cmacc eval (default 10)")
    em.add_argument("--stage", default="layer4", help="which stage's pooled features (default layer4, the last)")
    em.add_argument("--shard-files", type=int, default=64, dest="shard_files",
                    help="files per shard: the unit of resumption and of memory (default 64)")
    em.add_argument("--config", type=Path, help="YAML of config keys (eval.*, data.cache_dir, run.*, model.*)")
    em.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="e.g. --set eval.frames=16 --set run.device=cpu (repeatable)")
    em.set_defaults(func=_embed)


def _add_eval(sub) -> None:
    ex = sub.add_parser("export", help="write a run's query encoders f_v, f_a (state dicts + architecture) to a file")
    ex.add_argument("run", type=Path, help="run folder (its newest intact checkpoint)")
    ex.add_argument("--out", type=Path, required=True, help="encoder file, e.g. encoders.pt")
    ex.set_defaults(func=_export)
    ev = sub.add_parser("eval", help="downstream evaluation: esc50 (linear | finetune | baseline), ucf101 and "
                        "hmdb51 (fine-tuning), retrieval (video nearest neighbours), synthetic (the built-in "
                        "data's probe splits, both modalities)")
    ev.add_argument("task", choices=("esc50", "ucf101", "hmdb51", "retrieval", "synthetic"))
    ev.add_argument("--data", type=Path,
                    help="dataset root (esc50: meta/esc50.csv + audio/; ucf101/hmdb51: the class folders of videos)")
    ev.add_argument("--protocol", help="esc50: linear (default) | finetune | baseline; ucf101/hmdb51: finetune")
    ev.add_argument("--split", default="1", help="ucf101/hmdb51/retrieval: official split 1, 2, 3 or all")
    ev.add_argument("--splits", help="folder of the official split files (default ROOT/ucfTrainTestlist or "
                    "ROOT/testTrainMulti_7030_splits)")
    ev.add_argument("--dataset", choices=("ucf101", "hmdb51"), default="ucf101", help="retrieval: whose videos")
    src = ev.add_mutually_exclusive_group()
    src.add_argument("--encoders", help="an encoder file from `cmacc export`")
    src.add_argument("--run", help="a run folder: its newest intact checkpoint")
    src.add_argument("--random-init", action="store_true",
                     help="random weights of the default (or --set model.video/model.audio) architectures (default)")
    ev.add_argument("--cv", type=int, default=None, help="K folds grouped by src_file instead of the csv's folds")
    ev.add_argument("--out", type=Path, help="output folder (default evals/<encoder name>)")
    ev.add_argument("--config", type=Path, help="YAML of config keys (eval.*, data.cache_dir, run.*, model.*)")
    ev.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a config key, e.g. --set eval.crops=10 --set eval.epochs=30 (repeatable)")
    ev.set_defaults(func=_eval)


def _methods(args: argparse.Namespace) -> int:
    from .methods import table
    rows = [("method", "family", "options", "paper")] + [
        (r["method"], r["family"], " ".join(f"{k}={v}" for k, v in r["options"].items()), r["paper"])
        for r in table()]
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)) + "  " + row[3])
    return 0


def _version(expect: list[str]) -> int:
    from .system import provenance

    print(provenance.report(provenance.git_revision(), provenance.versions()))
    pairs = dict(e.split("=", 1) if "=" in e else (e, "") for e in expect)
    bad = provenance.expectation_mismatches(pairs)
    for line in bad:
        print(f"error: --expect {line}", file=sys.stderr)
    return 2 if bad else 0


def _add_bench(sub) -> None:
    b = sub.add_parser("bench", help="benchmarks: sampler throughput, data loading")
    bsub = b.add_subparsers(dest="what", required=True)
    bs = bsub.add_parser("sampler", help="one modality's active selection: cmacc's paths and peers side by side")
    bs.add_argument("--device", default="cuda" if _cuda() else "cpu", help="cpu | cuda | cuda:N")
    bs.add_argument("--pool", type=int, default=None, help="N candidates (default 38400 on cuda, 4800 on cpu)")
    bs.add_argument("--batch", type=int, default=128, help="M queries = picks (default 128)")
    bs.add_argument("--dim", type=int, default=128, help="d (default 128)")
    bs.add_argument("--rounds", type=int, default=None, help="k-means++ picks (default M)")
    bs.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32", help="input dtype (maths is fp32)")
    bs.add_argument("--repeats", type=int, default=3)
    bs.add_argument("--impl", help="comma list of materialised,factorised,numba,triton,badge_numpy,sklearn "
                    "(default all)")
    bs.add_argument("--threads", default="1", help="torch / numba threads, one count or a comma list (default 1)")
    bs.add_argument("--sweep", action="store_true", help="N = 4,800 ... 153,600 (doubling) instead of --pool, "
                    "and a PNG of time vs N against the memory floor")
    bs.add_argument("--plot", help="the sweep's PNG (default sampler_sweep.png)")
    bs.add_argument("--json", help="append result rows (with device, versions, git revision) to this file")
    bs.set_defaults(func=_bench_sampler)
    bd = bsub.add_parser("data", help="decoding throughput per backend (PyAV, DALI CPU, DALI GPU) and step data/compute time")
    bd.add_argument("--files", help="folder or manifest of videos (default: generated VP9 + H.264 clips)")
    bd.add_argument("--generate", type=int, default=8, help="generated files per codec (default 8)")
    bd.add_argument("--clips", type=int, default=4, help="clips decoded per file (default 4)")
    bd.add_argument("--crop", type=int, default=224, help="augmentation output size (default 224)")
    bd.add_argument("--steps", type=int, default=6, help="training steps for the data-vs-compute timing")
    bd.add_argument("--device", default="cuda" if _cuda() else "cpu")
    bd.add_argument("--json", help="append result rows (with device, versions, git revision) to this file")
    bd.set_defaults(func=_bench_data)
    bt = bsub.add_parser("dist", help="pretraining steps/s and time in collectives: 1 rank vs W ranks (torchrun)")
    bt.add_argument("--world", default="1,2", help="comma list of rank counts (default 1,2)")
    bt.add_argument("--threads", default="1", help="torch threads per rank, one value or one per --world entry")
    bt.add_argument("--method", default="cmacc")
    bt.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="cpu (Gloo) or cuda (one GPU per rank, NCCL)")
    bt.add_argument("--steps", type=int, default=40, help="steps per run (default 40)")
    bt.add_argument("--warmup", type=int, default=5, help="first steps not timed (default 5)")
    bt.add_argument("--repeats", type=int, default=3)
    bt.add_argument("--bn-splits", type=int, default=None, help="model.bn_splits for every run (default: the largest W)")
    bt.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="more config overrides")
    bt.add_argument("--json", help="append result rows (with device, versions, git revision) to this file")
    bt.set_defaults(func=_bench_dist)
    bk = bsub.add_parser("kernels", help="the Triton kernels compiled for real GPUs (no GPU needed): "
                         "registers, spills, shared memory, occupancy")
    bk.add_argument("--compile", action="store_true", required=True,
                    help="compile every variant the wrappers launch (ahead of time, with the bundled ptxas)")
    bk.add_argument("--arch", help="comma list of compute capabilities, e.g. 80,90 (default: every one in "
                    "cmacc.kernels.aot.ARCH that this Triton knows)")
    bk.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="compile processes (default: cores)")
    bk.add_argument("--json", help="write the rows, limits and versions to this file")
    bk.set_defaults(func=_bench_kernels)



def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="cmacc", description="Cross-Modal Active Contrastive Coding")
    parser.add_argument("--version", action="store_true",
                        help="print cmacc's git revision and library versions (what run.json records)")
    parser.add_argument("--expect", action="append", default=[], metavar="KEY=VALUE",
                        help="with --version: exit 2 unless KEY (revision, torch, cuda, dali, dali_wheel) has "
                             "VALUE here (the Docker build checks its labels with this)")
    sub = parser.add_subparsers(dest="command")
    p = sub.add_parser("pretrain", help="self-supervised audio-visual pretraining (built-in dataset by default)")
    p.add_argument("--config", type=Path, help="YAML file of config keys (may name a preset: cpu | paper)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override one config key, e.g. --set method=xmoco --set K=256 (repeatable)")
    p.add_argument("--out", type=Path, help="run folder (default runs/<method>-<time>)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.set_defaults(func=_pretrain)

    _add_bench(sub)
    _add_eval(sub)
    _add_embed(sub)
    from .reproduce.cli import add_parser as add_reproduce
    add_reproduce(sub)
    ms = sub.add_parser("methods", help="every method by name: its family, the options the name fixes, where "
                        "the papers have it")
    ms.set_defaults(func=_methods)
    sc = sub.add_parser("scan", help="probe every file of a manifest or folder; report unusable, blank and "
                        "silent ones (exit 1 when pretraining would leave any out)")
    sc.add_argument("source", type=Path, help="manifest CSV or folder of videos")
    sc.add_argument("--out", type=Path, help="report file (.json or .csv; default: print only)")
    sc.add_argument("--config", type=Path, help="the pretraining config: too-short is judged against its clip "
                    "length (data.frames / data.fps) and blank/silent files per its data.on_blank")
    sc.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config overrides, as in pretrain")
    sc.add_argument("--clip-seconds", type=float, default=None,
                    help="shorter files are 'too-short' (default: the config's data.frames / data.fps; "
                         "the paper preset's 16 frames at 10 fps: 1.6 s)")
    sc.add_argument("--decode", choices=("full", "sample"), default="full",
                    help="decode every frame (default; finds mid-stream corruption) or a sample of positions")
    sc.add_argument("--workers", type=int, default=0, help="parallel processes (default: one per core, up to 8)")
    sc.set_defaults(func=_scan)

    mf = sub.add_parser("manifest", help="build a manifest CSV from a dataset layout")
    mf.add_argument("layout", choices=("folder", "kinetics", "kinetics_sound", "audioset", "vggsound", "ucf101",
                                       "hmdb51", "esc50"))
    mf.add_argument("root", type=Path, help="folder of the media files (esc50: the audio folder)")
    mf.add_argument("--annotations", type=Path,
                    help="kinetics, kinetics_sound: a Kinetics-400/600/700 CSV; audioset: a *_segments.csv; "
                         "vggsound: vggsound.csv; ucf101/hmdb51: the splits folder; esc50: esc50.csv")
    mf.add_argument("--subset", type=int, help="keep N rows, drawn reproducibly (--seed)")
    mf.add_argument("--seed", type=int, default=0, help="--subset's draw (default 0)")
    mf.add_argument("--with-audio", type=Path, dest="with_audio", metavar="SCAN",
                    help="--subset draws only from files this `cmacc scan --out` report found usable with audio")
    mf.add_argument("--split-id", type=int, default=1, help="ucf101/hmdb51 official split 1-3")
    mf.add_argument("--no-labels", action="store_true", help="folder: do not take labels from parent folders")
    mf.add_argument("--out", type=Path, required=True)
    mf.set_defaults(func=_manifest)
    args = parser.parse_args(argv)
    if args.version:
        return _version(args.expect)
    if args.expect:
        parser.error("--expect goes with --version")
    if args.command is None:
        parser.error(f"a command is required ({', '.join(sub.choices)}), or --version")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except (InputError, FileExistsError, FileNotFoundError) as e:
        rank = os.environ.get("RANK", os.environ.get("SLURM_PROCID")) if int(os.environ.get("WORLD_SIZE", 1)) > 1 else None
        print(f"error{f' (rank {rank})' if rank else ''}: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
