"""JoImTeRNet models: the ResNet image tower, the BERT-style text tower and the joint model."""

from jimte.models.image import (
  ATTENTION_BLOCKS,
  ImageOutput,
  JoImTeRNetResNet,
  SigmoidGateAttention,
  SpatialSoftmaxAttention,
  adaptive_avg_pool,
)
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
from jimte.models.text import MASK_ID, MLM_HEADS, PAD_ID, BertTextEncoder, TextOutput

__all__ = [
  "ATTENTION_BLOCKS",
  "IMAGE_TOWERS",
  "MASK_ID",
  "MLM_HEADS",
  "TEXT_TOWERS",
  "PAD_ID",
  "BertTextEncoder",
  "ImageOutput",
  "JoImTeRNet",
  "JoImTeRNetResNet",
  "JointOutput",
  "SigmoidGateAttention",
  "SpatialSoftmaxAttention",
  "TextOutput",
  "adaptive_avg_pool",
  "build_model",
  "count_params",
  "init_variables",
  "paper_model_config",
  "small_model_config",
]
