"""Time one contrastive training batch on this machine's CPU.

Prints the seconds per batch (forward + backward + Adam step over 4 * batch_pairs images) for
ResNet18 and the small network at 32 and 40 px, with 1 and 2 torch threads, and the embedding
throughput in float32 and bf16 (bf16 is faster only where the CPU has AMX).

    .venv/bin/python tools/bench_refine_batch.py [--batch-pairs 400] [--repeats 3]
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from toxrt.offline.loss import contrastive_loss, pair_distances
from toxrt.offline.model import build_model
from toxrt.offline.train import cpu_has_amx


def time_batch(network: str, size: int, threads: int, pairs: int, repeats: int) -> float:
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = build_model(network).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = torch.rand(4 * pairs, 1, size, size)
    negative = torch.arange(2 * pairs) >= pairs
    times = []
    for k in range(repeats + 1):  # the first batch warms up the allocator and kernels
        t0 = time.perf_counter()
        z = model(x)
        loss = contrastive_loss(pair_distances(z[:2 * pairs], z[2 * pairs:]), negative).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if k:
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def time_embed(network: str, size: int, threads: int, bf16: bool, n: int = 4096) -> float:
    """Images per second through the network in inference mode."""
    torch.set_num_threads(threads)
    model = build_model(network).eval()
    x = torch.rand(n, 1, size, size)
    ctx = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else torch.autocast("cpu", enabled=False)
    with torch.inference_mode(), ctx:
        model(x[:256])
        t0 = time.perf_counter()
        for lo in range(0, n, 2048):
            model(x[lo:lo + 2048])
    return n / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-pairs", type=int, default=400)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(f"torch {torch.__version__}, capability {torch.backends.cpu.get_cpu_capability()}, "
          f"AMX {cpu_has_amx()}, batch = {4 * args.batch_pairs} images")
    print(f"{'network':10s} {'px':>3s} {'threads':>7s} {'s/batch':>8s}")
    for network in ("resnet18", "small"):
        for size in (32, 40):
            for threads in (1, 2):
                seconds = time_batch(network, size, threads, args.batch_pairs, args.repeats)
                print(f"{network:10s} {size:3d} {threads:7d} {seconds:8.3f}", flush=True)
    for network in ("resnet18", "small"):
        f32 = time_embed(network, 32, 2, False)
        bf16 = time_embed(network, 32, 2, True)
        print(f"embed {network} 32 px, 2 threads: float32 {f32:,.0f} img/s, bf16 {bf16:,.0f} img/s", flush=True)


if __name__ == "__main__":
    main()
