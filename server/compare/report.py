"""The comparison as markdown (one table per setting, then the goals) and a PNG of mean eval
loss per round, one panel per setting (matplotlib, lazily)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from common.config import DEFAULT_RUN_CONFIG
from server.compare.arms import SETTINGS, ArmResult

DEFAULT_STRATEGY = str(DEFAULT_RUN_CONFIG["strategy"])


def _kb(value: float) -> str:
    return f"{value / 1e3:,.0f}" if value else "-"


def _settings(results: Sequence[ArmResult]) -> list[str]:
    return list(dict.fromkeys(r.arm.setting for r in results))


def setting_table(results: Sequence[ArmResult], setting: str) -> list[str]:
    """Markdown lines: per arm of ``setting`` the final and best mean, per-node final, bytes."""
    rows = [r for r in results if r.arm.setting == setting]
    nodes = list(dict.fromkeys(name for r in rows for name in r.final_nodes))
    head = ["arm", "kind", "final mean", "best mean (round)", *nodes, "up kB/round",
            "down kB/round", "wall s", "notes"]  # fmt: skip
    lines = [
        f"### `{setting}`: {SETTINGS[setting].notes}",
        "",
        f"Round 0 (the base model): {rows[0].curve[0]:.3f}.",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for r in rows:
        best, at = r.best
        cells = [r.arm.label, r.arm.kind, f"{r.final:.3f}", f"{best:.3f} ({at})",
                 *(f"{r.final_nodes[n]:.3f}" if n in r.final_nodes else "-" for n in nodes),
                 _kb(r.bytes_up), _kb(r.bytes_down), f"{r.wall_s:.0f}", r.notes]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    return [*lines, ""]


def _beats_local(arm: ArmResult, local: ArmResult) -> str:
    margins = {n: local.final_nodes[n] - arm.final_nodes.get(n, float("inf"))
               for n in local.final_nodes}  # fmt: skip
    met = all(m > 0 for m in margins.values())
    detail = ", ".join(f"{n} {m:+.3f}" for n, m in margins.items())
    return f"{'met' if met else 'NOT met'} (local minus {arm.arm.label}, per node: {detail})"


def _first(
    results: Sequence[ArmResult], setting: str, kind: str, strategy: str | None
) -> ArmResult | None:
    """The arm of ``setting`` with this kind and strategy at its defaults (no config of its
    own: `flora η=2` or `flora dp-lora` are variants, not the default strategy)."""
    for r in results:
        arm = r.arm
        if (arm.setting, arm.kind, arm.strategy) == (setting, kind, strategy) and not arm.config:
            return r
    return None


def goals(results: Sequence[ArmResult]) -> list[str]:
    """The issue's goals, each met or not, with the numbers (only where the arms were run)."""
    lines = []
    for setting in _settings(results):
        local = _first(results, setting, "local", None)
        default = _first(results, setting, "federated", DEFAULT_STRATEGY)
        personal = [r for r in results if r.arm.setting == setting and r.arm.kind == "personalized"]
        federated = [r for r in results if r.arm.setting == setting and r.arm.kind == "federated"]
        if local and default:
            lines.append(f"- `{setting}`: default strategy's global model beats local-only on "
                         f"every node: {_beats_local(default, local)}")  # fmt: skip
        for arm in personal:
            if local:
                lines.append(f"- `{setting}`: {arm.arm.label} beats local-only on every node: "
                             f"{_beats_local(arm, local)}")  # fmt: skip
        if default and federated:
            best = min(federated, key=lambda r: r.final)
            gap = default.final / best.final - 1
            lines.append(
                f"- `{setting}`: default strategy within 1% of the best federated arm: "
                f"{'met' if gap <= 0.01 else 'NOT met'} ({default.final:.3f} against "
                f"{best.arm.label} {best.final:.3f}, {gap:+.1%})"
            )
    return lines


def table(results: Sequence[ArmResult], *, rounds: int, total_s: float) -> str:
    """Markdown: one table per setting, then the goals."""
    lines = [
        f"Mean eval loss (nats/token, mean over each node's own eval split) after {rounds} "
        f"rounds. Total wall time {total_s:.0f} s.",
        "",
    ]
    for setting in _settings(results):
        lines += setting_table(results, setting)
    found = goals(results)
    if found:
        lines += ["### Goals", "", *found, ""]
    return "\n".join(lines)


def plot_curves(results: Sequence[ArmResult], path: Path) -> None:
    """Mean eval loss per round, one line per arm, one panel per setting."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    settings = _settings(results)
    fig, axes = plt.subplots(1, len(settings), figsize=(5.5 * len(settings), 4.8), squeeze=False)
    labels = list(dict.fromkeys(r.arm.label.rsplit(" [", 1)[0] for r in results))
    cmap = plt.get_cmap("tab20")
    colors = {label: cmap(i % 20) for i, label in enumerate(labels)}  # one colour in all panels
    for ax, setting in zip(axes[0], settings, strict=True):
        rows = [r for r in results if r.arm.setting == setting]
        for r in rows:
            style = "-" if r.arm.strategy is not None else "--"
            label = r.arm.label.rsplit(" [", 1)[0]
            rounds = [t / r.arm.split for t in range(len(r.curve))]  # in unsplit rounds
            ax.plot(rounds, r.curve, style, marker=".", label=label,
                    color=colors[label])  # fmt: skip
        ax.set_title(f"{setting}: {SETTINGS[setting].notes}", fontsize=9)
        ax.set_xlabel("round (a split arm's rounds scaled: the same steps per node)")
        ax.set_ylabel("mean eval loss (nats/token)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        low = min(min(r.curve) for r in rows)
        ax.set_ylim(low - 0.1, low + 1.2)  # round 0 (the base model) is far above: zoom in
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
