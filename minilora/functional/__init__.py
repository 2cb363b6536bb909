"""Pure forward/backward pairs. Each ``*_forward(...) -> (out, cache)``; each
``*_backward(dout, cache) -> (dx, grads)`` with ``grads`` a dict keyed like the parameters."""
from .activations import gelu_backward, gelu_forward, relu_backward, relu_forward
from .linear import linear_backward, linear_forward
from .lora import lora_backward, lora_delta, lora_forward, lora_scale
from .losses import (
    log_softmax,
    mse_backward,
    mse_forward,
    softmax_cross_entropy_backward,
    softmax_cross_entropy_forward,
)
from .attention import attention_backward, attention_forward, merge_heads, split_heads
from .embedding import embedding_backward, embedding_forward, position_backward, position_forward
from .layernorm import layernorm_backward, layernorm_forward
