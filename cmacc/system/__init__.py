"""System plumbing every layer may use: processes and collectives (dist), CPU budgets (cores), the
allocator, provenance, and derived randomness (seeds)."""
