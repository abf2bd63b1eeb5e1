"""The MoCo family: momentum key encoders and FIFO dictionaries (CM-ACC's Algorithm 1 and the
XMoCo / SMoCo / OHEM / active-sampling relatives of its Tables 1 and 5 and Fig. 2).

model.py   CrossModalMoCo: Algorithm 1 (queries, momentum keys, dictionaries, pool, Eq. 7)
family.py  what the training engine asks of the family: build, queue init, pool refresh, picks
checks.py  the family's config checks (torch-free)
"""
