"""Built-in GAN plugins: DCGAN, conditional DCGAN (cGAN), AC-GAN, StyleGAN2 (ADA/DiffAugment)."""
