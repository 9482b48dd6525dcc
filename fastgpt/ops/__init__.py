"""fastgpt's public ops. Each picks a backend per call (see ``fastgpt.backends``) and is
registered once with torch.library, with a fake function and autograd, so models that use
them compile with ``torch.compile(fullgraph=True)``."""
from fastgpt import backends
from fastgpt.ops.attention import attention
from fastgpt.ops.bias_gelu import bias_gelu
from fastgpt.ops.layer_norm import layer_norm
from fastgpt.ops.linear_bias_gelu import linear_bias_gelu
from fastgpt.ops.linear_cross_entropy import linear_cross_entropy
from fastgpt.ops.mlp import mlp
from fastgpt.ops.qkv_projection import qkv_projection

backends.check_environment()  # FASTGPT_BACKEND names ops: checked once they have all registered

__all__ = ["attention", "bias_gelu", "layer_norm", "linear_bias_gelu", "linear_cross_entropy", "mlp", "qkv_projection"]
