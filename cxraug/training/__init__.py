"""Shared training engines: checkpoints, run folders, the GAN loop, generation, distribution."""
