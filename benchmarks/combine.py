#!/usr/bin/env python
"""One table from several `run.py --modes per-image` results on disjoint sets of images.

    python benchmarks/combine.py benchmarks/results/mcmaster-n2-photo6 \\
        benchmarks/results/mcmaster-n7-photo6 ... --out benchmarks/results/mcmaster-n18-photo6.md

A long measurement (18 photos at minutes each) is run in parts; this adds the parts'
bytes, subpixels and per-image seconds per codec, so the totals are those one run on all
the images would report. It refuses parts made with different models or settings, and
parts that share a data pattern.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

KEYS = ("model_id", "efforts", "steps")  # what every part must share


def combine(folders: list[Path]) -> tuple[list[dict], dict]:
    parts = [json.loads((f / "results.json").read_text()) for f in folders]
    for k in KEYS:
        if len({json.dumps(p["meta"].get(k)) for p in parts}) > 1:
            raise SystemExit(f"the parts differ in {k}: {[p['meta'].get(k) for p in parts]}")
    datas = [p["meta"]["data"] for p in parts]
    if len(set(datas)) < len(datas):
        raise SystemExit(f"two parts cover the same images: {datas}")
    rows: dict[str, dict] = {}
    for p in parts:
        for r in p["rows"]:
            t = rows.setdefault(r["codec"], {"codec": r["codec"], "bytes": 0, "subpixels": 0, "n_images": 0,
                                              "encode_s_sum": 0.0, "decode_s_sum": 0.0, "files": []})
            t["bytes"] += r["bytes"]
            t["subpixels"] += r["subpixels"]
            t["n_images"] += r["n_images"]
            t["encode_s_sum"] += r["encode_s"] * r["n_images"]
            t["decode_s_sum"] += r["decode_s"] * r["n_images"]
            t["files"] += r.get("files", [])
            t["bit_exact"] = t.get("bit_exact", True) and bool(r.get("bit_exact"))
    n = {t["n_images"] for t in rows.values()}
    if len(n) > 1:
        raise SystemExit(f"the codecs saw different numbers of images: {n}")
    for t in rows.values():
        t["bpd"] = 8 * t["bytes"] / t["subpixels"]
        for way in ("encode_s", "decode_s"):
            t[way] = t.pop(f"{way}_sum") / t["n_images"]
        if t["files"]:
            t["bits_back_bpd"] = 8 * sum(f["bits_back_bytes"] for f in t["files"]) / t["subpixels"]
            t["bits_back_files"] = sum(f["method"] == "bits-back" for f in t["files"])
    meta = {"parts": [str(f) for f in folders], "data": datas, "model_id": parts[0]["meta"].get("model_id"),
            "dates": [p["meta"]["date"] for p in parts], "hardware": parts[0]["meta"].get("hardware")}
    return list(rows.values()), meta


def markdown(rows: list[dict], meta: dict) -> str:
    lines = [f"# {rows[0]['n_images']} images, combined from {len(meta['parts'])} runs",
             "", f"model {meta['model_id']}; parts: " + ", ".join(f"`{p}` ({d})" for p, d in
                                                                   zip(meta["parts"], meta["data"])), "",
             "| codec | bytes | bits/subpixel | bits-back only | bits-back files | encode s/img "
             "| decode s/img |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for t in rows:
        bb = f"{t['bits_back_bpd']:.3f}" if "bits_back_bpd" in t else ""
        nf = f"{t['bits_back_files']}/{t['n_images']}" if "bits_back_files" in t else ""
        lines.append(f"| {t['codec']} | {t['bytes']:,} | {t['bpd']:.3f} | {bb} | {nf} | {t['encode_s']:.3g} "
                     f"| {t['decode_s']:.3g} |")
    lines += ["", "Sums of the parts' bytes and subpixels; seconds are means per image over all parts. "
              "Every part decoded every file and checked it bit-exact"
              + ("." if all(t["bit_exact"] for t in rows) else " (NOT all exact)."), ""]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("folders", nargs="+", type=Path)
    p.add_argument("--out", type=Path, default=None, help="write this .md and a .json beside it")
    args = p.parse_args()
    rows, meta = combine(args.folders)
    md = markdown(rows, meta)
    print(md)
    if args.out:
        args.out.write_text(md)
        args.out.with_suffix(".json").write_text(json.dumps({"rows": rows, "meta": meta}, indent=1))


if __name__ == "__main__":
    sys.exit(main())
