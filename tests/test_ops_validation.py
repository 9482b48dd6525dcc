"""Bad input to the public ops gets an error naming the argument and what was expected."""
import pytest
import torch

from fastgpt import ops

x = torch.randn(2, 3, 8)


@pytest.mark.parametrize("call, exc, match", [
    (lambda: ops.layer_norm(x.long(), None, None), TypeError, "x must be a floating-point tensor"),
    (lambda: ops.layer_norm(x, torch.ones(7), None), ValueError, r"weight must have shape \(8,\)"),
    (lambda: ops.layer_norm(x, None, torch.ones(8)[None]), ValueError, r"bias must have shape \(8,\)"),
    (lambda: ops.layer_norm([1.0], None, None), TypeError, "x must be a torch.Tensor"),
    (lambda: ops.bias_gelu(x, torch.ones(8), approximate="sigmoid"), ValueError, "approximate"),
    (lambda: ops.bias_gelu(x, torch.ones(3)), ValueError, r"bias must have shape \(8,\)"),
    (lambda: ops.attention(x, x, x), ValueError, "q must be 4-d"),
    (lambda: ops.attention(torch.randn(1, 2, 5, 8), torch.randn(1, 2, 4, 8), torch.randn(1, 2, 4, 8)), ValueError, "Tq <= Tk"),
    (lambda: ops.attention(torch.randn(1, 2, 4, 8), torch.randn(1, 3, 4, 8), torch.randn(1, 3, 4, 8)), ValueError, "k and v must be"),
    (lambda: ops.attention(*[torch.randn(1, 2, 4, 8)] * 3, dropout_p=1.0), ValueError, "dropout_p"),
    (lambda: ops.attention(*[torch.randn(1, 2, 4, 8)] * 3, scale=-1.0), ValueError, "scale"),
    (lambda: ops.attention(torch.randn(1, 2, 4, 8), torch.randn(1, 2, 4, 8).half(), torch.randn(1, 2, 4, 8)), TypeError, "share a dtype"),
    (lambda: ops.qkv_projection(x, torch.randn(24, 8), None, 3), ValueError, "n_head must be a positive int dividing C = 8"),
    (lambda: ops.qkv_projection(x, torch.randn(8, 8), None, 2), ValueError, r"weight must have shape \(24, 8\)"),
    (lambda: ops.qkv_projection(x[0], torch.randn(24, 8), None, 2), ValueError, "x must be 3-d"),
])
def test_bad_input(call, exc, match):
    with pytest.raises(exc, match=match):
        call()
