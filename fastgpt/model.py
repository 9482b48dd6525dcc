"""The GPT, nanoGPT-shaped: GPTConfig, LayerNorm, CausalSelfAttention, MLP, Block, GPT.

A drop-in for nanoGPT's ``model.GPT``: the same config fields and defaults, parameter names,
methods and outputs; its hot paths call ``fastgpt.ops``, which run fastgpt's kernels where
they can (see ``fastgpt.backends``). References:
1) nanoGPT, model.py (Karpathy), which this file follows top to bottom;
2) OpenAI's GPT-2 and Hugging Face's GPT2LMHeadModel, whose weights it can hold.
"""
import contextlib
import dataclasses
import inspect
import math
from dataclasses import dataclass

import torch
import torch.nn as nn
from torch.nn import functional as F

from fastgpt import ops
from fastgpt.backends import BACKENDS, report, use_backend
from fastgpt.presets import PRESETS


class LayerNorm(nn.Module):
    """LayerNorm with an optional bias (PyTorch's has none to switch off)."""

    def __init__(self, ndim, bias):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(ndim))
        self.bias = nn.Parameter(torch.zeros(ndim)) if bias else None

    def forward(self, input):
        return ops.layer_norm(input, self.weight, self.bias, 1e-5)


class CausalSelfAttention(nn.Module):
    def __init__(self, config):
        super().__init__()
        # key, query, value projections for all heads, in a batch
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        # output projection
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        # regularization
        self.resid_dropout = nn.Dropout(config.dropout)
        self.n_head = config.n_head
        self.dropout = config.dropout

    def forward(self, x, kv_cache=None, layer=0, key_start=None):
        B, T, C = x.size()  # batch size, sequence length, embedding dimensionality (n_embd)
        # q, k, v straight into heads: (B, nh, T, hs) each, no copy on the way to attention
        q, k, v = ops.qkv_projection(x, self.c_attn.weight, self.c_attn.bias, self.n_head)
        if kv_cache is not None:  # generation: attend to every cached position too
            k, v = kv_cache.append(layer, k, v)  # (B, nh, cached + T, hs)
        # causal self-attention; (B, nh, T, hs) x (B, nh, hs, T) -> (B, nh, T, T) never materialised.
        # With a cache, T queries meet more keys and the mask is aligned bottom-right; key_start
        # masks each row's left padding (a batch of prompts of different lengths).
        y = ops.attention(q, k, v, causal=True, dropout_p=self.dropout if self.training else 0.0, key_start=key_start)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # re-assemble all head outputs side by side
        # output projection
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)
        self.gelu_approximate = config.gelu_approximate

    def forward(self, x):
        # c_fc, GELU and c_proj as one op: on the cuda backend the forward's c_fc GEMM adds the bias
        # and applies the GELU in its epilogue, and the backward's c_proj dx GEMM applies the dGELU
        # in its epilogue
        x = ops.mlp(x, self.c_fc.weight, self.c_fc.bias, self.c_proj.weight, self.c_proj.bias, self.gelu_approximate)
        return self.dropout(x)


class Block(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.ln_1 = LayerNorm(config.n_embd, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x, kv_cache=None, layer=0, key_start=None):
        x = x + self.attn(self.ln_1(x), kv_cache, layer, key_start)
        x = x + self.mlp(self.ln_2(x))
        return x


class KVCache:
    """Keys and values of the positions seen so far, per layer, for generation.

    Each layer's buffers are (B, nh, block_size, hs), allocated on first use in the dtype the
    keys arrive in; ``append`` returns views of the filled part, which the attention kernel reads
    through their strides.
    """

    def __init__(self, n_layer, block_size):
        self.block_size = block_size
        self.length = 0  # positions cached so far
        self.k = [None] * n_layer
        self.v = [None] * n_layer

    def append(self, layer, k, v):
        B, nh, T, hs = k.shape
        end = self.length + T
        assert end <= self.block_size, f"KV cache holds {self.block_size} positions, asked for {end}"
        if self.k[layer] is None:
            self.k[layer] = k.new_empty(B, nh, self.block_size, hs)
            self.v[layer] = v.new_empty(B, nh, self.block_size, hs)
        self.k[layer][:, :, self.length : end] = k
        self.v[layer][:, :, self.length : end] = v
        return self.k[layer][:, :, :end], self.v[layer][:, :, :end]


def _left_padding(attention_mask, b, length):
    """The first token of each row, (b,) int64, from a left-padded (b, length) attention mask."""
    if tuple(attention_mask.shape) != (b, length):
        raise ValueError(f"attention_mask must have shape (batch, cached + new positions) = ({b}, {length}), got {tuple(attention_mask.shape)}")
    mask = attention_mask.bool()
    if bool((mask[:, :-1] & ~mask[:, 1:]).any()):
        raise ValueError("attention_mask must be left padding: 0s (padding) then 1s (tokens) in each row")
    return length - mask.sum(1)


def _nucleus(logits, top_p):
    """logits with every token outside the top_p nucleus set to -inf (at least one is kept)."""
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
    probs = F.softmax(sorted_logits, dim=-1)
    # a token goes when the tokens ranked above it already hold top_p of the probability
    sorted_logits = sorted_logits.masked_fill(probs.cumsum(-1) - probs >= top_p, -float("inf"))
    return logits.scatter(-1, order, sorted_logits)


@dataclass
class GPTConfig:
    block_size: int = 1024
    vocab_size: int = 50304  # GPT-2 vocab_size of 50257, padded up to nearest multiple of 64 for efficiency
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    dropout: float = 0.0
    bias: bool = True  # True: bias in Linears and LayerNorms, like GPT-2. False: a bit better and faster
    backend: str = "auto"  # fastgpt: 'auto', or 'reference', 'triton', 'cuda' for every op of this model that has it
    gelu_approximate: str = "none"  # fastgpt: nanoGPT's exact GELU, or 'tanh' (OpenAI GPT-2's gelu_new, for its weights)
    # fastgpt: with targets, forward returns (None, loss) from ops.linear_cross_entropy, which never holds the
    # (B*T, vocab_size) logits; an all-ignored batch then gives loss 0 (nanoGPT's F.cross_entropy: NaN)
    fused_loss: bool = False

    def __post_init__(self):
        for name in ("block_size", "vocab_size", "n_layer", "n_head", "n_embd"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"GPTConfig.{name} must be a positive int, got {value!r}")
        if self.n_embd % self.n_head:
            raise ValueError(f"GPTConfig.n_head ({self.n_head}) must divide n_embd ({self.n_embd})")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"GPTConfig.dropout must be in [0, 1), got {self.dropout}")
        if self.gelu_approximate not in ("none", "tanh"):
            raise ValueError(f"GPTConfig.gelu_approximate must be 'none' (exact erf) or 'tanh', got {self.gelu_approximate!r}")
        if self.backend not in BACKENDS + ("auto",):
            raise ValueError(f"GPTConfig.backend must be one of {BACKENDS + ('auto',)}, got {self.backend!r}")
        if not isinstance(self.fused_loss, bool):
            raise ValueError(f"GPTConfig.fused_loss must be True or False, got {self.fused_loss!r}")


    @classmethod
    def from_preset(cls, name, **overrides):
        """A named preset's model (see fastgpt.presets) with field overrides."""
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; expected one of {', '.join(PRESETS)}")
        fields = {f.name for f in dataclasses.fields(cls)}
        return cls(**{**{k: v for k, v in PRESETS[name].items() if k in fields}, **overrides})


class GPT(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = config

        self.transformer = nn.ModuleDict(
            dict(
                wte=nn.Embedding(config.vocab_size, config.n_embd),
                wpe=nn.Embedding(config.block_size, config.n_embd),
                drop=nn.Dropout(config.dropout),
                h=nn.ModuleList([Block(config) for _ in range(config.n_layer)]),
                ln_f=LayerNorm(config.n_embd, bias=config.bias),
            )
        )
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.transformer.wte.weight = self.lm_head.weight  # https://paperswithcode.com/method/weight-tying

        # init all weights
        self.apply(self._init_weights)
        # apply special scaled init to the residual projections, per GPT-2 paper
        for pn, p in self.named_parameters():
            if pn.endswith("c_proj.weight"):
                torch.nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    def get_num_params(self, non_embedding=True):
        """
        Return the number of parameters in the model.
        For non-embedding count (default), the position embeddings get subtracted.
        The token embeddings would too, except due to the parameter sharing these
        params are actually used as weights in the final layer, so we include them.
        """
        n_params = sum(p.numel() for p in self.parameters())
        if non_embedding:
            n_params -= self.transformer.wpe.weight.numel()
        return n_params

    def _init_weights(self, module):
        if isinstance(module, nn.Linear):
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                torch.nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def forward(self, idx, targets=None, kv_cache=None, attention_mask=None):
        """attention_mask (fastgpt, Hugging Face's convention): None, or (b, cached + t) with 1 for
        tokens and 0 for left padding, which is then never attended to; each row's positions count
        from its first token."""
        with self._backend():
            device = idx.device
            self._check_idx(idx)
            b, t = idx.size()
            start = 0 if kv_cache is None else kv_cache.length  # positions already in the cache
            assert start + t <= self.config.block_size, f"Cannot forward sequence of length {start + t}, block size is only {self.config.block_size}"
            pos = torch.arange(start, start + t, dtype=torch.long, device=device)  # shape (t)
            key_start = None
            if attention_mask is not None:
                key_start = _left_padding(attention_mask, b, start + t)  # (b,) each row's first token
                pos = (pos - key_start[:, None]).clamp_(min=0)  # shape (b, t)

            # forward the GPT model itself
            tok_emb = self.transformer.wte(idx)  # token embeddings of shape (b, t, n_embd)
            pos_emb = self.transformer.wpe(pos)  # position embeddings of shape (t, n_embd) or (b, t, n_embd)
            x = self.transformer.drop(tok_emb + pos_emb)
            for layer, block in enumerate(self.transformer.h):
                x = block(x, kv_cache, layer, key_start)
            x = self.transformer.ln_f(x)
            if kv_cache is not None:
                kv_cache.length += t

            if targets is not None:
                # if we are given some desired targets also calculate the loss
                targets = targets.masked_fill(targets == -100, -1)  # fastgpt: PyTorch's ignore index too
                if self.config.fused_loss:  # fastgpt: in chunks of rows, the logits never held
                    logits, loss = None, ops.linear_cross_entropy(x, self.lm_head.weight, targets, ignore_index=-1)
                else:
                    logits = self.lm_head(x)
                    loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-1)
            else:
                # inference-time mini-optimization: only forward the lm_head on the very last position
                logits = self.lm_head(x[:, [-1], :])  # note: using list [-1] to preserve the time dim
                loss = None

            return logits, loss

    def _check_idx(self, idx):
        # nanoGPT fails on these deep inside (an index error on an empty sequence); say what is wrong
        if not isinstance(idx, torch.Tensor) or idx.is_floating_point() or idx.is_complex() or idx.dtype == torch.bool:
            raise TypeError(f"idx must hold integer token ids, got {getattr(idx, 'dtype', type(idx).__name__)}")
        if idx.dim() != 2 or idx.shape[0] < 1 or idx.shape[1] < 1:
            raise ValueError(f"idx must be (B, T) token ids with B >= 1 and 1 <= T <= {self.config.block_size}, "
                             f"got shape {tuple(idx.shape)}")

    def _backend(self):
        if self.config.backend == "auto":
            return contextlib.nullcontext()
        return use_backend(self.config.backend)

    def backends(self, device="cpu", dtype=torch.float32, batch=2):
        """fastgpt: {op: the backend it runs on} for this model on ``device`` in ``dtype`` (see
        fastgpt.report), with its config.backend applied; 'error: ...' for one that cannot run.
        linear_cross_entropy is listed only when config.fused_loss puts it in the model; bias_gelu
        and linear_bias_gelu never are (the MLP calls mlp, whose triton backend runs the bias+GELU
        kernel and whose cuda backend runs linear_bias_gelu's GEMM)."""
        with self._backend():
            ops_ = report(device, dtype, n_embd=self.config.n_embd, n_head=self.config.n_head, block_size=self.config.block_size, batch=batch)
        ops_.pop("bias_gelu", None)
        ops_.pop("linear_bias_gelu", None)
        if not self.config.fused_loss:
            ops_.pop("linear_cross_entropy", None)
        return ops_

    def crop_block_size(self, block_size):
        # model surgery to decrease the block size if necessary
        # e.g. we may load the GPT2 pretrained model checkpoint (block size 1024)
        # but want to use a smaller block size for some smaller, simpler model
        assert block_size <= self.config.block_size
        self.config.block_size = block_size
        self.transformer.wpe.weight = nn.Parameter(self.transformer.wpe.weight[:block_size])

    def configure_optimizers(self, weight_decay, learning_rate, betas, device_type):
        # start with all of the candidate parameters
        param_dict = {pn: p for pn, p in self.named_parameters()}
        # filter out those that do not require grad
        param_dict = {pn: p for pn, p in param_dict.items() if p.requires_grad}
        # create optim groups. Any parameters that is 2D will be weight decayed, otherwise no.
        # i.e. all weight tensors in matmuls + embeddings decay, all biases and layernorms don't.
        decay_params = [p for n, p in param_dict.items() if p.dim() >= 2]
        nodecay_params = [p for n, p in param_dict.items() if p.dim() < 2]
        optim_groups = [
            {"params": decay_params, "weight_decay": weight_decay},
            {"params": nodecay_params, "weight_decay": 0.0},
        ]
        # Create AdamW optimizer and use the fused version if it is available
        # (fastgpt: on the CPU too, where torch >= 2.4 has it and it beats foreach)
        fused_available = "fused" in inspect.signature(torch.optim.AdamW).parameters
        use_fused = fused_available and device_type in ("cuda", "cpu")
        extra_args = dict(fused=True) if use_fused else dict()
        return torch.optim.AdamW(optim_groups, lr=learning_rate, betas=betas, **extra_args)

    def estimate_mfu(self, fwdbwd_per_iter, dt, peak_flops=312e12):
        """estimate model flops utilization (MFU) in units of the peak FLOPS (default: A100 bf16)"""
        # first estimate the number of flops we do per iteration.
        # see PaLM paper Appendix B as ref: https://arxiv.org/abs/2204.02311
        N = self.get_num_params()
        cfg = self.config
        L, H, Q, T = cfg.n_layer, cfg.n_head, cfg.n_embd // cfg.n_head, cfg.block_size
        flops_per_token = 6 * N + 12 * L * H * Q * T
        flops_per_fwdbwd = flops_per_token * T
        flops_per_iter = flops_per_fwdbwd * fwdbwd_per_iter
        # express our flops throughput as ratio of the peak flops
        flops_achieved = flops_per_iter * (1.0 / dt)  # per second
        return flops_achieved / peak_flops

    @torch.no_grad()
    def generate(self, idx, max_new_tokens, temperature=1.0, top_k=None, use_cache=True, top_p=None, eos_token=None,
                 attention_mask=None):
        """
        Take a conditioning sequence of indices idx (LongTensor of shape (b,t)) and complete
        the sequence max_new_tokens times, feeding the predictions back into the model each time.
        Most likely you'll want to make sure to be in model.eval() mode of operation for this.

        With use_cache (the default) the prompt is run once (prefill) and each new token then
        attends to cached keys and values: the same tokens as without the cache for the same
        seed. Once the sequence outgrows block_size every position shifts, so from there on
        each step re-runs the cropped context, as nanoGPT does.

        fastgpt's additions, as Hugging Face's generate has them:
        top_p: nucleus sampling, after top_k: keep the most likely tokens until their probability
            reaches top_p (at least one).
        eos_token: a row that samples it is finished: its later tokens are eos_token, and the
            loop ends early once every row is finished (the result may be shorter).
        attention_mask: (b, t), 1 for prompt tokens and 0 for left padding: a batch of prompts of
            different lengths, right-aligned. Padding is never attended to and each row's
            positions start at its first token, so each row gets the tokens it would get alone
            (greedily; sampled rows draw from one generator in batch order).
        """
        if top_p is not None and not 0.0 < top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {top_p}")
        mask = None
        if attention_mask is not None:
            if tuple(attention_mask.shape) != tuple(idx.shape):
                raise ValueError(f"attention_mask must have idx's shape {tuple(idx.shape)}, got {tuple(attention_mask.shape)}")
            mask = attention_mask.to(device=idx.device, dtype=torch.bool)
        finished = torch.zeros(idx.size(0), dtype=torch.bool, device=idx.device) if eos_token is not None else None
        cache = KVCache(self.config.n_layer, self.config.block_size) if use_cache else None
        for _ in range(max_new_tokens):
            # if the sequence context is growing too long we must crop it at block_size
            cropped = idx.size(1) > self.config.block_size
            idx_cond = idx[:, -self.config.block_size :] if cropped else idx
            mask_cond = None if mask is None else mask[:, -idx_cond.size(1) :]
            # forward the model to get the logits for the index in the sequence
            if cache is not None and not cropped:
                logits, _ = self(idx_cond[:, cache.length :], kv_cache=cache, attention_mask=mask_cond)  # prefill, then one token
            else:
                logits, _ = self(idx_cond, attention_mask=mask_cond)
            # pluck the logits at the final step and scale by desired temperature
            logits = logits[:, -1, :] / temperature
            # optionally crop the logits to only the top k options
            if top_k is not None:
                v, _ = torch.topk(logits, min(top_k, logits.size(-1)))
                logits[logits < v[:, [-1]]] = -float("Inf")
            if top_p is not None and top_p < 1.0:
                logits = _nucleus(logits, top_p)
            # apply softmax to convert logits to (normalized) probabilities
            probs = F.softmax(logits, dim=-1)
            # sample from the distribution
            idx_next = torch.multinomial(probs, num_samples=1)
            if finished is not None:
                idx_next.masked_fill_(finished[:, None], eos_token)
                finished |= idx_next[:, 0] == eos_token
            # append sampled index to the running sequence and continue
            idx = torch.cat((idx, idx_next), dim=1)
            if mask is not None:
                mask = torch.cat((mask, mask.new_ones(mask.size(0), 1)), dim=1)
            if finished is not None and bool(finished.all()):
                break
        return idx

    @classmethod
    def from_preset(cls, name, **overrides):
        """A freshly initialised GPT of a named preset (see PRESETS), with config overrides."""
        return cls(GPTConfig.from_preset(name, **overrides))

    # nanoGPT's entry points for other people's weights. The formats live above the model
    # (fastgpt.hf, fastgpt.checkpoint), so these two methods import them when called: the one
    # exception to the downward-only imports (scripts/import_graph.py lists it as deferred).

    @classmethod
    def from_pretrained(cls, path, override_args=None, **overrides):
        """GPT-2 weights from a local Hugging Face directory, or a nanoGPT/fastgpt ckpt.pt;
        nothing is downloaded (see fastgpt.hf)."""
        from fastgpt.hf import from_pretrained

        return from_pretrained(path, override_args, **overrides)

    def load_nanogpt_state_dict(self, state_dict, strict=True):
        """Load a nanoGPT (or fastgpt) state_dict, also one saved from a torch.compile'd model."""
        from fastgpt.checkpoint import clean_state_dict

        return self.load_state_dict(clean_state_dict(state_dict), strict=strict)
