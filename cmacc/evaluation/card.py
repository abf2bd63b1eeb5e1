"""The protocol card that opens every ``cmacc eval`` result (results JSON and printed summary): what
was measured and how, so that two numbers can be compared -- task, protocol, classifier and its
hyperparameters, clips x crops per item, how clips are aggregated, which folds or splits are
averaged, the encoders' pretraining data (fingerprint, sample rate, clip settings) -- and a
warning, never silence, where the evaluation's audio or clip settings differ from the pretraining's
(with what was done about it)."""
from __future__ import annotations

from ..config import Config


def _pretraining(enc) -> dict:
    """What the encoders were pretrained on, from the run / export's recorded source."""
    if enc is None:
        return {"encoder": "none (log-mel/MFCC baseline)"}
    src = enc.source or {}
    cfg = src.get("config") or {}
    data = cfg.get("data") or {}
    fp = src.get("data_fingerprint") or {}
    return {"encoder": enc.name, "method": src.get("method"), "step": src.get("step"),
            "data_fingerprint": fp.get("digest"), "data_kind": fp.get("kind") or data.get("name"),
            "data_rows": fp.get("rows"), "sample_rate": (src.get("audio") or {}).get("sample_rate"),
            "frames": data.get("frames"), "fps": data.get("fps"), "size": data.get("size"),
            "clip_seconds": fp.get("clip_seconds")}


def _how(task: str, protocol: str, cfg: Config) -> dict:
    e = cfg.eval
    if task == "synthetic":
        return {"classifier": f"logistic regression (C={cfg.probe.C}) on standardised features, every stage",
                "clips_per_item": "1 centred clip per video", "aggregation": "none (one clip)"}
    if task == "esc50":
        crops = f"{e.crops} uniformly spaced {e.audio_seconds:g} s windows per clip (test); {e.crops} random ones (train)"
        if protocol == "finetune":
            return {"classifier": f"encoder + linear head end to end: {e.epochs} epochs ({e.head_epochs} head-only), "
                                  f"Adam lr {e.lr:g} x0.1 at {e.lr_milestones}, wd {e.weight_decay:g}, batch "
                                  f"{e.batch_size}; last epoch reported", "clips_per_item": crops,
                    "aggregation": "softmax averaged over the windows"}
        clf = f"logistic regression (C={e.svm_C})" if protocol == "baseline" else \
            f"one-vs-rest linear SVM (C={e.svm_C}) on standardised features, every stage; best stage reported"
        return {"classifier": clf, "clips_per_item": crops, "aggregation": "classifier scores averaged over the windows"}
    clips = f"{e.crops} uniformly spaced clips of {e.frames} frames at {e.fps:g} fps, {e.size} px (test)"
    if task == "retrieval":
        return {"classifier": f"cosine nearest neighbours, top-k for k = {e.retrieval_k}", "clips_per_item": clips,
                "aggregation": "features averaged over a video's clips"}
    return {"classifier": f"video encoder + linear head end to end: {e.epochs} epochs ({e.head_epochs} head-only), "
                          f"Adam lr {e.lr:g} x0.1 at {e.lr_milestones}, wd {e.weight_decay:g}, batch {e.batch_size}; "
                          f"last epoch reported", "clips_per_item": clips,
            "aggregation": "video@1: softmax averaged over the clips (clip@1 also reported)"}


def warnings(task: str, cfg: Config, pre: dict, mel: dict | None) -> list[str]:
    """Where evaluation and pretraining disagree on audio or clip settings, and what was done."""
    out = []
    e = cfg.eval
    if mel and pre.get("sample_rate") and mel.get("sample_rate") != pre["sample_rate"]:
        out.append(f"sample rate: evaluation features at {mel['sample_rate']} Hz, the encoder was pretrained at "
                   f"{pre['sample_rate']} Hz")
    if mel:
        if cfg.audio.sample_rate != mel.get("sample_rate"):
            out.append(f"audio.sample_rate={cfg.audio.sample_rate} was not used: the audio was decoded and resampled "
                       f"with librosa to the encoder's pretraining rate, {mel['sample_rate']} Hz")
        else:
            out.append(f"audio decoded and resampled with librosa to {mel['sample_rate']} Hz (the encoder's "
                       f"pretraining rate) before log-mel")
    if task in ("ucf101", "hmdb51", "retrieval") and pre.get("frames"):
        if (pre["frames"], pre["fps"]) != (e.frames, e.fps) or pre.get("size") not in (None, e.size):
            out.append(f"clip settings differ: evaluation {e.frames} frames at {e.fps:g} fps, {e.size} px; pretraining "
                       f"{pre['frames']} frames at {pre['fps']:g} fps, {pre.get('size')} px (the protocol's "
                       f"eval.frames / eval.fps / eval.size were used)")
    if task == "esc50" and pre.get("clip_seconds") and abs(pre["clip_seconds"] - e.audio_seconds) > 1e-9:
        out.append(f"audio window differs: evaluation {e.audio_seconds:g} s, pretraining clips "
                   f"{pre['clip_seconds']:g} s (eval.audio_seconds was used)")
    return out


def card(task: str, protocol: str, cfg: Config, enc, res: dict) -> dict:
    pre = _pretraining(enc)
    mel = (res.get("preprocessing") or {}).get("mel")
    notes = warnings(task, cfg, pre, mel)
    return {"task": task, "protocol": protocol, **_how(task, protocol, cfg),
            "level": "per item (clip-level accuracy also reported)" if "clip_mean" in res else "per item",
            "averaged_over": [f["name"] for f in res.get("folds", [])], "pretraining": pre,
            "data_fingerprint": ((res.get("data") or {}).get("fingerprint") or {}).get("digest"),
            "warnings": [n for n in notes if not n.startswith("audio decoded")],
            "notes": [n for n in notes if n.startswith("audio decoded")]}


def text(c: dict) -> str:
    p = c["pretraining"]
    lines = [f"protocol card: {c['task']} / {c['protocol']}",
             f"  classifier   {c['classifier']}",
             f"  clips        {c['clips_per_item']}; {c['aggregation']}",
             f"  averaged     {len(c['averaged_over'])} fold(s)/split(s): {', '.join(c['averaged_over'])}",
             f"  data         fingerprint {str(c.get('data_fingerprint'))[:16]}",
             f"  pretraining  {p.get('encoder')}" + (f" ({p.get('method')}, step {p.get('step')})" if p.get("method") else "")
             + (f", data {p['data_kind']} {str(p['data_fingerprint'])[:16]} ({p.get('data_rows')} rows)"
                if p.get("data_fingerprint") else ", data fingerprint: not recorded")
             + (f", {p['sample_rate']} Hz" if p.get("sample_rate") else "")]
    lines += [f"  note         {n}" for n in c["notes"]]
    lines += [f"  WARNING      {w}" for w in c["warnings"]]
    return "\n".join(lines)
