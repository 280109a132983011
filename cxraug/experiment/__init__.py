"""``cxraug experiment``: base vs classic vs GAN augmentation, several seeds, one report."""
