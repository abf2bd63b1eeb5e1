"""The paper's claims at laptop scale (``cmacc reproduce NAME``): each experiment a small module on
the harness (methods, sampler, probes) that writes OUT/results.json and a PNG.

    omniglot.py   Spatial-MultiOmniglot pairs with known mutual information (Appendix A)
    mi.py         Fig. 3a: probe accuracy vs number of characters, per method
"""
