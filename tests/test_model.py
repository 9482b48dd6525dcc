"""fastgpt.GPT is a drop-in for nanoGPT's GPT: same keys, same outputs, same methods."""
import pytest
import torch

import fastgpt
import nanogpt_reference as nano
from fastgpt import GPT, GPTConfig
from helpers import assert_same_grads

SMALL = dict(block_size=32, vocab_size=67, n_layer=2, n_head=4, n_embd=64)


def _pair(bias=True, dropout=0.0):
    ref = nano.GPT(nano.GPTConfig(**SMALL, bias=bias, dropout=dropout))
    ours = GPT(GPTConfig(**SMALL, bias=bias, dropout=dropout, backend="reference"))
    ours.load_state_dict(ref.state_dict())
    return ref, ours


@pytest.mark.parametrize("bias", [True, False])
def test_state_dict_keys_equal_nanogpt(bias):
    ref, ours = _pair(bias)
    assert list(ours.state_dict()) == list(ref.state_dict())
    for k, v in ref.state_dict().items():
        assert ours.state_dict()[k].shape == v.shape, k


def test_same_init_as_nanogpt():
    torch.manual_seed(3)
    ref = nano.GPT(nano.GPTConfig(**SMALL))
    torch.manual_seed(3)
    ours = GPT(GPTConfig(**SMALL))
    for (k, a), (_, b) in zip(ref.state_dict().items(), ours.state_dict().items()):
        assert torch.equal(a, b), k


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("T", [1, 17, 32])
def test_outputs_and_grads_match_nanogpt(bias, T):
    ref, ours = _pair(bias)
    idx = torch.randint(0, SMALL["vocab_size"], (3, T))
    tgt = torch.randint(0, SMALL["vocab_size"], (3, T))
    (l_ref, loss_ref), (l_ours, loss_ours) = ref(idx, tgt), ours(idx, tgt)
    torch.testing.assert_close(l_ours, l_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(loss_ours, loss_ref, rtol=1e-5, atol=1e-6)
    loss_ref.backward()
    loss_ours.backward()
    assert_same_grads(ours, ref)
    # inference: only the last position's logits, no loss
    (l_ref, none_ref), (l_ours, none_ours) = ref(idx), ours(idx)
    assert none_ref is None and none_ours is None and l_ours.shape == (3, 1, SMALL["vocab_size"])
    torch.testing.assert_close(l_ours, l_ref, rtol=1e-5, atol=1e-5)


def test_fp64_oracle():
    """The reference backend in fp32 against the same model in fp64."""
    _, ours = _pair()
    oracle = GPT(GPTConfig(**SMALL, backend="reference")).double()
    oracle.load_state_dict(ours.state_dict())
    idx = torch.randint(0, SMALL["vocab_size"], (2, 32))
    torch.testing.assert_close(ours(idx, idx)[0].double(), oracle(idx, idx)[0], rtol=1e-4, atol=1e-5)


def test_extension_backend_matches_reference():
    """The same model with the qkv projection on fastgpt._C (its CPU twin here)."""
    ref, ours = _pair()
    idx = torch.randint(0, SMALL["vocab_size"], (2, 19))
    loss_ref = ref(idx, idx)[1]
    with fastgpt.use_backend(qkv_projection="cuda"):
        loss = ours(idx, idx)[1]
    torch.testing.assert_close(loss, loss_ref, rtol=1e-5, atol=1e-6)
    loss_ref.backward()
    loss.backward()
    assert_same_grads(ours, ref)


def test_load_compiled_and_old_nanogpt_checkpoints():
    ref, _ = _pair()
    sd = {"_orig_mod." + k: v for k, v in ref.state_dict().items()}
    sd["_orig_mod.transformer.h.0.attn.bias"] = torch.ones(1, 1, 32, 32).tril()  # old non-flash mask buffer
    ours = GPT(GPTConfig(**SMALL))
    with pytest.raises(RuntimeError):
        ours.load_state_dict(sd)
    ours.load_nanogpt_state_dict(sd)
    idx = torch.randint(0, SMALL["vocab_size"], (1, 8))
    torch.testing.assert_close(ours(idx)[0], ref(idx)[0])


def test_generate_is_seeded_and_consistent_with_forward():
    _, model = _pair()
    model.eval()
    idx = torch.randint(0, SMALL["vocab_size"], (2, 5))
    torch.manual_seed(7)
    a = model.generate(idx, 40, temperature=0.9, top_k=10)  # runs past block_size: crops the context
    torch.manual_seed(7)
    b = model.generate(idx, 40, temperature=0.9, top_k=10)
    assert a.shape == (2, 45) and torch.equal(a, b) and torch.equal(a[:, :5], idx)
    assert int(a.min()) >= 0 and int(a.max()) < SMALL["vocab_size"]
    # greedy (top_k=1) equals argmax of forward, step by step
    g = model.generate(idx, 3, top_k=1)
    step = idx
    for _ in range(3):
        step = torch.cat([step, model(step)[0][:, -1].argmax(-1, keepdim=True)], 1)
    assert torch.equal(g, step)


def test_methods():
    _, model = _pair()
    n = model.get_num_params()
    assert n == sum(p.numel() for p in model.parameters()) - model.transformer.wpe.weight.numel()
    model.crop_block_size(16)
    assert model.config.block_size == 16 and model.transformer.wpe.weight.shape[0] == 16
    with pytest.raises(AssertionError):
        model(torch.zeros(1, 17, dtype=torch.long))
    opt = model.configure_optimizers(0.1, 1e-3, (0.9, 0.95), "cpu")
    decay, nodecay = opt.param_groups
    assert decay["weight_decay"] == 0.1 and all(p.dim() >= 2 for p in decay["params"])
    assert nodecay["weight_decay"] == 0.0 and all(p.dim() < 2 for p in nodecay["params"])
    assert 0 < model.estimate_mfu(fwdbwd_per_iter=8, dt=0.1) < 1


def test_presets():
    with torch.device("meta"):
        gpt2 = GPT.from_preset("gpt2")
    assert round(gpt2.get_num_params() / 1e6, 2) == 123.65  # what nanoGPT prints for GPT-2 small
    for name, (L, H, C) in {"gpt2-medium": (24, 16, 1024), "gpt2-large": (36, 20, 1280), "gpt2-xl": (48, 25, 1600)}.items():
        cfg = GPTConfig.from_preset(name)
        assert (cfg.n_layer, cfg.n_head, cfg.n_embd, cfg.vocab_size) == (L, H, C, 50257)
    small = GPTConfig.from_preset("shakespeare-char-small", dropout=0.1)
    assert (small.n_layer, small.n_head, small.n_embd, small.block_size, small.dropout) == (4, 4, 128, 64, 0.1)
    with pytest.raises(ValueError, match="unknown preset"):
        GPTConfig.from_preset("gpt5")


def test_nanogpt_defaults():
    cfg = GPTConfig()
    assert (cfg.block_size, cfg.vocab_size, cfg.n_layer, cfg.n_head, cfg.n_embd, cfg.dropout, cfg.bias) == (
        1024, 50304, 12, 12, 768, 0.0, True)
    assert cfg.backend == "auto"


@pytest.mark.parametrize("kw, match", [
    (dict(n_head=5), "n_head"),
    (dict(n_layer=0), "n_layer"),
    (dict(dropout=1.0), "dropout"),
    (dict(backend="cudnn"), "backend"),
])
def test_bad_config(kw, match):
    with pytest.raises(ValueError, match=match):
        GPTConfig(**{**SMALL, **kw})


@pytest.mark.parametrize("new_tokens", [5, 40])  # 40 runs past block_size (32)
def test_generate_with_kv_cache_equals_without(new_tokens):
    _, model = _pair()
    model = model.double().eval()
    idx = torch.randint(0, SMALL["vocab_size"], (2, 7))
    torch.manual_seed(11)
    cached = model.generate(idx, new_tokens, temperature=1.0, top_k=20)
    torch.manual_seed(11)
    plain = model.generate(idx, new_tokens, temperature=1.0, top_k=20, use_cache=False)
    assert torch.equal(cached, plain)


def test_kv_cache_logits_match_full_forward():
    from fastgpt.model import KVCache

    _, model = _pair()
    model.eval()
    idx = torch.randint(0, SMALL["vocab_size"], (2, 12))
    cache = KVCache(SMALL["n_layer"], SMALL["block_size"])
    model(idx[:, :9], kv_cache=cache)
    for t in range(9, 12):
        step = model(idx[:, t : t + 1], kv_cache=cache)[0]
        full = model(idx[:, : t + 1])[0]
        torch.testing.assert_close(step, full, rtol=1e-5, atol=1e-5)
    assert cache.length == 12


# ---- generation users expect: left-padded batches, top_p, eos_token


def _left_pad(prompts, pad=0):
    T = max(len(p) for p in prompts)
    idx = torch.tensor([[pad] * (T - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (T - len(p)) + [1] * len(p) for p in prompts])
    return idx, mask


def test_padded_forward_equals_each_row_alone():
    _, model = _pair()
    model = model.double().eval()
    prompts = [torch.randint(0, SMALL["vocab_size"], (n,)).tolist() for n in (7, 3, 1)]
    idx, mask = _left_pad(prompts)
    logits = model(idx, idx, attention_mask=mask)[0]  # with targets: logits at every position
    for b, p in enumerate(prompts):
        alone = model(torch.tensor([p]), torch.tensor([p]))[0]
        torch.testing.assert_close(logits[b, -len(p):], alone[0], rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("use_cache", [True, False])
@pytest.mark.parametrize("new_tokens", [6, 40])  # 40 runs past block_size (32): the cropped context shifts the padding out
def test_padded_batch_generates_what_each_prompt_does_alone(use_cache, new_tokens):
    _, model = _pair()
    model = model.double().eval()
    prompts = [torch.randint(0, SMALL["vocab_size"], (n,)).tolist() for n in (9, 4, 1)]
    idx, mask = _left_pad(prompts)
    out = model.generate(idx, new_tokens, top_k=1, use_cache=use_cache, attention_mask=mask)
    assert out.shape == (3, idx.size(1) + new_tokens)
    for b, p in enumerate(prompts):
        alone = model.generate(torch.tensor([p]), new_tokens, top_k=1, use_cache=use_cache)
        assert out[b, -new_tokens:].tolist() == alone[0, len(p):].tolist(), b


def test_attention_mask_must_be_left_padding():
    _, model = _pair()
    idx = torch.zeros(2, 4, dtype=torch.long)
    with pytest.raises(ValueError, match="left padding"):
        model(idx, attention_mask=torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]]))
    with pytest.raises(ValueError, match="attention_mask must have idx's shape"):
        model.generate(idx, 1, attention_mask=torch.ones(2, 3))


def test_nucleus_keeps_the_smallest_set_reaching_top_p():
    from fastgpt.model import _nucleus

    logits = torch.tensor([[0.05, 0.5, 0.15, 0.3]]).log()
    for top_p, kept in [(0.4, {1}), (0.75, {1, 3}), (0.8, {1, 3}), (0.81, {1, 3, 2}), (1.0, {0, 1, 2, 3})]:
        out = _nucleus(logits.clone(), top_p)
        assert set(torch.nonzero(torch.isfinite(out[0])).flatten().tolist()) == kept, top_p
    _, model = _pair()
    model.eval()
    idx = torch.randint(0, SMALL["vocab_size"], (2, 5))
    torch.manual_seed(3)
    tiny_p = model.generate(idx, 8, top_p=1e-6)  # only the likeliest token survives: greedy
    assert torch.equal(tiny_p, model.generate(idx, 8, top_k=1))
    torch.manual_seed(3)
    a = model.generate(idx, 8, temperature=1.0, top_p=1.0)
    torch.manual_seed(3)
    assert torch.equal(a, model.generate(idx, 8, temperature=1.0))
    with pytest.raises(ValueError, match="top_p"):
        model.generate(idx, 1, top_p=0.0)


def test_eos_token_ends_rows():
    _, model = _pair()
    model.eval()
    idx = torch.randint(0, SMALL["vocab_size"], (3, 4))
    greedy = model.generate(idx, 12, top_k=1)
    eos = int(greedy[0, 4 + 2])  # row 0's third new token
    out = model.generate(idx, 12, top_k=1, eos_token=eos)
    for b in range(3):
        new = greedy[b, 4:].tolist()
        stop = new.index(eos) if eos in new else None
        if stop is None:
            assert out[b, 4:].tolist() == new[: out.size(1) - 4]
        else:
            got = out[b, 4:].tolist()
            assert got[: stop + 1] == new[: stop + 1] and all(t == eos for t in got[stop:])
    ends = [greedy[b, 4:].tolist().index(eos) if eos in greedy[b, 4:].tolist() else 11 for b in range(3)]
    assert out.size(1) == 4 + max(ends) + 1  # stops once every row has finished
