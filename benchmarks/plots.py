"""The pictures a reader looks at: size by codec, and size against encode time (per image,
and per megapixel: the frontier, where mulancodec's T, and each codec's effort level, trade
time for size)."""
from __future__ import annotations

import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt  # noqa: E402

from .mulan_bench import PER_IMAGE, STREAM  # noqa: E402

MULAN_STYLE = {PER_IMAGE: ("tab:red", "o-"), STREAM: ("tab:purple", "s-")}
EFFORT_STYLE = {"mulancodec": ("tab:green", "^-"), "JPEG-XL": ("tab:orange", "D--")}
BITS_BACK_STYLE = ("tab:olive", "v:")


def _label(r: dict[str, Any]) -> str:
    return r["codec"] if r.get("steps") is None else f"{r['codec']}\nT={r['steps']}"


def bpd_bars(rows: list[dict[str, Any]], title: str, path: Path) -> Path:
    """Bits per subpixel per row, smallest first, with the -ELBO marked on mulancodec bars."""
    rows = sorted(rows, key=lambda r: r["bpd"])
    fig, ax = plt.subplots(figsize=(max(6.0, 0.9 * len(rows) + 2), 4.5))
    colours = [MULAN_STYLE.get(r["codec"], EFFORT_STYLE.get(effort_family(r) or "", ("tab:blue", "")))[0]
               for r in rows]
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


def effort_family(r: dict[str, Any]) -> str | None:
    """The codec whose effort curve a row is a point of ('mulancodec', 'JPEG-XL'), from its
    name (`mulancodec e5`, `JPEG-XL e7`); None for other rows (the lone `JPEG-XL` row too)."""
    m = re.fullmatch(r"(.+) e(\d+)", r["codec"])
    return m.group(1) if m and r.get("effort") is not None else None


def _curve(ax: Any, pts: list[dict[str, Any]], key: str, y: Callable[[dict[str, Any]], float],
           style: tuple[str, str], label: str, name: Callable[[dict[str, Any]], str], cap: float) -> None:
    """One line through `pts` (in their order), each point annotated; labels alternate
    below/above so close points stay readable, with the size of points drawn on the cap."""
    colour, fmt = style
    ax.plot([r[key] for r in pts], [y(r) for r in pts], fmt, color=colour, label=label)
    for k, r in enumerate(pts):
        off = f": {r['bpd']:.1f}" if r["bpd"] > cap else ""
        ax.annotate(f"{name(r)}{off}", (r[key], y(r)), textcoords="offset points",
                    xytext=(4, -11 if k % 2 == 0 else 5), fontsize=7, color=colour)


def _draw(ax: Any, rows: list[dict[str, Any]], key: str, cap: float = math.inf) -> None:
    """Every row on (key, bits per subpixel): a curve per mulancodec mode through its T, a curve
    per codec's effort levels (labelled eN), the other codecs as points; sizes above `cap` on it."""
    def y(r: dict[str, Any]) -> float:
        return min(r["bpd"], cap)

    families: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        fam = effort_family(r)
        if fam is not None:
            families.setdefault(fam, []).append(r)
        elif r["codec"] not in MULAN_STYLE:
            ax.plot(r[key], y(r), "D", color="tab:blue")
            ax.annotate(r["codec"], (r[key], y(r)), textcoords="offset points", xytext=(5, 3), fontsize=8)
    for codec, style in MULAN_STYLE.items():
        pts = sorted((r for r in rows if r["codec"] == codec), key=lambda r: r["steps"])
        if pts:
            _curve(ax, pts, key, y, style, codec, lambda r: f"T={r['steps']}", cap)
    for fam, pts in families.items():
        _curve(ax, sorted(pts, key=lambda r: r["effort"]), key, y, EFFORT_STYLE.get(fam, ("tab:grey", "x-")),
               f"{fam} effort", lambda r: f"e{r['effort']}", cap)
    # where the files fell back to an embedded codec, what the model itself reached
    raw = [{**r, "bpd": r["bits_back_bpd"]} for r in families.get("mulancodec", [])
           if r.get("bits_back_bpd") is not None and r["bits_back_bpd"] != r["bpd"]]
    if raw:
        _curve(ax, sorted(raw, key=lambda r: r["effort"]), key, y, BITS_BACK_STYLE,
               "mulancodec effort, bits-back alone (no fallback)", lambda r: f"e{r['effort']}", cap)


def frontier(rows: list[dict[str, Any]], title: str, path: Path) -> Path:
    """Bits per subpixel against encode seconds per image (log x): the speed/size trade-off."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    _draw(ax, [r for r in rows if r["encode_s"] > 0], "encode_s")
    return _finish(fig, ax, path, title, "encode seconds per image (log)", "bits per subpixel")


def _finish(fig: Any, ax: Any, path: Path, title: str, xlabel: str, ylabel: str) -> Path:
    """Log-x axes, labels, grid and legend; save the figure and close it."""
    ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def pareto(rows: list[dict[str, Any]], key: str = "encode_s_per_mpx") -> list[bool]:
    """For each row: is it on the frontier (no other row is both no slower and smaller)?"""
    pts = [(r.get(key), r["bpd"]) for r in rows]
    return [t is not None and not any(
        u is not None and u <= t and b2 <= b and (u, b2) != (t, b) for u, b2 in pts) for t, b in pts]


def frontier_mpx(rows: list[dict[str, Any]], title: str, path: Path) -> Path:
    """Bits per subpixel against encode seconds per megapixel (log x): one curve per
    mulancodec mode through its T, one per codec's effort levels, the other classical codecs
    as points, the frontier dotted. Points above twice the smallest size are drawn on the top
    edge (a black triangle; the label gives their size)."""
    key = "encode_s_per_mpx"
    rows = [r for r in rows if r.get(key)]
    cap = 2 * min((r["bpd"] for r in rows), default=1.0)
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    _draw(ax, rows, key, cap)
    for r in rows:
        if r["bpd"] > cap:
            ax.plot(r[key], cap, "^", color="k", markersize=5)
    best = sorted((r for r, on in zip(rows, pareto(rows, key)) if on), key=lambda r: r[key])
    if len(best) > 1:
        ax.step([r[key] for r in best], [min(r["bpd"], cap) for r in best], ":", where="post", color="grey",
                linewidth=1, label="frontier (nothing both faster and smaller)")
    return _finish(fig, ax, path, title, "encode seconds per megapixel (log)",
                   "bits per subpixel (lower is better)")


def make_all(rows: list[dict[str, Any]], title: str, out: Path) -> list[Path]:
    if not rows:
        return []
    return [bpd_bars(rows, title, out / "bpd_by_codec.png"),
            frontier(rows, title, out / "bpd_vs_encode_time.png"),
            frontier_mpx(rows, title, out / "frontier.png")]
