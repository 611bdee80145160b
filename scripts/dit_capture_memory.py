"""What capturing one joint block's image-to-text map keeps for backward, chunked or not.

Runs ``attention.joint_maps.image_text_map`` on random queries and keys of one block's shape
(Flux dev by default: 24 heads of 128, T5's 512 text tokens; image tokens from ``--side``
pixels with a /8 VAE and 2 x 2 patches) and counts, with ``torch.autograd.graph``'s
saved-tensor hooks, the bytes autograd keeps for the backward pass that are not the inputs
themselves: the chunked map (activation checkpointing, ``HEADS_PER_CHUNK`` heads at a time)
against the same formula in one piece. Also prints the largest transient tensor each makes
(one chunk's or all heads' probabilities, from the shapes). CPU, float32, batch 1, seconds.

    python scripts/dit_capture_memory.py [--side 512] [--heads 24] [--head-dim 128] [--text 512]
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from textloc_core.attention.joint_maps import HEADS_PER_CHUNK, image_text_map  # noqa: E402


def direct_map(q: torch.Tensor, k: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
    """The same map in one piece: every head's probabilities at once, kept by autograd."""
    probs = (q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])).softmax(-1).mean(1)
    return torch.gather(probs, 2, slots.unsqueeze(1).expand(-1, probs.shape[1], -1))


def saved_bytes(fn, q: torch.Tensor, k: torch.Tensor, slots: torch.Tensor) -> int:
    """Bytes of the tensors autograd saves while ``fn`` runs, other than ``q``, ``k`` and views
    of them (memory the block holds anyway)."""
    inputs = {q.untyped_storage().data_ptr(), k.untyped_storage().data_ptr()}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor):
        storage = t.untyped_storage()
        if storage.data_ptr() not in inputs:
            seen[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn(q, k, slots).sum().backward()
    return sum(seen.values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--side", type=int, default=512)
    parser.add_argument("--heads", type=int, default=24)
    parser.add_argument("--head-dim", type=int, default=128)
    parser.add_argument("--text", type=int, default=512)
    args = parser.parse_args()
    torch.set_num_threads(1)
    n_image = (args.side // 16) ** 2
    q = torch.randn(1, args.heads, n_image, args.head_dim, requires_grad=True)
    k = torch.randn(1, args.heads, args.text, args.head_dim, requires_grad=True)
    slots = torch.tensor([[3, 4]])
    mib = 2**20
    print(
        f"one block: {args.heads} heads x {args.head_dim}, {n_image} image tokens ({args.side} px), {args.text} text tokens"
    )
    chunked = saved_bytes(image_text_map, q, k, slots)
    whole = saved_bytes(direct_map, q, k, slots)
    chunk_probs = min(HEADS_PER_CHUNK, args.heads) * n_image * args.text * 4
    all_probs = args.heads * n_image * args.text * 4
    print(f"kept for backward (measured): chunked {chunked / mib:.3f} MiB, in one piece {whole / mib:.1f} MiB")
    print(
        f"largest transient (from the shapes): chunked {chunk_probs / mib:.1f} MiB ({HEADS_PER_CHUNK} heads), in one piece {all_probs / mib:.1f} MiB"
    )


if __name__ == "__main__":
    main()
