"""ambient: exact ambient diffusion (Consistent Diffusion Meets Tweedie, Daras et al. 2024).

Train diffusion models that sample the *clean* distribution while seeing only noisy data:
ambient score matching learns ``E[x0 | x_sigma]`` above the data's noise level and a
consistency loss extends it below. Losses and samplers take any denoiser ``D(x, sigma)``.
"""

__version__ = "0.1.0"
