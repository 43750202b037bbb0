"""What transfer.top_k costs and changes, on real batches of the language-model example (issue 25):

    python benchmarks/lm_top_k.py [--config configs/lm.yaml] [--batches 3] [--ks 16 64 256] [--out benchmarks/results/lm_top_k]

Builds the example's participants (its specialists from the zoo cache, trained first if absent), takes
`--batches` transfer batches of the mixed corpus and, for each strategy and k, compares with the dense
exchange (k = the vocabulary) in one process (partition.in_one_process, what both engines run):

- bytes per token: what one participant sends (its rows) and receives as a student (its Mix), per position
  of the batch, measured on the tensors in float64 (float32 halves the values' part; the Ray engine's
  owner also reads its shard's rows of every participant);
- the share's difference: |share_k - share_dense| / |transfer part of share_dense|, the transfer term
  being share minus the participant's CE;
- the gradient's difference at the participant's outputs: ||g_k - g_dense|| / ||g_dense - g_CE||, and the
  cosine between the transfer parts of the gradients.

Writes OUT.json and OUT.md (medians over batches and participants; the machine named).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]


def nbytes(*tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors if t is not None)


def main() -> None:
    from kt_swarm.build import build_participant, pretrain_if_zoo
    from kt_swarm.config import load_config
    from kt_swarm.coordinator import text_tokenizer
    from kt_swarm.data import arm_plan, load_dataset
    from kt_swarm.objectives import LossSpec
    from kt_swarm.partition import in_one_process, mix, positions, sendable, stack_rows
    from kt_swarm.tasks import Task

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=str(ROOT / "configs" / "lm.yaml"))
    ap.add_argument("--batches", type=int, default=3)
    ap.add_argument("--ks", type=int, nargs="+", default=[16, 64, 256])
    ap.add_argument("--strategies", nargs="+", default=["best", "dml"])
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "lm_top_k"))
    args = ap.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    cfg = load_config(args.config)
    data = load_dataset(cfg.data, cfg.task, text_tokenizer(cfg))
    parts = []
    for m in range(len(cfg.participants)):
        p = build_participant(cfg, m, data)
        pretrain_if_zoo(cfg, m, p, data)
        parts.append(p)
    task = Task(cfg.task, cfg.transfer.unit)
    vocab = data.num_classes
    rows = []
    for b in range(args.batches):
        batch = arm_plan(data, "train", seed=cfg.seed, epoch=0, step=b, batch_size=cfg.transfer.batch_size,
                         augment=cfg.data.augment)
        target = data.target(batch.ids)
        with torch.no_grad():
            logits = [p.forward(data, batch, learns=False).double() for p in parts]  # eval mode, float64 losses
        for strategy in args.strategies:
            base = LossSpec(task=cfg.task, unit=cfg.transfer.unit, strategy=strategy, temperature=cfg.transfer.temperature,
                            weight=cfg.transfer.weight)
            results = {}
            for k in [None, *args.ks]:  # None: the dense exchange
                spec = replace(base, top_k=k)
                outs = [z.clone().requires_grad_() for z in logits]
                shares, step, _ = in_one_process(outs, target, spec)
                grads = [torch.autograd.grad(s, z)[0] for s, z in zip(shares, outs)]
                sent = [sendable(task, z, target, spec) for z in logits]
                mixes = mix(stack_rows(sent), step.weights, positions(task, target), spec)
                results[k] = ([float(s.detach()) for s in shares], grads, [nbytes(*s) for s in sent],
                              [nbytes(*mx.tensors()) for mx in mixes])
            ce_only = LossSpec(task=cfg.task, unit=cfg.transfer.unit, strategy="none")
            outs = [z.clone().requires_grad_() for z in logits]
            ce_shares, _, _ = in_one_process(outs, target, ce_only)
            ce_grads = [torch.autograd.grad(s, z)[0] for s, z in zip(ce_shares, outs)]
            tokens = int((target >= 0).sum())
            dense_shares, dense_grads, _, _ = results[None]
            for k in args.ks:
                shares, grads, sent, received = results[k]
                for m in range(len(parts)):
                    transfer = dense_shares[m] - float(ce_shares[m].detach())
                    g_t_dense, g_t = dense_grads[m] - ce_grads[m], grads[m] - ce_grads[m]
                    rows.append({"batch": b, "strategy": strategy, "k": k, "participant": cfg.participants[m].name,
                                 "share_rel_diff": abs(shares[m] - dense_shares[m]) / max(abs(transfer), 1e-30),
                                 "grad_rel_diff": float((grads[m] - dense_grads[m]).norm() / g_t_dense.norm().clamp(min=1e-30)),
                                 "grad_cosine": float(F.cosine_similarity(g_t.flatten(), g_t_dense.flatten(), dim=0)),
                                 "sent_bytes_per_token": sent[m] / tokens, "received_bytes_per_token": received[m] / tokens,
                                 "dense_sent_bytes_per_token": results[None][2][m] / tokens,
                                 "dense_received_bytes_per_token": results[None][3][m] / tokens})
        print(f"batch {b + 1}/{args.batches} done", flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), platform.machine())
    out.with_suffix(".json").write_text(json.dumps({"machine": cpu, "config": args.config, "rows": rows}, indent=1))
    md = ["# transfer.top_k against the dense exchange (benchmarks/lm_top_k.py)", "",
          f"{cpu}, {os.cpu_count()} cores; `{Path(args.config).relative_to(ROOT) if Path(args.config).is_relative_to(ROOT) else args.config}`'s "
          f"participants on {args.batches} transfer batches of {cfg.transfer.batch_size} x {cfg.data.text.block} tokens, "
          f"float64 losses, vocabulary {vocab}; medians over batches and participants.", "",
          "| strategy | k | sent B/token | received B/token | share diff (of the transfer term) | gradient diff (of its transfer part) | cosine |",
          "|---|---:|---:|---:|---:|---:|---:|"]
    for strategy in args.strategies:
        dense = [r for r in rows if r["strategy"] == strategy]
        md.append(f"| {strategy} | dense | {statistics.median(r['dense_sent_bytes_per_token'] for r in dense):,.0f} | "
                  f"{statistics.median(r['dense_received_bytes_per_token'] for r in dense):,.0f} | 0 | 0 | 1 |")
        for k in args.ks:
            sel = [r for r in rows if r["strategy"] == strategy and r["k"] == k]
            med = {key: statistics.median(r[key] for r in sel) for key in sel[0] if isinstance(sel[0][key], float)}
            md.append(f"| {strategy} | {k} | {med['sent_bytes_per_token']:,.0f} | {med['received_bytes_per_token']:,.0f} | "
                      f"{med['share_rel_diff']:.2e} | {med['grad_rel_diff']:.2e} | {med['grad_cosine']:.5f} |")
    out.with_suffix(".md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
