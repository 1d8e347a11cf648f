"""Times the peers a user would pick instead of this project, on the step bench's shape.

Run by `cargo xtask bench --peers` right before the project's own benches, so that both are
measured on the same machine under the same load. Measures, on the CPU with PyTorch's default
thread count:

- `torch_gemm`: the encoder GEMM `x @ w.T` ([N, d] x [d, F]), what `train_step/gemm_encoder`
  measures for the project;
- `torch_topk_row`, `torch_topk_global`, `torch_topk_column`: `torch.topk` doing the job of
  TopK (each row's k), Mutual Choice (the N k largest of the matrix) and Feature Choice with
  uniform capacities (each column's N k / F) on the same [N, F] scores;
- `sparsify_step`: one training step of EleutherAI sparsify's `SparseCoder` (TopK, FVU loss,
  backward, parallel-gradient removal, Adam, decoder renormalisation), the peer of
  `train_step/step_topk`.

Writes one JSON object to `--out`. A missing `sparsify` leaves its entry out; a missing `torch`
exits with status 3 so that the caller can say the peers were skipped.
"""

import argparse
import json
import os
import statistics
import sys
import time


def median_seconds(fn, repeats, warmup=1):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), times


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=4096)
    parser.add_argument("--d", type=int, default=384)
    parser.add_argument("--f", type=int, default=16384)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    try:
        import torch
    except ImportError:
        print("peers: no torch in this Python", file=sys.stderr)
        sys.exit(3)

    n, d, f, k = args.n, args.d, args.f, args.k
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(n, d, generator=generator) * 2 - 1
    w = torch.rand(f, d, generator=generator) * 2 - 1
    result = {
        "shape": {"n": n, "d": d, "f": f, "k": k},
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "repeats": args.repeats,
        "seconds": {},
        "samples": {},
    }

    def record(name, fn):
        med, times = median_seconds(fn, args.repeats)
        result["seconds"][name] = med
        result["samples"][name] = times
        print(f"peers: {name} {med * 1e3:.1f} ms", file=sys.stderr)

    with torch.no_grad():
        record("torch_gemm", lambda: x @ w.T)
        scores = x @ w.T
        record("torch_topk_row", lambda: scores.topk(k, dim=1, sorted=False))
        record("torch_topk_global", lambda: scores.reshape(-1).topk(n * k, sorted=False))
        m = max(n * k // f, 1)
        record("torch_topk_column", lambda: scores.topk(m, dim=0, sorted=False))
        del scores

    # Without a GPU, sparsify's Triton decoder cannot start: its eager decoder is the CPU path.
    os.environ.setdefault("SPARSIFY_DISABLE_TRITON", "1")
    try:
        import importlib.metadata

        from sparsify import SparseCoder, SparseCoderConfig

        result["sparsify"] = importlib.metadata.version("eai-sparsify")
    except ImportError:
        print("peers: no sparsify in this Python; its step is not timed", file=sys.stderr)
    else:
        torch.manual_seed(0)
        sae = SparseCoder(d, SparseCoderConfig(num_latents=f, k=k))
        optimizer = torch.optim.Adam(sae.parameters(), lr=1e-4)

        def sparsify_step():
            out = sae(x)
            out.fvu.backward()
            sae.remove_gradient_parallel_to_decoder_directions()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            sae.set_decoder_norm_to_unit_norm()

        record("sparsify_step", sparsify_step)

    with open(args.out, "w") as out:
        json.dump(result, out, indent=1)


if __name__ == "__main__":
    main()
