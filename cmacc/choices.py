"""Choice lists shared by layers that must not import each other's code, defined once here:
the sampler's embeddings and backends (cmacc.sampling) are also config values (cmacc.config),
which loads without torch; so is Spatial-MultiOmniglot's SMoCo positive (cmacc.reproduce.omniglot).
Method names and their options live in cmacc.methods.registry."""

EMBEDDINGS = ("gradient", "feature", "key_gradient", "ohem", "random")  # cmacc.sampling.select(embedding=)
BACKENDS = ("auto", "torch", "numba", "triton")  # cmacc.sampling.resolve_backend
POSITIVES = ("drawer", "shift")  # data.positive: SMoCo's second view on Spatial-MultiOmniglot
