"""The reference: pure forward/backward pairs, each written as its equation.

Each ``*_forward(...) -> (out, cache)``; each ``*_backward(dout, cache, need) -> (dx, grads)``
with ``grads`` a dict keyed like the parameters. ``need`` (pairs with more than one gradient)
names the gradients wanted — "x" for the input, the parameter names for the rest; the default
is all of them — and the backward computes only those: ``dx`` is None when "x" is not needed.

The same pairs, faster and less readable, are in ``minilora.fast`` (``minilora.fast.USE_FAST``
chooses); these are the ones the docs derive and the tests hold the fast ones to.
"""
from .activations import gelu_backward, gelu_forward, relu_backward, relu_forward
from .linear import linear_backward, linear_forward
from .lora import lora_backward, lora_delta, lora_forward, lora_scale, lowrank_backward, lowrank_forward
from .lora import lora_fa_backward, lora_fa_forward, olora_init, pissa_init
from .dora import dora_backward, dora_forward
from .losses import (
    log_softmax,
    softmax,
    mse_backward,
    mse_forward,
    softmax_cross_entropy_backward,
    softmax_cross_entropy_forward,
)
from .attention import attention_backward, attention_forward, merge_heads, split_heads
from .embedding import embedding_backward, embedding_forward, position_backward, position_forward
from .layernorm import layernorm_backward, layernorm_forward
from .lora_embedding import lora_embedding_backward, lora_embedding_delta, lora_embedding_forward
from .optim import adamw_update
