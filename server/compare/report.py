"""The comparison as a markdown table and a PNG of mean eval loss per round (matplotlib, lazily)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from server.compare.arms import ArmResult


def _kb(value: float) -> str:
    return f"{value / 1e3:,.0f}" if value else "-"


def table(results: Sequence[ArmResult], *, rounds: int, total_s: float) -> str:
    """Markdown: per arm the final and best mean eval loss, per-node final loss, bytes, time."""
    nodes = sorted({name for r in results for name in r.final_nodes})
    head = ["arm", "final mean", "best mean (round)", *nodes, "up kB/round", "down kB/round",
            "wall s", "notes"]  # fmt: skip
    lines = [
        f"Mean eval loss (nats/token, mean over the {len(nodes)} nodes' eval splits) after "
        f"{rounds} rounds; round 0 is the base model ({results[0].curve[0]:.3f}). "
        f"Total wall time {total_s:.0f} s.",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for r in results:
        best, at = r.best
        cells = [r.arm.label, f"{r.final:.3f}", f"{best:.3f} ({at})",
                 *(f"{r.final_nodes[n]:.3f}" if n in r.final_nodes else "-" for n in nodes),
                 _kb(r.bytes_up), _kb(r.bytes_down), f"{r.wall_s:.0f}", r.notes]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_curves(results: Sequence[ArmResult], path: Path) -> None:
    """Mean eval loss per round, one line per arm; the two rank settings side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    settings = sorted({r.arm.ranks for r in results}, key=lambda s: len(set(s.split(","))) == 1)
    fig, axes = plt.subplots(1, len(settings), figsize=(6.5 * len(settings), 4.8), squeeze=False)
    labels = list(dict.fromkeys(r.arm.label.rsplit(" [", 1)[0] for r in results))
    cmap = plt.get_cmap("tab10")
    colors = {label: cmap(i % 10) for i, label in enumerate(labels)}  # one colour in both panels
    for ax, ranks in zip(axes[0], settings, strict=True):
        for r in (r for r in results if r.arm.ranks == ranks):
            style = "--" if r.arm.kind.startswith(("centralized", "local")) else "-"
            label = r.arm.label.rsplit(" [", 1)[0]
            ax.plot(range(len(r.curve)), r.curve, style, marker=".", label=label,
                    color=colors[label])  # fmt: skip
        ax.set_title(f"ranks {ranks}")
        ax.set_xlabel("round")
        ax.set_ylabel("mean eval loss (nats/token)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        low = min(min(r.curve) for r in results if r.arm.ranks == ranks)
        ax.set_ylim(low - 0.1, low + 1.2)  # round 0 (the base model) is far above: zoom in
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
