"""The paper's claims at laptop scale (``cmacc reproduce NAME``): each experiment a small module on
the harness (methods, sampler, probes) that writes OUT/results.json and a PNG.

    omniglot.py   Spatial-MultiOmniglot pairs with known mutual information (Appendix A)
    mi.py         Fig. 3a: probe accuracy vs number of characters, per method
"""

# Each experiment's default methods (names of cmacc.methods.registry), read by the experiment's
# module and by the CLI's help; torch-free, so that `cmacc --help` stays light.
METHODS: dict[str, tuple[str, ...]] = {
    "mi": ("smoco", "xmoco", "cmacc", "random_pool", "feature_active"),  # Fig. 3a
    "ohem": ("xmoco", "random_pool", "ohem", "cmacc"),  # Table 5
    "fig2": ("random_pool", "cmacc", "feature_active"),  # Fig. 2
    "table1": ("smoco", "xmoco_nofcl", "xmoco", "cmacc"),  # CM-ACC Table 1
    "avid": ("avid_self", "avid_cross", "avid_joint", "xmoco", "cmacc"),  # AVID's Table 1 beside MoCo's
}
# `cmacc reproduce ablation`'s arms (cmacc.reproduce.ablation.ARMS holds what each one sets).
ABLATION_ARMS = ("xmoco", "cmacc", "fresh_keys_off", "refresh_4x", "first_norm", "posterior_tau", "pool_paper",
                 "bn4", "classes_x4")
