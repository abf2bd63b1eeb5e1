"""Run configuration schema: one dataclass tree, two presets, the choice lists, typed keys.

Hyper-parameters carry the paper's symbols (CM-ACC §5): ``M`` mini-batch, ``K`` dictionary
(queue) size, ``N`` candidate-pool size, ``m`` key-encoder momentum, ``tau`` temperature of
the contrastive softmax (Eq. 7).

Resolution order (cmacc.config.loading): dataclass defaults (= the ``cpu`` preset) <- ``preset``
<- YAML file <- ``--set key=value`` overrides. Unknown keys and wrong types raise :class:`ConfigError`
naming the key here; impossible values in cmacc.config.validation. Torch-free.
"""
from __future__ import annotations

import dataclasses
import difflib
import typing
from dataclasses import dataclass, field
from typing import Any

import yaml

from ..choices import BACKENDS, EMBEDDINGS, POSITIVES
from ..errors import InputError
from ..methods.registry import AGREEMENTS, CROSS_POSITIVES, FC_LAYERS, METHODS, Z_SOURCES, Method


class ConfigError(InputError, ValueError):
    """A configuration key, type or value is wrong; the message names the key."""




@dataclass
class DataConfig:
    name: str = "synthetic"  # synthetic (built in) | manifest (real videos in data.manifest) | omniglot (MI pairs)
    # -- real videos --
    manifest: str = ""  # CSV: path,label,split,start,end (see `cmacc manifest`)
    split: str = "train"  # manifest split to pretrain on
    scan: str = ""  # scan report from `cmacc scan`; empty: scan at start into <out>/scan.json
    fps: float = 10.0  # frames per second sampled from the video (CM-ACC: 16 frames at 10 fps)
    backend: str = "auto"  # auto (per file, from the scan) | pyav | dali_cpu | dali_gpu
    on_missing_audio: str = "skip"  # skip | silence | error
    on_corrupt: str = "skip"  # skip | error
    on_blank: str = "skip"  # files the scan finds silent-audio or blank-video: skip (listed) | keep | error
    cache_dir: str = ""  # log-mel feature cache; empty: ~/.cache/cmacc/mel
    eval_clips: int = 10  # uniformly spaced clips per video in evaluation
    dali_threads: int = 2
    # -- the built-in synthetic dataset --
    num_classes: int = 32  # latent classes driving both modalities (never used in pretraining)
    train_size: int = 3072  # videos in the pretraining split
    probe_train_size: int = 1536  # held-out videos for fitting the linear probe
    probe_test_size: int = 1024  # held-out videos for scoring it
    frames: int = 8  # T, frames per clip
    size: int = 32  # H = W of a clip after the random resized crop
    mel_bands: int = 80  # log-mel bands; the audio encoder sees an (80 x T_a) signal
    audio_frames: int = 0  # T_a of a synthetic clip; 0 = 4 x frames (real videos: from fps and hop)
    nuisance: float = 0.35  # strength of the modality-specific nuisance variation
    num_workers: int = 0  # DataLoader worker processes
    # -- Spatial-MultiOmniglot (data.name=omniglot; CM-ACC Appendix A; cmacc.reproduce.omniglot) --
    omniglot: str = ""  # an Omniglot images_background*.zip
    chars: int = 3  # used cells k of the 3 x 3 canvas: I(x; y) = sum of log l_i over them
    train_drawers: int = 15  # of 20 drawers per character, those of pretraining and probe training
    # SMoCo's positive (a second view of x, and of y): drawer = the same labels drawn by another
    # pretraining drawer; shift = the same drawing, each cell shifted by up to +-2 px, fresh per read
    # (MoCo's instance discrimination with a crop-like augmentation; no drawer-invariance signal)
    positive: str = "drawer"


@dataclass
class AudioConfig:
    """Log-mel parameters for real audio (librosa; recorded with every run)."""

    sample_rate: int = 16000
    n_fft: int = 512
    win_length: int = 400  # 25 ms at 16 kHz
    hop_length: int = 160  # 10 ms: 100 mel frames per second
    fmin: float = 0.0
    fmax: float = 8000.0


@dataclass
class ModelConfig:
    video: str = "tiny"  # 3D-ResNet preset: tiny | r10 | r18 (Hara et al.) | image (2-D ResNet, image pairs)
    audio: str = "tiny"  # 1-D ResNet preset over the mel signal: tiny | r10 | r18 | image
    d: int = 128  # embedding size of q and k
    head: str = "linear"  # projection to d: linear (MoCo v1) | mlp (Linear-BN-ReLU-Linear, MoCo v2)
    # BatchNorm groups of the *global* batch M (group j: positions j, j+s, ...). 0 = one per rank
    # (MoCo's per-GPU BN; 1 on one process). A multiple s of the world size W gives every rank s/W
    # split-BN groups, and the run is the same whatever W is (see README, "Multi-GPU").
    bn_splits: int = 0
    sync_bn: bool = False  # CUDA only: SyncBatchNorm over the ranks of each group (W a multiple of bn_splits)
    shuffle_bn: bool = True  # shuffle the key encoders' batch (He et al., 2020)
    fc: str = "method"  # "method" (from the method table) | cross | self | none


@dataclass
class SamplerConfig:
    first: str = "random"  # first k-means++ centroid: random (paper, Alg. 3 l.2) | norm (BADGE)
    temperature: float = 1.0  # softmax temperature of the pseudo-posterior (Eq. 5 has none)
    backend: str = "auto"  # auto (numba on CPU, triton on CUDA) | torch (the reference) | numba | triton
    exclude_batch: bool = True  # never pick a pool clip that is in the current mini-batch
    fresh_keys: bool = True  # enqueue picks re-encoded by the current h (False: the pool's keys, Alg. 1 l.9)


@dataclass
class AvidConfig:
    """AVID's memory-bank methods (method=avid_*; cmacc.methods.avid)."""

    # uniform (AVID: K clips per query, without the clip itself) | gradient | feature | key_gradient |
    # ohem | random: K clips of each bank picked by cmacc.sampling.select, shared by the batch
    negatives: str = "uniform"
    num_negatives: int = 1024  # K negatives per clip (AVID: 1,024)
    tau: float = 0.07  # NCE temperature
    momentum: float = 0.5  # bank update: entry <- normalize(mu entry + (1 - mu) embedding)
    loss: str = "nce"  # nce (Wu et al. 2018; Z from the first batch, then kept) | infonce
    # encode: every clip through the initial f_v, f_a, so the first epoch's positives are the clip's
    # own embedding rather than noise (the CPU default: a few epochs); random: unit Gaussian vectors
    # (AVID's code, hundreds of epochs; the paper preset). README, "AVID".
    bank_init: str = "encode"
    # NCE's Z, estimated once on the first batch: "first" -- the mean of e^s over the negatives of the
    # first term (v->a for Cross and Joint, v->v for Self), as AVID's code keeps one NCE criterion for
    # every term; "all" -- the mean over every term's negatives. (AVID-CMA takes Z from its source run.)
    z_from: str = "first"


@dataclass
class CmaConfig:
    """Cross-Modal Agreement (method=avid_cma, started with init_from=AVID_RUN)."""

    pos_k: int = 32  # size of each clip's positive set P_i
    # positives of P_i per step: 0 = all pos_k of them (AVID-CMA's code); n > 0 = n drawn with replacement
    num_positives: int = 0
    agreement: str = "consensus"  # consensus (min of the banks' similarities) | union (max) | video | audio
    # CPU default 1: the built-in run lasts ~4 epochs. AVID-CMA's released configs: 5 (the paper preset)
    resample_every: int = 1  # epochs between recomputations of the positive sets
    # positives of the cross-modal term: instance (the clip alone: AVID-CMA's xModalInst term) |
    # instance+set (the clip and its positives of P_i)
    cross_positives: str = "instance"
    # negatives of the within-modal positive-set term: the first n of the clip's K (AVID-CMA's
    # num_negatives_within = 64 in its Kinetics and AudioSet configs); 0 (or n >= K) = all K
    within_negatives: int = 64
    within_weight: float = 1.0  # weight of the within-modal positive-set NCE (cross-modal term: 1)


@dataclass
class ProbeConfig:
    enabled: bool = True
    C: float = 1.0  # inverse L2 strength of the logistic-regression probe


@dataclass
class EvalConfig:
    """Downstream evaluation (``cmacc eval``): the protocols of CM-ACC §5 and AVID §4."""

    crops: int = 10  # clips per item: random training crops, uniformly spaced test crops
    audio_seconds: float = 2.0  # ESC-50 crop length (AVID: 2 s)
    svm_C: float = 1.0  # linear protocol: one-vs-rest linear SVM on standardised features
    cv: int = 5  # ESC-50 folds grouped by src_file when the csv holds fewer than two folds
    epochs: int = 20  # fine-tuning epochs; the last epoch is reported, never the best
    head_epochs: int = 1  # of them, head-only warm-up epochs (encoder frozen)
    batch_size: int = 32
    lr: float = 1e-3  # Adam; times 0.1 at each milestone
    lr_milestones: str = "0.6,0.85"  # fractions of the epochs, comma separated
    weight_decay: float = 1e-5
    frames: int = 32  # UCF101/HMDB51 fine-tuning clips (CM-ACC: 32 frames at 10 fps, 224 px)
    fps: float = 10.0
    size: int = 224
    retrieval_k: str = "1,5,10,20,50"  # top-k of the retrieval hit rate


@dataclass
class RunConfig:
    device: str = "auto"  # auto | cpu | cuda | cuda:N (the paper preset asks for cuda)
    # torch intra-op threads of each training process; 0 = the cores this rank may use (its CPU
    # affinity shared among the ranks on its host) less one per DataLoader worker, at least 1
    threads: int = 0
    checkpoint_every: int = 100  # steps between atomic checkpoints (and one at the end)
    keep_checkpoints: int = 1  # step-numbered checkpoints kept besides last.pt
    progress: bool = True  # progress bar on stderr
    deterministic: bool = True  # torch.use_deterministic_algorithms (needed for exact resume)
    precision: str = "fp32"  # fp32 | bf16 | fp16: autocast for encoders and loss (the sampler stays fp32)
    dist_timeout: float = 1800.0  # seconds a collective may wait for the other ranks before failing
    check_sync_every: int = 0  # every n steps, check that replicated state is bitwise equal on all ranks (0: never)
    allow_data_change: bool = False  # --resume on a manifest that changed since the checkpoint (recorded)
    keep_freed_memory: bool = True  # glibc malloc keeps freed blocks: no page faults per step (cmacc.system.allocator)


@dataclass
class Config:
    preset: str = "cpu"  # the preset the values started from (recorded; set with preset=NAME)
    method: str = "cmacc"
    seed: int = 0
    # -- the paper's hyper-parameters (§5); CPU-sized here, see PRESETS["paper"] --
    M: int = 32  # mini-batch size = picks enqueued per modality per step
    # dictionary size, a multiple of M. The CPU run's keys stay in D for K/M = 4 steps: at 16 (K = 512)
    # its fast key encoders drift enough within the queue's span that the queries score keys by age
    # rather than content (metrics.jsonl age_gap_*; README, "Dictionary consistency"). Paper: 30 M.
    K: int = 128
    N: int = 1536  # candidate pool size (Alg. 1 l.7), drawn anew every pool refresh
    m: float = 0.99  # key-encoder momentum (Eq. 4)
    tau: float = 0.1  # temperature of the contrastive loss (Eq. 7)
    lr: float = 2e-3  # Adam learning rate after warm-up
    warmup_steps: int = 30  # linear warm-up (paper: 500)
    lr_schedule: str = "constant"  # constant (paper) | cosine (after warm-up)
    weight_decay: float = 0.0  # Adam's L2 term (the paper states none)
    steps: int = 360  # optimisation steps
    queue_init: str = "clips"  # clips: K random clips through h (Alg. 1 l.3-5) | random: noise
    pool_refresh: int = 0  # steps between pool redraws; 0 = once per epoch (Alg. 1 l.7-9)
    init_from: str = ""  # a run folder whose newest checkpoint starts this run (avid_cma: an AVID run)
    data: DataConfig = field(default_factory=DataConfig)
    audio: AudioConfig = field(default_factory=AudioConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    avid: AvidConfig = field(default_factory=AvidConfig)
    cma: CmaConfig = field(default_factory=CmaConfig)
    probe: ProbeConfig = field(default_factory=ProbeConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    run: RunConfig = field(default_factory=RunConfig)

    @property
    def spec(self) -> Method:
        """The method's registry row (cmacc.methods.registry): its family and fixed options."""
        return METHODS[self.method]

    @property
    def fc(self) -> str:
        return self.spec.fc if self.model.fc == "method" else self.model.fc

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# Presets change defaults only; every value can still be overridden.
PRESETS: dict[str, dict[str, Any]] = {
    "cpu": {},  # the dataclass defaults: the built-in run, <= 5 min on 2 CPU cores
    # CM-ACC §5: M=128, K=30*128, N=300*128, m=0.999, tau=0.7, Adam 1e-3 after 500 warm-up
    # steps, 3D-ResNet-18 on 16x224^2 clips, 1-D ResNet-18 on 80-band mel.
    "paper": {
        "M": 128, "K": 3840, "N": 38400, "m": 0.999, "tau": 0.7, "lr": 1e-3,
        "warmup_steps": 500, "lr_schedule": "constant", "weight_decay": 0.0, "steps": 100000,
        "model.video": "r18", "model.audio": "r18", "model.bn_splits": 4,
        "data.frames": 16, "data.size": 224, "data.audio_frames": 64,
        "data.train_size": 240000, "data.num_workers": 8, "run.checkpoint_every": 1000, "avid.bank_init": "random",
        "cma.resample_every": 5,  # AVID-CMA's released configs (resample_freq: 5 epochs)
        "run.keep_checkpoints": 3, "run.deterministic": False,
        "run.device": "cuda",  # 3D-ResNet-18 at 224 px: GPUs; --set run.device=cpu to insist
    },
}

IMAGE_PRESETS = ("image", "image_cells")  # 2-D ResNets (cmacc.models.resnet2d)
VIDEO_PRESETS = ("tiny", "r10", "r18") + IMAGE_PRESETS
AUDIO_PRESETS = ("tiny", "r10", "r18") + IMAGE_PRESETS
CHOICES: dict[str, tuple[str, ...]] = {
    "preset": tuple(PRESETS),
    "method": tuple(METHODS),
    "lr_schedule": ("constant", "cosine"),
    "queue_init": ("clips", "random"),
    "data.name": ("synthetic", "manifest", "omniglot"),
    "data.backend": ("auto", "pyav", "dali_cpu", "dali_gpu"),
    "data.on_missing_audio": ("skip", "silence", "error"),
    "data.on_corrupt": ("skip", "error"),
    "data.on_blank": ("skip", "keep", "error"),
    "data.positive": POSITIVES,
    "model.video": VIDEO_PRESETS,
    "model.audio": AUDIO_PRESETS,
    "model.fc": ("method",) + FC_LAYERS,
    "model.head": ("linear", "mlp"),
    "avid.negatives": ("uniform",) + EMBEDDINGS,
    "avid.loss": ("nce", "infonce"),
    "avid.bank_init": ("random", "encode"),
    "cma.agreement": AGREEMENTS,
    "cma.cross_positives": CROSS_POSITIVES,
    "avid.z_from": Z_SOURCES,
    "sampler.first": ("random", "norm"),
    "sampler.backend": BACKENDS,
    "run.precision": ("fp32", "bf16", "fp16"),
}


def _fields(cls) -> dict[str, tuple[Any, bool]]:
    """Flat map 'section.key' -> (python type, is_section) for a config dataclass."""
    hints = typing.get_type_hints(cls)
    out: dict[str, tuple[Any, bool]] = {}
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            out[f.name] = (tp, True)
            for sub, (stp, _) in _fields(tp).items():
                out[f"{f.name}.{sub}"] = (stp, False)
        else:
            out[f.name] = (tp, False)
    return out


FIELDS = _fields(Config)
LEAVES = {k: t for k, (t, sec) in FIELDS.items() if not sec}


def _coerce(key: str, value: Any, source: str) -> Any:
    tp = LEAVES[key]
    where = f" (from {source})" if source else ""
    if tp in (int, float) and isinstance(value, str):
        try:  # YAML 1.1 reads 1e-3 and 5e-4 as strings
            value = float(value.strip())
        except ValueError:
            pass
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
            return int(value)  # YAML reads 3.84e3 as a float
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    raise ConfigError(
        f"config key '{key}'{where} must be {tp.__name__}, got {type(value).__name__} {value!r}"
    )


def _unknown(key: str, source: str) -> ConfigError:
    near = difflib.get_close_matches(key, list(LEAVES), n=1)
    hint = f" (did you mean '{near[0]}'?)" if near else ""
    where = f" in {source}" if source else ""
    return ConfigError(f"unknown config key '{key}'{where}{hint}")


def flatten(d: dict[str, Any], prefix: str = "", source: str = "") -> dict[str, Any]:
    """Nested YAML mapping -> {'section.key': value}; a section given a scalar is an error."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if not isinstance(k, str):
            raise ConfigError(f"config key {k!r} in {source or 'config'} is not a string")
        key = f"{prefix}{k}"
        if key in FIELDS and FIELDS[key][1]:
            if not isinstance(v, dict):
                raise ConfigError(f"config key '{key}' in {source} must be a mapping of keys")
            out.update(flatten(v, key + ".", source))
        else:
            out[key] = v
    return out


def parse_set(item: str) -> tuple[str, Any]:
    """'key=value' from the command line; the value is read as YAML (3840, 0.7, true, cmacc)."""
    if "=" not in item:
        raise ConfigError(f"--set expects key=value, got {item!r}")
    key, raw = item.split("=", 1)
    key = key.strip()
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as e:
        raise ConfigError(f"--set {key}: cannot parse value {raw!r}: {e}") from None
    if isinstance(value, (int, float, bool)) or value is None:
        return key, value
    return key, raw if not isinstance(value, str) else value


def _apply(cfg: Config, key: str, value: Any, source: str) -> None:
    if key not in LEAVES:
        raise _unknown(key, source)
    value = _coerce(key, value, source)
    obj = cfg
    *path, leaf = key.split(".")
    for p in path:
        obj = getattr(obj, p)
    setattr(obj, leaf, value)
