"""Numeric engines behind the metric plugins: features, generative metrics, classification metrics.

``features`` turns uint8 images into Inception (or other) features exactly as clean-fid does, with an
on-disk cache; ``generative`` computes FID, KID, PRDC and memorisation on feature arrays;
``classification`` computes ROC-AUC with bootstrap intervals, DeLong's test and friends. None of them
know about the CLI; the plugins in ``cxraug.plugins.metrics`` are thin wrappers around them.
"""
