"""Choice lists shared by layers that must not import each other's code, defined once here:
the sampler's embeddings and backends (cmacc.sampling) are also config values (cmacc.config),
which loads without torch. Method names and their options live in cmacc.methods.registry."""

EMBEDDINGS = ("gradient", "feature", "key_gradient", "ohem", "random")  # cmacc.sampling.select(embedding=)
BACKENDS = ("auto", "torch", "numba", "triton")  # cmacc.sampling.resolve_backend
