"""results.json and results.md: the rows plus what a reader needs to reproduce them."""
from __future__ import annotations

import datetime as dt
import json
import math
import os
import platform
import sys
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch


def cpu_model() -> str:
    """The CPU's marketing name (from /proc/cpuinfo on Linux, platform otherwise)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def hardware(device: torch.device) -> dict[str, Any]:
    hw: dict[str, Any] = {"cpu": cpu_model(), "cpu_count": os.cpu_count(),
                          "torch_threads": torch.get_num_threads()}
    if device.type == "cuda":
        hw["gpu"] = torch.cuda.get_device_name(device)
    return hw


def image_summary(images: Sequence[np.ndarray]) -> dict[str, Any]:
    """Sizes at a glance: how many of each H x W."""
    sizes: dict[str, int] = {}
    for im in images:
        key = f"{im.shape[0]}x{im.shape[1]}"
        sizes[key] = sizes.get(key, 0) + 1
    return {"N": len(images), "subpixels": int(sum(im.size for im in images)), "sizes": sizes}


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def command_line(argv: Sequence[str] | None) -> str:
    args = list(sys.argv[1:] if argv is None else argv)
    return " ".join(["python", "benchmarks/run.py", *args])


def _clean(v: Any) -> Any:
    """JSON has no inf/nan: write them as null."""
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {k: _clean(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_clean(x) for x in v]
    return v


def write_json(path: Path, rows: list[dict[str, Any]], meta: dict[str, Any]) -> None:
    path.write_text(json.dumps(_clean({"rows": rows, "meta": meta}), indent=2) + "\n")


# -- markdown ---------------------------------------------------------------------------

def _f(v: Any, spec: str = ".3f") -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    return format(v, spec)


def _secs(v: Any) -> str:
    """Seconds with enough digits for both 50 µs and 50 s."""
    if v is None:
        return "–"
    return f"{v:.3g}"


def _table(header: list[str], lines: list[list[str]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(cells) + " |" for cells in lines]
    return "\n".join(out)


def main_table(rows: list[dict[str, Any]]) -> str:
    header = ["Codec", "T", "bits/subpixel", "-ELBO_T", "overhead", "encode s/img", "decode s/img",
              "encode img/s", "decode img/s"]
    lines = [[r["codec"], "" if r.get("steps") is None else str(r["steps"]), _f(r["bpd"]),
              _f(r.get("elbo_bpd")), _f(r.get("overhead_bpd"), "+.3f"), _secs(r["encode_s"]),
              _secs(r["decode_s"]), _f(r["images_per_s"], ".3g"), _f(r["decode_images_per_s"], ".3g")]
             for r in rows]
    return _table(header, lines)


def time_table(rows: list[dict[str, Any]]) -> str:
    """Seconds per image in network / ANS / other, with the network's share."""
    header = ["Codec", "T", "encode: network", "ANS", "other", "decode: network", "ANS", "other"]
    lines = []
    for r in rows:
        if "encode_network_s" not in r:
            continue
        cells = [r["codec"], str(r["steps"])]
        for side in ("encode", "decode"):
            total = sum(r[f"{side}_{b}_s"] for b in ("network", "ans", "other")) or 1.0
            cells += [f"{_secs(r[f'{side}_{b}_s'])} ({100 * r[f'{side}_{b}_s'] / total:.0f}%)"
                      for b in ("network", "ans", "other")]
        lines.append(cells)
    return _table(header, lines)


def per_image_table(rows: list[dict[str, Any]]) -> str:
    header = ["T", "bits/subpixel (files)", "bits-back only", "bits-back overhead",
              "embedded fallback", "start-up bits/file"]
    lines = [[str(r["steps"]), _f(r["bpd"]), _f(r["bits_back_bpd"]),
              _f(r.get("bits_back_overhead_bpd"), "+.3f"), f"{r['embedded_files']}/{r['n_images']}",
              _f(r["first_batch_bits_mean"], ".0f")]
             for r in per_image_rows(rows)]
    return _table(header, lines)


def per_image_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The per-T per-image rows (effort rows have their own table)."""
    return [r for r in rows if "bits_back_bpd" in r and "effort" not in r]


def _file_kinds(r: dict[str, Any]) -> str:
    """'3 bits-back, 1 WebP': what an effort row's files are."""
    parts = [f"{r['bits_back_files']} bits-back"] if r["bits_back_files"] else []
    parts += [f"{n} {codec}" for codec, n in r["embedded_codecs"].items()]
    return ", ".join(parts)


def effort_table(rows: list[dict[str, Any]]) -> str:
    """One line per mulancodec effort level: what it codes with, the sizes and times it gets,
    and what its files turned out to be."""
    header = ["Effort", "settings", "T", "bits/subpixel", "bits-back only", "encode s/MP", "decode s/MP",
              "files", "adapted", "delta bytes"]
    lines = [[f"e{r['effort']}", r["effort_settings"], "" if r.get("steps") is None else str(r["steps"]),
              _f(r["bpd"]), _f(r.get("bits_back_bpd")), _secs(r["encode_s_per_mpx"]),
              _secs(r["decode_s_per_mpx"]), _file_kinds(r), f"{r['adapted_files']}/{r['n_images']}",
              str(r["adapt_delta_bytes"])]
             for r in sorted(mulan_effort_rows(rows), key=lambda r: r["effort"])]
    return _table(header, lines)


def mulan_effort_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in rows if "effort_settings" in r]


def frontier_points(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The frontier plot's data: every row as (codec, T, bits/subpixel, encode and decode
    seconds per megapixel, on the frontier or not), fastest first."""
    from .plots import pareto

    on = pareto(rows)
    pts = [{"codec": r["codec"], "steps": r.get("steps"), "effort": r.get("effort"),
            "bpd": r["bpd"],
            "encode_s_per_mpx": r.get("encode_s_per_mpx"), "decode_s_per_mpx": r.get("decode_s_per_mpx"),
            "frontier": f} for r, f in zip(rows, on)]
    return sorted(pts, key=lambda p: (p["encode_s_per_mpx"] is None, p["encode_s_per_mpx"] or 0.0))


def frontier_table(points: list[dict[str, Any]]) -> str:
    header = ["Codec", "T", "bits/subpixel", "encode s/MP", "decode s/MP", "on the frontier"]
    lines = [[p["codec"], "" if p["steps"] is None else str(p["steps"]), _f(p["bpd"]),
              _secs(p["encode_s_per_mpx"]), _secs(p["decode_s_per_mpx"]), "yes" if p["frontier"] else ""]
             for p in points]
    return _table(header, lines)


def markdown(rows: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    hw = meta["hardware"]
    where = hw.get("gpu") or hw["cpu"]
    parts = [
        f"# Lossless benchmark: {meta['data']} ({meta['images']['N']} images)",
        "",
        f"{meta['date']} · device {meta['device']} ({where}) · torch {meta['torch']} · "
        f"imagecodecs {meta['imagecodecs']} · model {meta.get('model_id') or '–'}",
        "",
        main_table(rows),
        "",
        "bits/subpixel = 8 x total bytes (headers included) / total subpixels. "
        "-ELBO_T: the model's discrete-time bound at the same T; overhead = bits/subpixel - -ELBO_T. "
        "Times are per image, wall clock; img/s = images per second of encoding (decoding). "
        "Every output was decoded and checked bit-exact.",
    ]
    if meta.get("frontier"):
        parts += ["", "## Size against encode time (frontier.png)", "", frontier_table(meta["frontier"]), "",
                  "s/MP = seconds per megapixel (10^6 pixels, H x W). On the frontier: no other row is "
                  "both as fast or faster and as small or smaller."]
    if mulan_effort_rows(rows):
        parts += ["", "## mulancodec effort levels", "", effort_table(rows), "",
                  ("One file per image at each `--effort` level, as `mulancodec encode` writes it. "
                   "bits-back only: the size had no file fallen back to an embedded image. files: how many "
                   "kept bits-back, and the embedded format of the others. adapted: files carrying "
                   "fine-tuned deltas (delta bytes: their blocks' size, in the totals above).")]
    if any("encode_network_s" in r for r in rows):
        parts += ["", "## Where mulancodec's time goes (seconds per image)", "", time_table(rows)]
    if per_image_rows(rows):
        parts += ["", "## mulancodec per-image files", "", per_image_table(rows)]
    notes = meta.get("notes", [])
    if notes:
        parts += ["", "## Notes", ""] + [f"- {n}" for n in notes]
    parts += ["", f"Command: `{meta['command']}`", ""]
    return "\n".join(parts)
