"""``llmspec plan --plot``: per-GPU memory by strategy as stacked bars, with the GPU's usable memory as a line."""

from __future__ import annotations

from pathlib import Path

from llmspec.planner.training import Plan

PARTS = (("weights", "#4c72b0"), ("gradients", "#55a868"), ("optimizer", "#c44e52"), ("gathered", "#8172b2"),
         ("activations", "#ccb974"), ("buffers", "#64b5cd"))


def plot_memory(plan: Plan, path: str | Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    alts = plan.alternatives
    gib = 2**30
    fig, ax = plt.subplots(figsize=(max(8, 0.5 * len(alts) + 3), 5.5))
    bottoms = [0.0] * len(alts)
    for part, colour in PARTS:
        values = [alt.memory[part] / gib for alt in alts]
        ax.bar(range(len(alts)), values, bottom=bottoms, color=colour, label=part)
        bottoms = [b + v for b, v in zip(bottoms, values, strict=True)]
    ax.axhline(plan.usable_memory / gib, color="black", linestyle="--",
               label=f"{plan.gpu_name} usable ({plan.usable_memory / gib:.0f} GiB)")
    labels = [alt.strategy.label.replace(" · ", "\n") + ("\n(spec)" if alt.chosen else "") for alt in alts]
    ax.set_xticks(range(len(alts)), labels, rotation=90, fontsize=7)
    ax.set_ylabel("GiB per GPU")
    ax.set_title(f"{plan.spec.name}: peak memory per GPU by strategy")
    ax.legend(fontsize=8, loc="upper right")
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def plot_size(result, path: str | Path, name: str) -> Path:
    """``llmspec size --plot``: every feasible layout's run time against its cost, the Pareto frontier on top."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5.5))
    ax.scatter(result.points["days"], result.points["cost"], s=6, alpha=0.25, color="#4c72b0",
               label=f"feasible layouts ({result.feasible:,} of {result.evaluated:,})")
    front = result.frontier
    ax.plot([x.seconds / 86400 for x in front], [x.cost for x in front], "o-", color="#c44e52",
            label="Pareto frontier")
    for x in front:
        ax.annotate(f"{x.gpus}×{x.gpu}", (x.seconds / 86400, x.cost), fontsize=7, xytext=(4, 4),
                    textcoords="offset points")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("run time (days)")
    ax.set_ylabel("cost (USD)")
    ax.set_title(f"{name}: every layout that fits")
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)
