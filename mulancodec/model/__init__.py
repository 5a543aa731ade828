"""The MuLAN probability model: configs, schedule, latent, denoiser and loss."""
from .configs import CONFIGS, Config, ModelConfig, TrainConfig, load_config
from .mulan import MuLAN, Terms, to_unit

__all__ = ["CONFIGS", "Config", "ModelConfig", "TrainConfig", "load_config", "MuLAN", "Terms", "to_unit"]
