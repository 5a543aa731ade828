"""Learning curves from training logs: a markdown table and a PNG plot (for model cards).

    python -m mulancodec.training.curves runs/small/log.jsonl --png models/learning_curve.png
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def read_log(path: str | Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def eval_points(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Test-bpd evaluations in order, with training minutes and the device they ran on."""
    device = "cpu"
    out = []
    for r in records:
        if r.get("kind") == "start":
            device = r.get("device", device)
        if r.get("kind") == "eval":
            out.append({"step": r["step"], "minutes": r["seconds"] / 60, "test_bpd": r["test_bpd"],
                        "test_bpd_T": r.get("test_bpd_T"), "steps": r.get("steps"), "device": device})
    return out


def markdown(points: list[dict[str, Any]]) -> str:
    rows = ["| training minutes | step | device | test bpd (continuous) | test bpd (discrete T) |",
            "|---:|---:|---|---:|---:|"]
    for p in points:
        disc = f"{p['test_bpd_T']:.3f} (T={p['steps']})" if p["test_bpd_T"] is not None else "-"
        rows.append(f"| {p['minutes']:.1f} | {p['step']} | {p['device']} | {p['test_bpd']:.3f} | {disc} |")
    return "\n".join(rows)


def plot(points: list[dict[str, Any]], png: str | Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot([p["minutes"] for p in points], [p["test_bpd"] for p in points], "o-", label="continuous")
    disc = [p for p in points if p["test_bpd_T"] is not None]
    if disc:
        ax.plot([p["minutes"] for p in disc], [p["test_bpd_T"] for p in disc], "s-",
                label=f"discrete, T={disc[0]['steps']}")
    ax.set_xlabel("training minutes")
    ax.set_ylabel("test -ELBO (bits per dimension)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(png, dpi=120)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("log")
    ap.add_argument("--png", default=None)
    ap.add_argument("--title", default="learning curve (EMA weights, test subset)")
    a = ap.parse_args()
    pts = eval_points(read_log(a.log))
    print(markdown(pts))
    if a.png:
        plot(pts, a.png, a.title)


if __name__ == "__main__":
    main()
