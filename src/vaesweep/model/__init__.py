"""Layer 1: the model: latent, objective, likelihoods and scale modes, β schedules, networks,
components and the VAE LightningModule. Imports only vaesweep.core."""
