"""Benchmarks behind ``cmacc bench``: sampler throughput (sampler.py, with BADGE-style and
scikit-learn peers in peers.py), data loading (data.py) and distributed steps (dist.py)."""
