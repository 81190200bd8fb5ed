"""shmt: batch makeup transfer (SHMT latent diffusion and a weight-free classic engine)."""

__version__ = "0.1.0"
