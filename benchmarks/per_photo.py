#!/usr/bin/env python
"""Per-photo sizes from `run.py --modes per-image` parts, beside WebP and JPEG-XL.

    python benchmarks/per_photo.py --set seventh benchmarks/results/mcmaster-n2-photo7 ... \\
        --set sixth benchmarks/results/mcmaster-n2-photo6 ... --out X.md

A part's results hold each mulancodec file's size and its bits-back stream's size, in the
order of its data pattern's images; the classical rows hold only totals. So this names
each part's images again (the same expansion `run.py` used), codes each photo with WebP and
JPEG-XL e9 here (the table's settings, `classical.py`; each output decoded and checked), and
writes one row per photo: which photos bits-back loses on, and by how much, per model.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `benchmarks` importable as a package
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from benchmarks import classical  # noqa: E402
from benchmarks.measure import BitExactError, measure_codec  # noqa: E402
from mulancodec.training.data import expand, load_images  # noqa: E402

REFERENCES = ("WebP", "JPEG-XL")


def part_files(folder: Path) -> dict[str, tuple[Path, dict]]:
    """Each photo's path and mulancodec file record in one part, by the photo's file name."""
    r = json.loads((folder / "results.json").read_text())
    row = next(x for x in r["rows"] if x["codec"].startswith("mulancodec"))
    paths = expand(r["meta"]["data"])
    if len(paths) != len(row["files"]):
        raise SystemExit(f"{folder}: {len(row['files'])} files but {len(paths)} images now match "
                         f"{r['meta']['data']}")
    return {q.name: (q, f) for q, f in zip(paths, row["files"])}


def reference_bytes(path: Path) -> dict[str, int]:
    """WebP's and JPEG-XL's sizes for one photo, each decoded and checked (`measure_codec`)."""
    x = load_images([str(path)])[0]
    out = {}
    for name in REFERENCES:
        codec = classical.lookup(name)
        try:
            out[name] = measure_codec(name, codec.encode, codec.decode, [x]).bytes
        except BitExactError as e:
            raise SystemExit(f"{path}: {e}") from None
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--set", nargs="+", action="append", required=True, metavar=("LABEL", "PART"),
                   help="a label, then the parts (result folders) of one model's run")
    p.add_argument("--out", type=Path, required=True, help="markdown table to write (and .json)")
    a = p.parse_args()
    sets: dict[str, dict[str, tuple[Path, dict]]] = {}
    for label, *parts in a.set:
        if not parts:
            p.error(f"--set {label}: name at least one part after the label")
        sets[label] = {n: pf for folder in map(Path, parts) for n, pf in part_files(folder).items()}
    photos = sorted(set.intersection(*(set(f) for f in sets.values())),
                    key=lambda n: (len(n), n))
    if not photos:
        p.error("the sets share no photo")
    first = next(iter(sets.values()))
    refs = {n: reference_bytes(first[n][0]) for n in photos}
    head = (["photo"] + [f"{lab} bits-back" for lab in sets] + [f"{lab} file" for lab in sets]
            + list(REFERENCES))
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" + "---:|" * (len(head) - 1)]
    rows = []
    for n in photos:
        bb = [sets[lab][n][1]["bits_back_bytes"] for lab in sets]
        kept = [sets[lab][n][1]["bytes"] for lab in sets]
        ref = [refs[n][c] for c in REFERENCES]
        rows.append({"photo": n, **{f"{lab}_bits_back": b for lab, b in zip(sets, bb)},
                     **{f"{lab}_file": k for lab, k in zip(sets, kept)}, **refs[n]})
        best = min(ref)
        cells = [f"{b:,}" + ("" if b <= best else " (+{:.1f}%)".format(100 * (b / best - 1))) for b in bb]
        cells += [f"{k:,}" for k in kept] + [f"{r:,}" for r in ref]
        lines.append("| " + " | ".join([n] + cells) + " |")
    total = {k: sum(r[k] for r in rows) for k in rows[0] if k != "photo"}
    lines.append("| all | " + " | ".join(f"{total[k]:,}" for k in rows[0] if k != "photo") + " |")
    lines += ["", "Bytes. A bits-back size in brackets: how much larger it is than the smaller of "
              "WebP (lossless, method 6) and JPEG-XL (lossless, effort 9) on that photo."]
    for lab in sets:
        worse = [r["photo"] for r in rows if r[f"{lab}_bits_back"] > r["WebP"]]
        lines.append(f"- {lab}: bits-back larger than WebP on {len(worse)} of {len(rows)} photos"
                     + (f" ({', '.join(worse)})" if worse else "") + ".")
    a.out.write_text("\n".join(lines) + "\n")
    parts_of = {lab: parts for lab, *parts in a.set}
    a.out.with_suffix(".json").write_text(json.dumps({"sets": parts_of, "rows": rows}, indent=1))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
