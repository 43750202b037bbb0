"""Do language models teach each other? The issue-25 study: transfer against the CE-only control, over seeds.

    python benchmarks/lm_arms.py [--config configs/lm.yaml] [--seeds 0 1 2] [--steps 50] [--dense-seeds 0]
                                 [--out benchmarks/results/lm_arms]

Per seed (each seed its own specialists: the zoo is seeded by the run seed, cached), from the same starting
weights and at equal steps on the mixed corpus's transfer split:

- control   the CE-only control (the same blocks, steps and learning rates)
- token     `best` by token, top-64 exchange (the example's setting)
- sequence  `best` by sequence: one teacher per block, the lowest mean CE (FuseLLM's MinCE)
- trusted   `best` by token, teachers trusted per pair from the arm's start on validation
- dense     `best` by token with the whole distribution sent (top_k = the vocabulary, equal to dense: tested),
            on --dense-seeds only: the effect of top-k on the result at equal steps

Each arm keeps its best-on-validation weights (its start among them), then test and validation are measured:
perplexity and next-token accuracy per domain, and the role matrix per domain of the transfer arms. The bar
(the issue's): every participant's mean perplexity over the domains below its control's by more than the
seed spread (the larger of the two arms' standard deviations over seeds), and no specialist worse than its
start on its own domain. Writes OUT.json, OUT.md and OUT.png (the machine named).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from quickstart_arms import machine, parse_arms, seed_arms  # noqa: E402
from kt_swarm.config import load_config, to_dict  # noqa: E402
from kt_swarm.metrics import task_metrics  # noqa: E402

ARMS = ["token:", "sequence:transfer.unit=sequence", "trusted:transfer.trusted_teachers=true"]


def measured(engine, cfg, data, split: str) -> dict[str, list[float]]:
    ids = data.splits[split]
    return task_metrics(engine.predict(split, cfg.eval_batch_size), data.truth(ids), data.task, data.num_classes,
                        data.classes)


def over_domains(m: dict[str, list[float]], domains: list[str]) -> list[float]:
    """Each participant's mean perplexity over the domains (every domain weighs the same, whatever its tokens)."""
    return [statistics.mean(m[f"perplexity/{d}"][i] for d in domains) for i in range(len(m["perplexity"]))]


def mean_sd(values: list[float]) -> tuple[float, float]:
    return statistics.mean(values), (statistics.pstdev(values) if len(values) > 1 else 0.0)


def table(results: dict) -> tuple[str, dict]:
    seeds = list(results["seeds"])
    names, domains = results["names"], results["domains"]
    specialty = results["specialty"]
    arms = [a for a in results["seeds"][seeds[0]]["test"]]
    test = lambda s, arm: results["seeds"][s]["test"][arm]
    lines = [f"| arm | participant | {' | '.join('ppl ' + d for d in domains)} | mean ppl over domains | vs control | "
             f"bar | own domain vs start |", "|---" * (len(domains) + 6) + "|"]
    verdict = {}
    for arm in arms:
        ran = [s for s in seeds if arm in results["seeds"][s]["test"]]  # dense: seed 0 only
        for i, name in enumerate(names):
            cells = [f"{m:,.0f} ± {sd:,.0f}" for m, sd in (mean_sd([test(s, arm)[f"perplexity/{d}"][i] for s in ran])
                                                              for d in domains)]
            ours = [over_domains(test(s, arm), domains)[i] for s in ran]
            m, sd = mean_sd(ours)
            vs, bar, own = "", "", ""
            if arm not in ("start", "control"):
                ctrl = [over_domains(test(s, "control"), domains)[i] for s in ran]
                d_m, d_sd = mean_sd([o - c for o, c in zip(ours, ctrl)])
                ok = len(ran) > 1 and d_m < -max(sd, mean_sd(ctrl)[1])
                vs, bar = f"{d_m:+,.0f} ± {d_sd:,.0f}", ("met" if ok else "not met" if len(ran) > 1 else "one seed")
                if specialty[i]:
                    key = f"perplexity/{specialty[i]}"
                    worse = statistics.mean(test(s, arm)[key][i] - test(s, "start")[key][i] for s in ran)
                    own = f"{worse:+,.0f}" + (" (worse)" if worse > 0 else "")
                    ok = ok and worse <= 0
                if len(ran) > 1:  # a one-seed arm (dense) has no spread to beat
                    verdict.setdefault(arm, []).append(ok)
            lines.append(f"| {arm} | {name} | {' | '.join(cells)} | {m:,.0f} ± {sd:,.0f} | {vs} | {bar} | {own} |")
    return "\n".join(lines), {arm: all(v) for arm, v in verdict.items()}


def roles_text(results: dict, seed: str, arm: str) -> str:
    names = results["names"]
    out = []
    for domain, matrix in results["seeds"][seed]["roles_by_domain"].get(arm, {}).items():
        total = sum(map(sum, matrix)) or 1.0
        out.append(f"{domain} (share of all teaching weight; row teaches column):\n\n| teacher \\ student | "
                   f"{' | '.join(names)} |\n" + "|---" * (len(names) + 1) + "|\n" +
                   "\n".join(f"| {names[k]} | " + " | ".join(f"{100 * v / total:.1f}" for v in row) + " |"
                             for k, row in enumerate(matrix)))
    return "\n\n".join(out)


def plot(results: dict, out: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    seeds, names, domains = list(results["seeds"]), results["names"], results["domains"]
    arms = [a for a in results["seeds"][seeds[0]]["test"] if a not in ("start", "control")]
    first = results["seeds"][seeds[0]]["roles_by_domain"].get("token", {})
    fig, axes = plt.subplots(1, len(domains) + len(first), figsize=(5 * (len(domains) + len(first)), 4.2))
    width = 0.8 / len(arms)
    for ax, d in zip(axes, domains):  # each arm against the control of its seed: the start is far off the scale
        key = f"perplexity/{d}"
        for a, arm in enumerate(arms):
            ratios = [[results["seeds"][s]["test"][arm][key][i] / results["seeds"][s]["test"]["control"][key][i]
                       for s in seeds if arm in results["seeds"][s]["test"]] for i in range(len(names))]
            ax.bar(np.arange(len(names)) + (a - (len(arms) - 1) / 2) * width, [statistics.mean(r) for r in ratios], width,
                   yerr=[statistics.pstdev(r) if len(r) > 1 else 0 for r in ratios], label=arm, capsize=2)
        ax.axhline(1.0, color="k", lw=0.8)
        ax.set_xticks(range(len(names)), names)
        ax.set_ylabel("test perplexity / the control's")
        ax.set_title(f"on {d}: below 1 beats the control")
    axes[0].legend(fontsize=8)
    for ax, (d, matrix) in zip(axes[len(domains):], first.items()):
        m = np.array(matrix)
        ax.imshow(m / max(m.sum(), 1e-12), cmap="viridis")
        ax.set_xticks(range(len(names)), names, rotation=20)
        ax.set_yticks(range(len(names)), names)
        ax.set_xlabel("student")
        ax.set_ylabel("teacher")
        ax.set_title(f"who taught whom on {d} (token, seed {seeds[0]})")
        for (k, j), v in np.ndenumerate(m / max(m.sum(), 1e-12)):
            ax.text(j, k, f"{100 * v:.1f}", ha="center", va="center", color="w", fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="configs/lm.yaml")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--steps", type=int, default=50, help="transfer steps per arm (every arm the same)")
    ap.add_argument("--arm", action="append", default=None, help=f"NAME:key=v,... (default: {' '.join(ARMS)})")
    ap.add_argument("--dense-seeds", type=int, nargs="*", default=[0])
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="override for every arm")
    ap.add_argument("--out", default="benchmarks/results/lm_arms")
    args = ap.parse_args()

    base = to_dict(load_config(args.config, args.overrides))
    base["data"]["transfer_samples"] = args.steps * base["transfer"]["batch_size"]
    base["transfer"]["epochs"] = 1
    results = {"machine": machine(), "command": "python benchmarks/lm_arms.py " + " ".join(sys.argv[1:]),
               "config": args.config, "overrides": args.overrides, "steps": args.steps, "seeds": {}}
    for seed in args.seeds:
        arms = parse_arms(args.arm or ARMS)
        if seed in args.dense_seeds:
            arms.append(("dense", ""))  # its top_k is set below, once the vocabulary is known
        one = {"test": {}, "val": {}, "roles": {}, "roles_by_domain": {}, "seconds": {}}
        for name, engine, cfg, data, res in seed_arms(base, seed, arms):
            if res is None:
                results.update(names=[p.name for p in cfg.participants], domains=list(data.classes),
                               specialty=[p.domain for p in cfg.participants], vocabulary=data.num_classes)
                for i, (n, o) in enumerate(arms):  # dense: k = the vocabulary, equal to the dense exchange (tested)
                    if n == "dense":
                        arms[i] = (n, f"transfer.top_k={data.num_classes}")
            one["test"][name], one["val"][name] = measured(engine, cfg, data, "test"), measured(engine, cfg, data, "val")
            if res is not None:
                one["seconds"][name] = res.seconds
                if name != "control":
                    one["roles"][name] = res.role_matrix[-1]
                    one["roles_by_domain"][name] = res.role_matrix_by_domain[-1] if res.role_matrix_by_domain else {}
            ppl = over_domains(one["test"][name], results["domains"])
            print(f"  seed {seed} {name:10s} test ppl over domains {[round(p) for p in ppl]} "
                  f"({one['seconds'].get(name, 0):.0f} s)", flush=True)
        results["seeds"][str(seed)] = one
        write(results, Path(args.out))  # after every seed: a stopped study keeps what it measured


def write(results: dict, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(results, indent=1))
    text, verdict = table(results)
    seeds = list(results["seeds"])
    body = (f"Test perplexity (lower is better), mean ± std over seeds {', '.join(seeds)}; {results['steps']} transfer "
            f"steps per arm; {results['machine']}\ncommand: {results['command']}\n\n{text}\n\n"
            f"The bar (every participant's mean perplexity over the domains below its control's by more than the "
            f"seed spread, no specialist worse than its start on its own domain): "
            + ", ".join(f"{arm} {'met' if ok else 'not met'}" for arm, ok in verdict.items()) + "\n\n"
            f"Role matrix per domain, `token` arm, seed {seeds[0]}:\n\n{roles_text(results, seeds[0], 'token')}\n")
    out.with_suffix(".md").write_text(body)
    plot(results, out.with_suffix(".png"))
    print(body)


if __name__ == "__main__":
    main()
