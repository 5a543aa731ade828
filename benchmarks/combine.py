#!/usr/bin/env python
"""One table and frontier plot from several `run.py --modes per-image` results.

    python benchmarks/combine.py benchmarks/results/mcmaster-n2-photo6 \\
        benchmarks/results/mcmaster-n7-photo6 ... --out benchmarks/results/mcmaster-n18-photo6.md
    python benchmarks/combine.py --same-images benchmarks/results/mcmaster-efforts-n2-photo6 \\
        benchmarks/results/mcmaster-efforts56-n2-photo6 ... --out ...-all.md

A long measurement (18 photos at minutes each) is run in parts. By default the parts cover
disjoint sets of images: this adds their bytes, subpixels and per-image seconds per codec,
so the totals are those one run on all the images would report, and it refuses parts made
with different models or settings, or that share a data pattern. With `--same-images` the
parts ran different rows (effort levels) on the same images: the table is the union of
their rows, a row that several parts ran taken from the first part listed. `--out X.md`
also writes X.json and the frontier plot X.png (size against encode seconds per megapixel).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `benchmarks` importable as a package
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from benchmarks import plots  # noqa: E402

KEYS = ("model_id", "efforts", "steps")  # what every disjoint part must share
CARRIED = ("steps", "effort", "effort_settings", "adapt")  # a row's settings, the same in every part


def _load(folders: list[Path], same: tuple[str, ...]) -> list[dict]:
    """The parts' results; refused unless they agree on every meta key in `same`."""
    parts = [json.loads((f / "results.json").read_text()) for f in folders]
    for k in same:
        if len({json.dumps(p["meta"].get(k)) for p in parts}) > 1:
            raise SystemExit(f"the parts differ in {k}: {[p['meta'].get(k) for p in parts]}")
    return parts


def combine(folders: list[Path]) -> tuple[list[dict], dict]:
    """Rows summed over parts that coded disjoint sets of images with the same settings."""
    parts = _load(folders, KEYS)
    datas = [p["meta"]["data"] for p in parts]
    if len(set(datas)) < len(datas):
        raise SystemExit(f"two parts cover the same images: {datas}")
    rows: dict[str, dict] = {}
    for p in parts:
        for r in p["rows"]:
            t = rows.setdefault(r["codec"], {"codec": r["codec"], "bytes": 0, "subpixels": 0, "n_images": 0,
                                              "megapixels": 0.0, "encode_s_sum": 0.0, "decode_s_sum": 0.0,
                                              "files": [], **{k: r[k] for k in CARRIED if k in r}})
            t["bytes"] += r["bytes"]
            t["subpixels"] += r["subpixels"]
            t["n_images"] += r["n_images"]
            t["megapixels"] += r["megapixels"]
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
            total = t.pop(f"{way}_sum")
            t[way] = total / t["n_images"]
            t[f"{way}_per_mpx"] = total / t["megapixels"]
        if t["files"]:
            t["bits_back_bpd"] = 8 * sum(f["bits_back_bytes"] for f in t["files"]) / t["subpixels"]
            t["bits_back_files"] = sum(f["method"] == "bits-back" for f in t["files"])
    return list(rows.values()), _meta(folders, parts)


def union(folders: list[Path]) -> tuple[list[dict], dict]:
    """The rows of parts that coded the same images (different effort levels, say) with the
    same model; a codec several parts ran is taken from the first part listed."""
    parts = _load(folders, ("model_id", "data", "images"))
    rows: dict[str, dict] = {}
    for f, p in zip(folders, parts):
        for r in p["rows"]:
            rows.setdefault(r["codec"], {**r, "part": str(f)})  # run.py's rows count their bits-back files
    if "JPEG-XL e9" in rows:  # run.py's lone JPEG-XL row is effort 9: keep one of the two
        rows.pop("JPEG-XL", None)

    def family(r: dict) -> str:
        return plots.effort_family(r) or r["codec"]

    # each codec's effort levels together, in order (the parts ran them in any order)
    first = {name: k for k, name in enumerate(dict.fromkeys(family(r) for r in rows.values()))}
    order = sorted(rows.values(), key=lambda r: (first[family(r)], r.get("effort") or 0))
    return order, _meta(folders, parts)


def _meta(folders: list[Path], parts: list[dict]) -> dict:
    return {"parts": [str(f) for f in folders], "data": [p["meta"]["data"] for p in parts],
            "model_id": parts[0]["meta"].get("model_id"), "dates": [p["meta"]["date"] for p in parts],
            "hardware": parts[0]["meta"].get("hardware")}


def markdown(rows: list[dict], meta: dict) -> str:
    same = any("part" in t for t in rows)
    head = "runs on the same images" if same else "runs"
    lines = [f"# {rows[0]['n_images']} images, combined from {len(meta['parts'])} {head}",
             "", f"model {meta['model_id']}; parts: " + ", ".join(f"`{p}` ({d})" for p, d in
                                                                   zip(meta["parts"], meta["data"])), "",
             "| codec | bytes | bits/subpixel | bits-back only | bits-back files | encode s/img "
             "| decode s/img |" + (" part |" if same else ""),
             "|---|---:|---:|---:|---:|---:|---:|" + ("---|" if same else "")]
    for t in rows:
        bb = f"{t['bits_back_bpd']:.3f}" if t.get("bits_back_bpd") is not None else ""
        nf = f"{t['bits_back_files']}/{t['n_images']}" if "bits_back_files" in t else ""
        lines.append(f"| {t['codec']} | {t['bytes']:,} | {t['bpd']:.3f} | {bb} | {nf} | {t['encode_s']:.3g} "
                     f"| {t['decode_s']:.3g} |" + (f" `{Path(t['part']).name}` |" if same else ""))
    how = ("Each row as its part measured it (a row several parts ran: the first part's)."
           if same else "Sums of the parts' bytes and subpixels; seconds are means per image over all parts.")
    lines += ["", how + " Every part decoded every file and checked it bit-exact"
              + ("." if all(t["bit_exact"] for t in rows) else " (NOT all exact)."), ""]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("folders", nargs="+", type=Path)
    p.add_argument("--same-images", action="store_true",
                   help="the parts coded the same images: take the union of their rows")
    p.add_argument("--out", type=Path, default=None, help="write this .md and a .json beside it")
    args = p.parse_args()
    rows, meta = (union if args.same_images else combine)(args.folders)
    md = markdown(rows, meta)
    print(md)
    if args.out:
        args.out.write_text(md)
        args.out.with_suffix(".json").write_text(json.dumps({"rows": rows, "meta": meta}, indent=1))
        n = rows[0]["n_images"]
        plots.frontier_mpx(rows, f"{n} images, {meta['model_id']}: size against encode time",
                           args.out.with_suffix(".png"))


if __name__ == "__main__":
    sys.exit(main())
