"""The two pictures a reader looks at: size by codec, and size against encode time."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt  # noqa: E402

from .mulan_bench import PER_IMAGE, STREAM  # noqa: E402

MULAN_STYLE = {PER_IMAGE: ("tab:red", "o-"), STREAM: ("tab:purple", "s-")}


def _label(r: dict[str, Any]) -> str:
    return r["codec"] if r.get("steps") is None else f"{r['codec']}\nT={r['steps']}"


def bpd_bars(rows: list[dict[str, Any]], title: str, path: Path) -> Path:
    """Bits per subpixel per row, smallest first, with the -ELBO marked on mulancodec bars."""
    rows = sorted(rows, key=lambda r: r["bpd"])
    fig, ax = plt.subplots(figsize=(max(6.0, 0.9 * len(rows) + 2), 4.5))
    colours = [MULAN_STYLE.get(r["codec"], ("tab:blue", ""))[0] for r in rows]
    bars = ax.bar(range(len(rows)), [r["bpd"] for r in rows], color=colours)
    for b, r in zip(bars, rows):
        ax.text(b.get_x() + b.get_width() / 2, b.get_height(), f"{r['bpd']:.2f}", ha="center",
                va="bottom", fontsize=8)
        if r.get("elbo_bpd") is not None:
            ax.hlines(r["elbo_bpd"], b.get_x(), b.get_x() + b.get_width(), colors="k",
                      linestyles="--", linewidth=1)
    top = max(r["bpd"] for r in rows)
    bounds = [r["elbo_bpd"] for r in rows if r.get("elbo_bpd") is not None]
    ax.set_ylim(0, 1.15 * max([top] + [e for e in bounds if e <= 1.5 * top]))  # an untrained
    # model's bound can be orders of magnitude off; it must not flatten the bars
    ax.set_xticks(range(len(rows)))
    ax.set_xticklabels([_label(r) for r in rows], rotation=45, ha="right", fontsize=8)
    ax.set_ylabel("bits per subpixel (lower is better)")
    ax.set_title(title + ("\n(dashed: model -ELBO at the same T)" if any(
        r.get("elbo_bpd") is not None for r in rows) else ""), fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def frontier(rows: list[dict[str, Any]], title: str, path: Path) -> Path:
    """Bits per subpixel against encode seconds per image (log x): the speed/size trade-off."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in rows:
        if r["codec"] in MULAN_STYLE or r["encode_s"] <= 0:
            continue
        ax.plot(r["encode_s"], r["bpd"], "D", color="tab:blue")
        ax.annotate(r["codec"], (r["encode_s"], r["bpd"]), textcoords="offset points", xytext=(5, 3),
                    fontsize=8)
    for codec, (colour, style) in MULAN_STYLE.items():
        pts = sorted((r for r in rows if r["codec"] == codec and r["encode_s"] > 0),
                     key=lambda r: r["steps"])
        if not pts:
            continue
        ax.plot([r["encode_s"] for r in pts], [r["bpd"] for r in pts], style, color=colour, label=codec)
        for r in pts:
            ax.annotate(f"T={r['steps']}", (r["encode_s"], r["bpd"]), textcoords="offset points",
                        xytext=(5, -10), fontsize=7, color=colour)
    ax.set_xscale("log")
    ax.set_xlabel("encode seconds per image (log)")
    ax.set_ylabel("bits per subpixel")
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def make_all(rows: list[dict[str, Any]], title: str, out: Path) -> list[Path]:
    if not rows:
        return []
    return [bpd_bars(rows, title, out / "bpd_by_codec.png"),
            frontier(rows, title, out / "bpd_vs_encode_time.png")]
