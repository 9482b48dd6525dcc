"""Pure-PyTorch implementations of every fastgpt op, with the public ops' signatures.

They are the CPU path (the ``reference`` backend), the baseline the benchmarks measure
against, and — computed in fp32 on upcast inputs — the oracle the kernel tests compare with.
Shapes follow nanoGPT: B batch, T time, C channels (n_embd), H heads, D = C / H head dim.
"""
import math

import torch
import torch.nn.functional as F


def layer_norm(x, weight, bias, eps=1e-5):
    """LayerNorm over the last dim. x (..., C); weight, bias (C,) or None."""
    return F.layer_norm(x, (x.shape[-1],), weight, bias, eps)


def bias_gelu(x, bias, approximate="none"):
    """gelu(x + bias). x (..., N); bias (N,) or None; approximate 'none' (erf) or 'tanh'."""
    return F.gelu(x if bias is None else x + bias, approximate=approximate)


def linear_bias_gelu(x, weight, bias, approximate="none"):
    """nanoGPT's c_fc then GELU: gelu(x @ weight^T + bias). x (..., K); weight (N, K); bias (N,) or None."""
    return F.gelu(F.linear(x, weight, bias), approximate=approximate)


def mlp(x, fc_weight, fc_bias, proj_weight, proj_bias, approximate="none"):
    """nanoGPT's MLP without its dropout: c_proj(gelu(c_fc(x))). fc_weight (N, C); proj_weight (C_out, N)."""
    return F.linear(linear_bias_gelu(x, fc_weight, fc_bias, approximate), proj_weight, proj_bias)


def causal_mask(q_len, k_len, device=None):
    """(q_len, k_len) bool, True where attention is allowed; aligned bottom-right, so with
    q_len < k_len (a KV cache) the last query sees every key."""
    return torch.ones(q_len, k_len, dtype=torch.bool, device=device).tril(k_len - q_len)


def key_mask(key_start, q_len, k_len, causal, device=None):
    """(B, 1, q_len, k_len) bool, True where attention is allowed: row b's keys from
    key_start[b] on (left padding masked), and the causal mask when ``causal``."""
    allowed = torch.arange(k_len, device=device) >= key_start.view(-1, 1, 1, 1)
    return allowed & causal_mask(q_len, k_len, device) if causal else allowed


def attention(q, k, v, causal=True, dropout_p=0.0, scale=None, key_start=None):
    """softmax(q k^T * scale + mask) v. q (B, H, Tq, D); k, v (B, H, Tk, D), Tq <= Tk.

    scale defaults to 1/sqrt(D); the causal mask is aligned bottom-right (see causal_mask).
    key_start: None or int (B,): keys j < key_start[b] of row b are masked; a query with no
    key left outputs 0.
    """
    Tq, Tk = q.shape[-2], k.shape[-2]
    if key_start is not None:
        allowed = key_mask(key_start, Tq, Tk, causal, q.device)
        empty = ~allowed.any(-1, keepdim=True)  # (B, 1, Tq, 1): queries with no key to attend to
        # such rows attend to every key (finite values and gradients), then are zeroed
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed | empty, dropout_p=dropout_p, scale=scale)
        return out.masked_fill(empty, 0.0)
    if q.device.type == "cpu" and q.dtype in _SMALL_T_DTYPES and dropout_p == 0.0 and Tk <= SMALL_T:
        return _attention_small(q, k, v, causal, scale)
    if causal and Tq != Tk:
        mask = causal_mask(Tq, Tk, q.device)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p, scale=scale)
    return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=causal, scale=scale)


# Up to this many keys the CPU computes attention as three batched GEMMs on the whole T x T
# score matrix (at most 64 KiB per head in fp32): faster than SDPA's CPU flash kernel there,
# slower beyond (benchmarks/results/2026-11-28-cpu-measurements.md). fp32/fp64 only: in
# bf16/fp16 the scores and softmax would round to 16 bits, where SDPA keeps them in fp32.
SMALL_T = 128
_SMALL_T_DTYPES = (torch.float32, torch.float64)


def _attention_small(q, k, v, causal, scale):
    *batch, Tq, D = q.shape
    Tk = k.shape[-2]
    scale = 1.0 / math.sqrt(D) if scale is None else scale
    q3, k3, v3 = (t.flatten(0, -3) for t in (q, k, v))  # (B * H, T, D), empty ones too
    if causal:
        bias = torch.zeros(Tq, Tk, dtype=q.dtype, device=q.device)
        bias.masked_fill_(~causal_mask(Tq, Tk, q.device), float("-inf"))
        scores = torch.baddbmm(bias, q3, k3.transpose(1, 2), alpha=scale)
    else:
        scores = torch.bmm(q3, k3.transpose(1, 2)).mul_(scale)
    return torch.bmm(torch.softmax(scores, dim=-1), v3).view(*batch, Tq, v.shape[-1])


def attention_math(q, k, v, causal=True, scale=None, dropout_mask=None, dropout_p=0.0, key_start=None):
    """The same attention spelled out (materialises the T x T scores): the naive baseline,
    and the oracle for dropout, which needs an explicit keep-mask (B, H, Tq, Tk) bool, and for
    key padding (key_start, as in :func:`attention`)."""
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    att = (q @ k.transpose(-2, -1)) * scale
    Tq, Tk = q.shape[-2], k.shape[-2]
    if key_start is not None:
        allowed = key_mask(key_start, Tq, Tk, causal, q.device)
        empty = ~allowed.any(-1, keepdim=True)  # queries with no key: weights 0 (kept finite on the way)
        att = att.masked_fill(~(allowed | empty), float("-inf"))
    elif causal:
        att = att.masked_fill(~causal_mask(Tq, Tk, q.device), float("-inf"))
    att = torch.softmax(att, dim=-1)
    if key_start is not None:
        att = att.masked_fill(empty, 0.0)
    if dropout_mask is not None:
        att = att * dropout_mask / (1.0 - dropout_p)
    return att @ v


def qkv_projection(x, weight, bias, n_head):
    """nanoGPT's c_attn then split into heads: x (B, T, C), weight (3C, C), bias (3C,) or None
    -> q, k, v, each (B, H, T, D) (views of one (B, T, 3C) tensor, as in nanoGPT)."""
    B, T, C = x.shape
    q, k, v = F.linear(x, weight, bias).split(C, dim=2)
    return tuple(t.view(B, T, n_head, C // n_head).transpose(1, 2) for t in (q, k, v))


def linear_cross_entropy(x, weight, targets, ignore_index=-1, reduction="mean"):
    """Cross-entropy of the logits ``x @ weight^T`` against ``targets``: the definition that
    ``fastgpt.ops.linear_cross_entropy`` computes in chunks (it materialises the (N, V) logits).

    x (N, C) or (B, T, C); weight (V, C); targets (N,) or (B, T) int64. The logits are rounded
    to x's dtype, as ``F.linear`` leaves them; the log-softmax and loss run in fp32 (fp64 for
    fp64 inputs). Rows whose target is ignore_index contribute nothing; reduction 'mean'
    divides by the number of the other rows and gives 0 when there are none (where
    ``F.cross_entropy`` gives NaN), 'sum' adds, 'none' returns a loss per target (0 where
    ignored) shaped like targets.
    """
    logits = F.linear(x, weight.to(x.dtype))
    logits = logits if logits.dtype == torch.float64 else logits.float()
    losses = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=ignore_index,
                             reduction="none")
    if reduction == "none":
        return losses.view(targets.shape)
    if reduction == "sum":
        return losses.sum()
    return losses.sum() / (targets != ignore_index).sum().clamp(min=1)
