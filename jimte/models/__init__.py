"""JoImTeRNet models: the ResNet image tower, the BERT-style text tower and the joint model."""

from jimte.models.image import ImageOutput, JoImTeRNetResNet, adaptive_avg_pool
from jimte.models.joimternet import (
  IMAGE_TOWERS,
  TEXT_TOWERS,
  JoImTeRNet,
  JointOutput,
  build_model,
  count_params,
  init_variables,
  paper_model_config,
  small_model_config,
)
from jimte.models.text import PAD_ID, BertTextEncoder, TextOutput

__all__ = [
  "IMAGE_TOWERS",
  "TEXT_TOWERS",
  "PAD_ID",
  "BertTextEncoder",
  "ImageOutput",
  "JoImTeRNet",
  "JoImTeRNetResNet",
  "JointOutput",
  "TextOutput",
  "adaptive_avg_pool",
  "build_model",
  "count_params",
  "init_variables",
  "paper_model_config",
  "small_model_config",
]
