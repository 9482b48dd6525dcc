"""The model walk-through: what a GPT does to a batch, stage by stage.

    python -m fastgpt.describe --preset gpt2
    python -m fastgpt.describe --preset shakespeare-char-small --batch 12 --context 64
    python -m fastgpt.describe --ckpt out/shakespeare-char-small --dtype bfloat16 --device cuda

Prints each stage's tensor shapes for batch B and context T, parameter counts (from the model
built on the meta device: nothing is allocated or downloaded), FLOPs per token, activation
memory, the T x T attention scores the fused attention never materialises, and which backend
runs each op on this machine.
"""
import argparse

import torch

from fastgpt.backends import registered, report
from fastgpt.model import GPT, GPTConfig
from fastgpt.presets import PRESETS
from fastgpt.runtime import quiet_exits

DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


def _n(module):
    return sum(p.numel() for p in module.parameters())


def _bytes(n):
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1024


def describe(config, batch=1, context=None, device="cpu", dtype="float32"):
    """The walk-through as a string. config: a GPTConfig."""
    B, T = batch, config.block_size if context is None else context
    if not isinstance(T, int) or T < 1:
        raise ValueError(f"--context must be a positive number of tokens, got {T}")
    if not isinstance(B, int) or B < 1:
        raise ValueError(f"--batch must be a positive number of sequences, got {B}")
    if T > config.block_size:
        raise ValueError(f"--context {T} is larger than the model's block_size {config.block_size}; lower --context")
    C, H, L, V = config.n_embd, config.n_head, config.n_layer, config.vocab_size
    D = C // H
    nbytes = DTYPE_BYTES[dtype]
    with torch.device("meta"):
        model = GPT(config)
    blk = model.transformer.h[0]
    total = model.get_num_params(non_embedding=False)
    non_emb = model.get_num_params()
    try:
        backends = report(device, getattr(torch, dtype), n_embd=C, n_head=H, block_size=T, batch=B)
    except Exception as e:  # e.g. a device that does not exist here
        backends = {op: f"unavailable ({type(e).__name__}: {e})" for op in registered()}

    rows = [
        ("tokens idx", f"[B, T] = [{B}, {T}]", "", "int64 token ids"),
        ("wte: token embedding", f"[B, T, C] = [{B}, {T}, {C}]", f"{_n(model.transformer.wte):,}", f"a {V} x {C} table (tied with lm_head)"),
        ("wpe: position embedding", f"[T, C] = [{T}, {C}]", f"{model.transformer.wpe.weight.numel():,}", "added, broadcast over B"),
        (f"-- block x {L} (per block) --", "", f"{_n(blk):,}", ""),
        ("  ln_1", f"[{B}, {T}, {C}]", f"{_n(blk.ln_1):,}", f"layer_norm -> {backends['layer_norm']}"),
        ("  c_attn -> q, k, v", f"3 x [B, nh, T, hs] = 3 x [{B}, {H}, {T}, {D}]", f"{_n(blk.attn.c_attn):,}",
         f"{H} heads x {D} head dim; qkv_projection -> {backends['qkv_projection']}"),
        ("  scores q k^T (not materialised)", f"[B, nh, T, T] = [{B}, {H}, {T}, {T}]", "",
         f"{_bytes(B * H * T * T * nbytes)} that the fused attention never writes"),
        ("  softmax(scores) v", f"[{B}, {H}, {T}, {D}] -> [{B}, {T}, {C}]", "", f"attention -> {backends['attention']}"),
        ("  attn.c_proj", f"[{B}, {T}, {C}]", f"{_n(blk.attn.c_proj):,}", "residual add"),
        ("  ln_2", f"[{B}, {T}, {C}]", f"{_n(blk.ln_2):,}", f"layer_norm -> {backends['layer_norm']}"),
        ("  mlp.c_fc + GELU", f"[B, T, 4C] = [{B}, {T}, {4 * C}]", f"{_n(blk.mlp.c_fc):,}", f"mlp -> {backends['mlp']}"),
        ("  mlp.c_proj", f"[{B}, {T}, {C}]", f"{_n(blk.mlp.c_proj):,}", "same mlp op; residual add"),
        ("ln_f", f"[{B}, {T}, {C}]", f"{_n(model.transformer.ln_f):,}", f"layer_norm -> {backends['layer_norm']}"),
        ("lm_head: logits", f"[B, T, vocab] = [{B}, {T}, {V}]", "0 (tied)", "training; generate() takes the last position only"),
    ]
    w = [max(len(r[i]) for r in rows + [("stage", "shape", "params", "")]) for i in range(3)]
    lines = [
        f"GPT: n_layer={L}, n_head={H}, n_embd={C}, block_size={config.block_size}, vocab_size={V}, bias={config.bias}, dropout={config.dropout}",
        f"for batch B={B}, context T={T}, {dtype} on {device}",
        "",
        f"{'stage':<{w[0]}}  {'shape':<{w[1]}}  {'params':>{w[2]}}  notes",
    ]
    lines += [f"{a:<{w[0]}}  {b:<{w[1]}}  {c:>{w[2]}}  {d}" for a, b, c, d in rows]

    attn_fwd = 4 * L * C * T  # q k^T and (att) v, per token, at full context
    fwd = 2 * non_emb + attn_fwd
    train = 6 * non_emb + 12 * L * H * D * T  # nanoGPT's estimate_mfu (PaLM appendix B)
    # Saved activations per block (Korthikanti et al. 2022, 16-bit: 34 B T C bytes) and the
    # 5 B nh T^2 bytes the unfused attention's scores, softmax and dropout mask would add.
    act_block = 34 * B * T * C * nbytes // 2
    scores_block = 5 * B * H * T * T * nbytes // 2
    logits = 2 * B * T * V * nbytes
    lines += [
        "",
        f"parameters: {total:,} in all; {non_emb:,} without the position embeddings (nanoGPT's count: {non_emb / 1e6:.2f}M)",
        f"FLOPs per token at T={T}: forward {fwd / 1e6:,.1f} MFLOP (2N + 4 L C T), training {train / 1e6:,.1f} MFLOP (6N + 12 L nh hs T)",
        f"FLOPs per forward of the batch: {fwd * B * T / 1e9:,.2f} GFLOP; per training step: {train * B * T / 1e9:,.2f} GFLOP",
        f"activation memory for backward: ~{_bytes(act_block)} per block, {_bytes(act_block * L + logits)} in all "
        f"(with {_bytes(logits)} of logits and their gradient)",
        f"without the fused attention: + {_bytes(scores_block)} per block of T x T scores, softmax and dropout mask "
        f"({_bytes(scores_block * L)} in all)",
        f"weights: {_bytes(total * nbytes)} in {dtype}; AdamW state: {_bytes(total * 8)} (fp32 m and v)",
        "backends here: " + ", ".join(f"{op}={b}" for op, b in backends.items()),
    ]
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    src = p.add_mutually_exclusive_group()
    src.add_argument("--preset", default="gpt2", help=f"one of {', '.join(PRESETS)}")
    src.add_argument("--ckpt", help="describe a checkpoint's model instead (a ckpt.pt or its out_dir)")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--context", type=int, default=None, help="tokens per sequence (default: block_size)")
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="float32", choices=list(DTYPE_BYTES))
    a = p.parse_args(argv)
    device = ("cuda" if torch.cuda.is_available() else "cpu") if a.device == "auto" else a.device
    with quiet_exits():  # | head ends quietly
        try:
            if a.ckpt:
                from fastgpt import checkpoint

                args = checkpoint.load(a.ckpt)["model_args"]
                config = GPTConfig(**{k: v for k, v in args.items() if k in GPTConfig.__dataclass_fields__})
            else:
                config = GPTConfig.from_preset(a.preset)
            print(describe(config, a.batch, a.context, device, a.dtype))
        except ValueError as e:
            raise SystemExit(f"error: {e}") from None


if __name__ == "__main__":
    main()
