"""Sample from a trained model, streaming the text as it is generated.

    python -m fastgpt.sample --ckpt out/shakespeare-char-small
    python -m fastgpt.sample --ckpt out/run1/ckpt.pt --prompt "ROMEO:" --max_new_tokens 300 \\
        --temperature 0.8 --top_k 200 --seed 1337 --num_samples 2
    python -m fastgpt.sample --ckpt out/run1 --prompt_file prompt.txt --no_stream
    python -m fastgpt.sample --ckpt gpt2 --prompt "Hello" --top_p 0.9     # GPT-2 from local files (fastgpt.sources)
    python -m fastgpt.sample --ckpt path/to/hf_gpt2_dir                  # a Hugging Face GPT-2 directory

--ckpt (or --init_from) takes what ``fastgpt.train --init_from`` takes: a ckpt.pt or the out_dir
holding it, a Hugging Face GPT-2 directory, or a GPT-2 name. The tokenizer comes from the
checkpoint (fastgpt checkpoints record it); weights with GPT-2's vocabulary (a Hugging Face
directory, a nanoGPT checkpoint without one) get GPT-2's BPE, from the directory's own vocab.json
when it has one. Tokens come from ``GPT.generate`` (its KV cache), a few at a time so the text
streams; a prompt longer than the context keeps its last block_size tokens, with a notice.
On the CPU, --threads 0 (the default) runs one thread for models under 20M parameters, whose
per-token work is too small to share (more threads only wait on each other, and on a busy
machine far longer), and all the cores this process may use for larger ones.
"""
import argparse
import os
import sys

import torch

from fastgpt import checkpoint, hf, sources
from fastgpt.backends import BackendError
from fastgpt.checkpoint import CheckpointError
from fastgpt.data import GPT2_VOCAB, DataError, GPT2Tokenizer, tokenizer_from_meta
from fastgpt.runtime import TrainError, autocast, cpu_cores, quiet_exits, resolve_device, resolve_dtype

STREAM_CHUNK = 8  # tokens per generate() call while streaming
THREADS_1_BELOW = 20_000_000  # parameters: smaller models decode on one CPU thread by default


def tokenizer_for(ckpt, path):
    meta = ckpt.get("meta")
    if meta:
        return tokenizer_from_meta(meta)
    if ckpt["model_args"].get("vocab_size", 0) >= GPT2_VOCAB:
        return GPT2Tokenizer()
    raise CheckpointError(f"checkpoint {path} records no tokenizer (a nanoGPT char-level checkpoint?); "
                          f"sample from a checkpoint written by python -m fastgpt.train")


def load(source):
    """(model, tokenizer) from a ckpt.pt or its out_dir, a Hugging Face GPT-2 directory or a GPT-2 name."""
    if os.path.isfile(source) or os.path.isfile(os.path.join(source, "ckpt.pt")):
        path = checkpoint.resolve(source)
        ckpt = checkpoint.load(path, map_location="cpu")
        return checkpoint.model_from_checkpoint(ckpt, path, dropout=0.0), tokenizer_for(ckpt, path)
    model = hf.from_pretrained(source, dropout=0.0)
    if model.config.vocab_size < GPT2_VOCAB:
        raise CheckpointError(f"{source} has a vocabulary of {model.config.vocab_size}, not GPT-2's, and no tokenizer for it; "
                              f"sample from the ckpt.pt it was exported from")
    return model, GPT2Tokenizer(sources.bpe_dir(source))


def default_threads(model):
    """CPU threads for generating from ``model`` (see the module's docstring)."""
    return 1 if model.get_num_params() < THREADS_1_BELOW else cpu_cores()


def encode_prompt(tok, text):
    if text == "":
        return tok.start()
    try:
        return tok.encode(text)
    except ValueError as e:
        raise DataError(f"prompt: {e}; use only characters that occur in the training text") from None


def generate_stream(model, ids, max_new_tokens, temperature, top_k, top_p=None, chunk=STREAM_CHUNK):
    """Yield the growing (1, T) sequence after each ``chunk`` new tokens."""
    done = 0
    while done < max_new_tokens:
        n = min(chunk, max_new_tokens - done)
        ids = model.generate(ids, n, temperature=temperature, top_k=top_k, top_p=top_p)
        done += n
        yield ids


def sample(ckpt_path, prompt="", max_new_tokens=500, temperature=0.8, top_k=200, seed=1337, num_samples=1,
           device="auto", dtype="auto", stream=True, out=None, err=None, top_p=None, threads=0):
    """Generate ``num_samples`` continuations of ``prompt``; returns their texts (prompt excluded).
    ckpt_path: any source --ckpt takes. threads: CPU threads (0: see default_threads)."""
    out, err = out or sys.stdout, err or sys.stderr
    if temperature <= 0:
        raise DataError(f"--temperature must be > 0, got {temperature}")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise DataError(f"--top_p must be in (0, 1], got {top_p}")
    if threads < 0:
        raise DataError(f"--threads must be >= 0 (0: chosen from the model's size), got {threads}")
    if top_k is not None and top_k <= 0:
        top_k = None
    dev = resolve_device(device)
    ptdtype = resolve_dtype(dtype, dev)
    model, tok = load(os.fspath(ckpt_path))
    model = model.to(dev).eval()
    before = torch.get_num_threads()
    if dev.type == "cpu":
        torch.set_num_threads(threads or default_threads(model))
    try:
        return _generate(model, tok, dev, ptdtype, prompt, max_new_tokens, temperature, top_k, top_p, seed, num_samples, stream, out, err)
    finally:
        torch.set_num_threads(before)


def _generate(model, tok, dev, ptdtype, prompt, max_new_tokens, temperature, top_k, top_p, seed, num_samples, stream, out, err):
    block = model.config.block_size
    ids = encode_prompt(tok, prompt)
    if len(ids) > block:
        print(f"note: the prompt is {len(ids)} tokens, longer than the model's context of {block}; "
              f"keeping its last {block} tokens", file=err)
        ids = ids[-block:]
    ctx = autocast(dev, ptdtype)
    torch.manual_seed(seed)
    if dev.type == "cuda":
        torch.cuda.manual_seed(seed)
    texts = []
    with torch.no_grad(), ctx:
        for s in range(num_samples):
            x = torch.tensor([ids], dtype=torch.long, device=dev)
            shown = ""
            if stream:
                out.write(prompt)
                for seq in generate_stream(model, x, max_new_tokens, temperature, top_k, top_p):
                    text = tok.decode(seq[0, len(ids):].tolist())
                    if not text.endswith("\ufffd"):  # hold back a partial UTF-8 character (BPE)
                        out.write(text[len(shown):])
                        out.flush()
                        shown = text
                    x = seq
                text = tok.decode(x[0, len(ids):].tolist())
                out.write(text[len(shown):] + "\n")
            else:
                x = model.generate(x, max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p)
                text = tok.decode(x[0, len(ids):].tolist())
                out.write(prompt + text + "\n")
            if s < num_samples - 1:
                out.write("---------------\n")
            out.flush()
            texts.append(text)
    return texts


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ckpt", "--init_from", required=True,
                   help="a ckpt.pt or the out_dir holding it, a Hugging Face GPT-2 directory, or a GPT-2 name (local files only)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--prompt", default="", help="the text to continue (default: a newline)")
    g.add_argument("--prompt_file", "--prompt-file", help="read the prompt from this file")
    p.add_argument("--max_new_tokens", "--max-new-tokens", type=int, default=500)
    p.add_argument("--temperature", type=float, default=0.8)
    p.add_argument("--top_k", "--top-k", type=int, default=200, help="0: no top-k filtering")
    p.add_argument("--top_p", "--top-p", type=float, default=None, help="nucleus sampling: keep the likeliest tokens up to this probability")
    p.add_argument("--seed", type=int, default=1337)
    p.add_argument("--num_samples", "--num-samples", type=int, default=1)
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    p.add_argument("--threads", type=int, default=0, help="CPU threads (default 0: one for small models, all cores for large)")
    p.add_argument("--no_stream", "--no-stream", action="store_true", help="print each sample when it is complete")
    a = p.parse_args(argv)
    with quiet_exits():  # Ctrl-C and | head end quietly
        try:
            prompt = a.prompt
            if a.prompt_file:
                try:
                    prompt = open(a.prompt_file, encoding="utf-8").read()
                except OSError as e:
                    raise DataError(f"prompt file {a.prompt_file!r} cannot be read ({e.strerror}); pass an existing text file") from None
            sample(a.ckpt, prompt, a.max_new_tokens, a.temperature, a.top_k, a.seed, a.num_samples, a.device, a.dtype,
                   stream=not a.no_stream, top_p=a.top_p, threads=a.threads)
        except (CheckpointError, DataError, TrainError, BackendError) as e:
            raise SystemExit(f"error: {e}") from None


if __name__ == "__main__":
    main()
