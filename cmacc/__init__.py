"""cmacc: Cross-Modal Active Contrastive Coding (Ma et al., ICLR 2021) and its relatives."""
__version__ = "0.1.0"
