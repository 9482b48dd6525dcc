"""A short demo: a small GPT trained for a few hundred steps on the embedded Shakespeare corpus.

    python -m fastgpt.demo [--steps 300] [--device cpu|cuda] [--seed 1337]

Prints which backend runs each op, the loss as it falls, tokens/s, the val loss and a sample.
"""
import argparse
import time

import torch

import fastgpt
from fastgpt.data import char_dataset, get_batch, shakespeare_text


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--batch-size", type=int, default=12)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--seed", type=int, default=1337)
    p.add_argument("--sample-chars", type=int, default=300)
    args = p.parse_args(argv)

    torch.manual_seed(args.seed)
    tok, train, val = char_dataset(shakespeare_text())
    model = fastgpt.GPT.from_preset("shakespeare-char-small", vocab_size=tok.vocab_size).to(args.device)
    cfg = model.config
    print(f"fastgpt {fastgpt.__version__}: {model.get_num_params() / 1e6:.2f}M parameters, "
          f"{cfg.n_layer} layers x {cfg.n_head} heads x {cfg.n_embd} dims, context {cfg.block_size}, "
          f"{len(train):,} training characters, vocabulary {tok.vocab_size}")
    print("backends:", ", ".join(f"{op}={b}" for op, b in fastgpt.report(args.device, **vars(cfg)).items()))

    opt = model.configure_optimizers(0.1, 1e-3, (0.9, 0.99), args.device)
    gen = torch.Generator().manual_seed(args.seed)
    tokens = args.batch_size * cfg.block_size
    t0 = time.perf_counter()
    for step in range(1, args.steps + 1):
        x, y = get_batch(train, args.batch_size, cfg.block_size, gen, args.device)
        _, loss = model(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 50 == 0 or step == args.steps:
            dt = time.perf_counter() - t0
            print(f"step {step:4d}  loss {loss.item():.3f}  {step * tokens / dt:,.0f} tokens/s")

    model.eval()
    with torch.no_grad():
        losses = [model(*get_batch(val, args.batch_size, cfg.block_size, gen, args.device))[1].item() for _ in range(20)]
    print(f"val loss {sum(losses) / len(losses):.3f}")
    prompt = torch.tensor([tok.encode("\n")], device=args.device)
    out = model.generate(prompt, args.sample_chars, temperature=0.8, top_k=40)
    print("sample:\n" + tok.decode(out[0].tolist()))


if __name__ == "__main__":
    main()
