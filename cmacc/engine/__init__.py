"""The training engine: it builds, starts or resumes, steps, checkpoints and finishes a run, and
names no method. Everything a family of methods decides is asked of its
cmacc.methods.protocol.Family (cmacc.methods.family(cfg.method)).

    train.py        Pretraining (one rank's share of a run) and pretrain()
    feed.py         what each rank loads: its share of every global batch; clips encoded in batches
    run_folder.py   failed starts removed, logs cut back on resume
    health.py       a step is committed only when finite; the collapse watch
    bn.py           BatchNorm across ranks: split-BN groups, SyncBN groups, running statistics
    precision.py    run.precision: autocast and the fp16 loss scaler
    diagnostics.py  per-step measures beyond the loss (negatives' classes, digests)
    summary.py      probes and summary.json at the end of a run

Checkpoints, collectives, CPU budgets and provenance are cmacc.system's.
"""
