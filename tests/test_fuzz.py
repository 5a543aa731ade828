"""Fuzzing the decoder: any byte string decodes exactly or fails with a documented error.

Every case asserts the decoding guarantee (see `mlc_mutants.check_decode`): the
result is exactly the images of a file that was encoded, or the API raises
`FormatError`, `DecodeError`, `ModelFileError` or `ImageError` with a one-line
message, within a time bound, without warnings; any other exception (a Rust
panic from the entropy coder included) fails the test.

Mutants come from six tiny valid files (every mode, a multi-tile stream with
names, an embedded fallback; tiny model, T=2):

* byte mutants: bit flips, byte writes (biased to the header), truncations,
  insertions, deletions, duplications, splices of two files, random bytes with
  and without the magic, and a valid header on another file's payload; half of
  them get both CRCs recomputed so the checks behind the CRCs are reached;
* field mutants: the header parsed, 1-3 fields replaced by hostile values (sizes,
  counts, plan, seed, float parameters, side blobs, names, backend, model id,
  payload words), and re-serialised with valid CRCs by `container.write`;
* adaptation mutants: adapted files (format version 4, a tiny integer model) whose
  adaptation block is replaced by a hostile one (`mlc_mutants.adapt_block_edits`:
  subsets, steps, counts, scale codes, words) or has its bytes flipped or overwritten;
* CLI mutants: a few through ``python -m mulancodec.cli decode`` and dozens more
  through the same entry point in forked processes (exit status in the documented
  set, stderr exactly one ``mulancodec: error:`` line, no traceback, no output left).

Hypothesis runs derandomized (a fixed seed), so CI always runs the same cases.
Case counts (defaults sized for well under a minute on 2 CPU cores):

    MULANCODEC_FUZZ_EXAMPLES=100000 pytest tests/test_fuzz.py   # byte mutants (default 1500);
                                                                # field and CLI-runner mutants scale with it
    MULANCODEC_FUZZ_SEED=123 ...      # explore other cases (random, seeded) instead of the fixed set
    MULANCODEC_FUZZ_CLI=50 ...        # `python -m` CLI mutants (default 3; ~4 s each: torch import);
                                      # forked CLI mutants: max(48, EXAMPLES / 30)

Decoding is given a 4096-pixel bomb limit (`max_pixels`), so a mutant that
claims big images fails in the parser; mutants whose header declares more than
WORK_LIMIT tile-steps (e.g. a flipped bit that turns T=2 into T=16000) are
parsed but not decoded: decoding time is proportional to the work a header
declares (tiles x steps, both bounded by the format), which is by design.
"""
from __future__ import annotations

import collections
import io
import json
import os
import struct
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import mlc_mutants as mm
import numpy as np
import pytest
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st
from PIL import Image

from mulancodec.coding import container as fmt

EXAMPLES = int(os.environ.get("MULANCODEC_FUZZ_EXAMPLES", "1500"))
FIELD_EXAMPLES = max(50, EXAMPLES // 5)
RUNNER_EXAMPLES = max(30, EXAMPLES // 15)
CLI_CASES = int(os.environ.get("MULANCODEC_FUZZ_CLI", "3"))
FORKED_CASES = max(48, EXAMPLES // 30)
SEED = os.environ.get("MULANCODEC_FUZZ_SEED")
WORK_LIMIT = 40  # tile-steps; the corpus's largest file declares 5 tiles x T=2
MAX_PIXELS = 4096

OUTCOMES: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)


def fuzz_settings(n: int):
    def wrap(f):
        f = settings(max_examples=n, derandomize=SEED is None, deadline=None, database=None,
                     suppress_health_check=list(HealthCheck), print_blob=True)(f)
        return seed(int(SEED))(f) if SEED is not None else f
    return wrap


@pytest.fixture(scope="module", autouse=True)
def report(request):
    yield
    tr = request.config.pluginmanager.get_plugin("terminalreporter")
    for test, c in OUTCOMES.items():
        line = f"fuzz {test}: {sum(c.values())} cases: " + ", ".join(f"{k} {v}" for k, v in c.most_common())
        if tr is not None:
            tr.write_line(line)


def run_case(test: str, data: bytes, corpus, lm) -> None:
    if mm.declared_work(data, MAX_PIXELS) > WORK_LIMIT:
        OUTCOMES[test]["declared-expensive (parsed, not decoded)"] += 1
        return
    OUTCOMES[test][mm.check_decode(data, corpus, lm, max_pixels=MAX_PIXELS)] += 1


def test_corpus_decodes_exactly(corpus, lm):
    for s in corpus:
        assert mm.check_decode(s.data, corpus, lm, max_pixels=MAX_PIXELS) == "exact", s.name


# -- byte mutants ------------------------------------------------------------------------

BYTE_KINDS = ["flip", "set", "truncate", "insert", "delete", "dup", "splice", "random", "magic",
              "swap-payload"]


def byte_mutant(draw, corpus) -> bytes:
    s = corpus[draw(st.integers(0, len(corpus) - 1), label="file")]
    b = bytearray(s.data)
    n = len(b)
    sec = mm.sections(s.data)
    assert sec is not None
    head = sec[1]  # header CRC position: most parser logic lives before it
    kind = draw(st.sampled_from(BYTE_KINDS), label="kind")

    def pos(hi: int = n - 1) -> int:
        return draw(st.one_of(st.integers(0, min(hi, head + 3)), st.integers(0, hi)))

    if kind == "flip":
        for _ in range(draw(st.integers(1, 4))):
            b[pos()] ^= 1 << draw(st.integers(0, 7))
    elif kind == "set":
        for _ in range(draw(st.integers(1, 3))):
            b[pos()] = draw(st.sampled_from([0, 1, 0x7F, 0x80, 0xFF]) | st.integers(0, 255))
    elif kind == "truncate":
        b = b[:draw(st.integers(0, n - 1))]
    elif kind == "insert":
        i = pos(n)
        b[i:i] = draw(st.binary(min_size=1, max_size=12))
    elif kind == "delete":
        i = pos()
        del b[i:i + draw(st.integers(1, 12))]
    elif kind == "dup":
        i, j = pos(), pos()
        b[i:i] = b[j:j + draw(st.integers(1, 32))]
    elif kind == "splice":
        other = draw(st.sampled_from(corpus)).data
        b = b[:pos()] + bytearray(other[draw(st.integers(0, len(other) - 1)):])
    elif kind == "random":
        b = bytearray(draw(st.binary(max_size=300)))
    elif kind == "magic":
        b = bytearray(fmt.MAGIC + bytes([fmt.VERSION]) + draw(st.binary(max_size=300)))
    else:  # a valid header (and its CRC) followed by another file's payload (and its CRC)
        other = draw(st.sampled_from(corpus)).data
        b = b[:head + 4] + bytearray(other[mm.sections(other)[1] + 4:])
    if draw(st.booleans(), label="fix CRCs"):
        b = bytearray(mm.fix_crcs(bytes(b)))
    return bytes(b)


@fuzz_settings(EXAMPLES)
@given(st.data())
def test_byte_mutants(corpus, lm, data):
    run_case("byte mutants", byte_mutant(data.draw, corpus), corpus, lm)


# -- field mutants -----------------------------------------------------------------------

SIDES = [0, 1, 2, 5, 8, 15, 16, 17, 33, 255, 4096, 65535, 65536]
FLOATS = [float("nan"), float("inf"), -1.0, 0.0, 1e-6, 2e-6, 1e-5, 1e-3, 0.5, 1.0, 12.0, 64.0, 100.0, 1e3, 1e30]


def _png_blobs(draw, rec: fmt.ImageRecord) -> bytes:
    w, h = rec.width, rec.height
    choice = draw(st.sampled_from(["garbage", "truncated", "other-size", "right-size", "rgb", "16-bit",
                                   "claims-huge", "empty", "webp"]))
    rng = np.random.default_rng(draw(st.integers(0, 99)))
    if choice == "garbage":
        return draw(st.binary(max_size=64))
    if choice == "truncated":
        blob = rec.embedded or rec.alpha or mm.png(np.zeros((h, w), np.uint8))
        return blob[:draw(st.integers(0, max(0, len(blob) - 1)))]
    if choice == "other-size":
        return mm.png(rng.integers(0, 256, (h + 1, w), dtype=np.uint8))
    if choice == "right-size":
        return mm.png(rng.integers(0, 256, (h, w), dtype=np.uint8))
    if choice == "rgb":
        return mm.png(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
    if choice == "16-bit":
        return mm.png(rng.integers(0, 65535, (h, w), dtype=np.uint16))
    if choice == "claims-huge":
        return mm.png_claiming(draw(st.sampled_from([w, 30000, 65535, 1 << 31])),
                               draw(st.sampled_from([h, 30000, 65535])))
    if choice == "webp":
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(buf, "WEBP", lossless=True)
        return buf.getvalue()
    return b""


def edit_image(draw, h: fmt.Header, corpus) -> None:
    i = draw(st.integers(0, len(h.images) - 1))
    r = h.images[i]
    field = draw(st.sampled_from(["mode", "method", "width", "height", "palette", "palette_mode",
                                  "transparency", "alpha", "embedded", "name", "drop", "dup", "swap",
                                  "from-other", "meta"]))
    if field == "mode":
        r.mode = draw(st.sampled_from(fmt.MODES))
    elif field == "method":
        r.method = draw(st.sampled_from([0, 1, 2, 255]))
    elif field in ("width", "height"):
        setattr(r, field, draw(st.sampled_from(SIDES)))
    elif field == "palette":
        r.palette = draw(st.binary(max_size=40) | st.just(b"\0" * 768) | st.just(b"\0" * 1027))
    elif field == "palette_mode":
        r.palette_mode = draw(st.sampled_from(["RGB", "RGBA"]))
    elif field == "transparency":
        r.transparency = draw(st.none() | st.integers(0, 300) | st.binary(max_size=260))
    elif field in ("alpha", "embedded"):
        setattr(r, field, _png_blobs(draw, r))
    elif field == "name":
        r.name = draw(st.sampled_from(["", "x.png", "../../etc/passwd", "/abs", ".", "..", "a\0b",
                                       "line\nbreak", "\udcff"]) | st.text(max_size=8))
    elif field == "drop" and len(h.images) > 1:
        del h.images[i]
    elif field == "dup":
        h.images.insert(i, fmt.ImageRecord(**vars(r)))
    elif field == "swap":
        j = draw(st.integers(0, len(h.images) - 1))
        h.images[i], h.images[j] = h.images[j], h.images[i]
    elif field == "from-other":
        other = mm.parts(draw(st.sampled_from(corpus)).data)[0]
        h.images[i] = draw(st.sampled_from(other.images))
    elif field == "meta":  # metadata items: unknown kinds, repeats, wrong fixed sizes, non-UTF-8 text
        r.meta = draw(st.lists(st.tuples(st.integers(0, 10), st.binary(max_size=70)), max_size=4))


def edit_header(draw, h: fmt.Header, words: np.ndarray, corpus) -> np.ndarray:
    field = draw(st.sampled_from(["model_id", "backend", "bf16", "threads", "env_tag", "steps", "kappa",
                                  "window", "latent_delta", "tile", "image", "image", "image", "plan",
                                  "seed_words", "stripped", "checksum", "payload", "payload"]))
    if field == "model_id":
        mm.set_fields(h, model_id=draw(st.binary(min_size=8, max_size=8)).hex())
    elif field == "backend":
        mm.set_fields(h, backend="cuda")
    elif field == "bf16":
        mm.set_fields(h, bf16=True)
    elif field == "threads":
        mm.set_fields(h, threads=draw(st.sampled_from([0, 1, 3, 64, 256, 257, 4096, 4097])))
    elif field == "env_tag":
        mm.set_fields(h, env_tag=draw(st.integers(0, 2 ** 32 - 1)))
    elif field == "steps":
        mm.set_fields(h, steps=draw(st.sampled_from([0, 1, 3, 4, 100_001])))
    elif field in ("kappa", "window", "latent_delta"):
        mm.set_fields(h, **{field: draw(st.sampled_from(FLOATS) | st.floats(0.0, 1000.0, width=32))})
    elif field == "tile":
        h.tile = draw(st.sampled_from([0, 1, 8, 15, 32, 1024, 1025]))
    elif field == "image":
        edit_image(draw, h, corpus)
    elif field == "plan":
        total = sum(h.plan)
        h.plan = draw(st.sampled_from([[], [0], [total], [1] * total, h.plan + [1], h.plan[:-1],
                                       h.plan[::-1], [1 << 24], [total + 1]])
                      | st.lists(st.integers(1, 6), max_size=6))
    elif field == "seed_words":
        sw = h.seed_words
        h.seed_words = draw(st.sampled_from([0, 1, sw - 1, sw + 1, sw * 4, sw * 1024, fmt.MAX_SEED_WORDS,
                                             fmt.MAX_SEED_WORDS + 1]))
        h.seed_words = max(0, h.seed_words)
    elif field == "stripped":
        h.stripped = max(0, h.stripped + draw(st.sampled_from([-h.stripped, -1, 1, 2, 1000])))
        if draw(st.booleans()):
            h.stripped = draw(st.sampled_from([h.seed_words, h.seed_words + 1, h.seed_words + 2]))
    elif field == "checksum":
        h.checksum = draw(st.binary(min_size=8, max_size=8))
    else:
        how = draw(st.sampled_from(["flip", "drop-top", "drop-bottom", "extend", "empty", "zero-top",
                                    "random", "other"]))
        w = words.copy()
        if how == "flip" and len(w):
            j = draw(st.integers(0, len(w) - 1))
            w[j] ^= np.uint32(1 << draw(st.integers(0, 31)))
        elif how == "drop-top":
            w = w[:-draw(st.integers(1, 3))] if len(w) else w
        elif how == "drop-bottom":
            w = w[draw(st.integers(1, 3)):]
        elif how == "extend":
            w = np.concatenate([w, np.array(draw(st.lists(st.integers(0, 2 ** 32 - 1), min_size=1,
                                                          max_size=4)), np.uint32)])
        elif how == "empty":
            w = w[:0]
        elif how == "zero-top" and len(w):
            w[-1] = 0
        elif how == "random":
            w = np.random.default_rng(draw(st.integers(0, 999))).integers(0, 2 ** 32, len(w),
                                                                        dtype=np.uint32)
        elif how == "other":
            w = mm.parts(draw(st.sampled_from(corpus)).data)[1]
        return w
    return words


@fuzz_settings(FIELD_EXAMPLES)
@given(st.data())
def test_field_mutants(corpus, lm, data):
    s = corpus[data.draw(st.integers(0, len(corpus) - 1), label="file")]
    h, words = mm.parts(s.data)
    for _ in range(data.draw(st.integers(1, 3), label="edits")):
        words = edit_header(data.draw, h, words, corpus)
    try:
        mutant = fmt.write(h, words)
    except (ValueError, struct.error, OverflowError):  # values container.write cannot express
        OUTCOMES["field mutants"]["not writable"] += 1
        return
    run_case("field mutants", mutant, corpus, lm)


# -- adaptation blocks (format version 4) -----------------------------------------------------

@pytest.fixture(scope="module", params=["tiny-lv", "tiny-unusual"])
def adapted(tmp_path_factory, request):
    """(tiny integer model, adapted files): norms and biases (tiny-lv), low-rank factors too
    (tiny-unusual)."""
    return mm.build_adapted(tmp_path_factory.mktemp("adapted"), request.param)


def test_adapted_files_decode_exactly(adapted):
    ilm, samples = adapted
    for s in samples:
        assert s.data[4] == 4
        assert mm.check_decode(s.data, samples, ilm, max_pixels=MAX_PIXELS) == "exact", s.name


def _block_span(data: bytes) -> tuple[int, int]:
    """Where a version-4 file's adaptation block lies (file offsets)."""
    h, _ = mm.parts(data)
    block = fmt.adapt_block_bytes(h.chain.adaptation)
    start = data.index(block)
    return start, start + len(block)


@fuzz_settings(FIELD_EXAMPLES)
@given(st.data())
def test_adaptation_block_mutants(adapted, data):
    ilm, samples = adapted
    s = samples[data.draw(st.integers(0, len(samples) - 1), label="file")]
    h, words = mm.parts(s.data)
    if data.draw(st.booleans(), label="bytes"):
        lo, hi = _block_span(s.data)
        b = bytearray(s.data)
        for _ in range(data.draw(st.integers(1, 4), label="edits")):
            i = data.draw(st.integers(lo, hi - 1), label="at")
            b[i] = data.draw(st.integers(0, 255)) if data.draw(st.booleans()) else b[i] ^ (1 << data.draw(
                st.integers(0, 7)))
        mutant = mm.fix_crcs(bytes(b)) if data.draw(st.booleans(), label="fix crcs") else bytes(b)
    else:
        edits = mm.adapt_block_edits(h.chain.adaptation, np.random.default_rng(data.draw(st.integers(0, 99))))
        name = data.draw(st.sampled_from(sorted(edits)), label="edit")
        mm.set_fields(h, adaptation=edits[name])
        try:
            mutant = fmt.write(h, words)
        except ValueError:  # a block container.write cannot express
            OUTCOMES["adaptation mutants"]["not writable"] += 1
            return
    run_case("adaptation mutants", mutant, samples, ilm)


# -- the command line ------------------------------------------------------------------------

CLI_EXIT = {0, 3, 4, 5}  # success, bad input, model problem, output problem (documented in --help)


def _mutants_for_cli(corpus, n: int) -> list[tuple[str, bytes]]:
    """A fixed, varied sample: a few structural mutants, then seeded byte and field mutants."""
    rng = np.random.default_rng(11)
    rgb = corpus[0].data
    h, words = mm.parts(rgb)
    cases = [
        ("valid", rgb),
        ("empty", b""),
        ("truncated", rgb[: len(rgb) // 2]),
        ("cuda", mm.rewrite(rgb, backend="cuda")),
        ("next version", mm.fix_crcs(rgb[:4] + bytes([fmt.VERSION + 1]) + rgb[5:])),
        ("other payload", mm.rewrite(rgb, payload=mm.parts(corpus[1].data)[1])),
        ("bad checksum", mm.rewrite(rgb, checksum=b"\0" * 8)),
        ("huge image", mm.rewrite(rgb, images=[fmt.ImageRecord("RGB", 65535, 65535)])),
        ("stream, flipped payload", mm.rewrite(corpus[-1].data, payload=mm.parts(corpus[-1].data)[1] ^ 1)),
        ("embedded, garbage", mm.rewrite(corpus[4].data, images=[fmt.ImageRecord(
            "RGB", 2, 2, fmt.METHOD_EMBED, embedded=b"\x89PNG\r\n\x1a\n" + b"\0" * 20)])),
        ("hostile names", _renamed(corpus[-1].data, ["a\0b.png", "x" * 300 + ".png", "../../up.png"])),
        ("huge seed", mm.rewrite(rgb, seed_words=fmt.MAX_SEED_WORDS)),
        ("threads 0", mm.rewrite(rgb, threads=0)),
        ("wide latent window", mm.rewrite(rgb, window=1000.0, latent_delta=1e-4)),
    ]
    while len(cases) < n:
        s = corpus[int(rng.integers(len(corpus)))].data
        b = bytearray(s)
        kind = ["flip", "truncate", "splice"][int(rng.integers(3))]
        if kind == "flip":
            for _ in range(int(rng.integers(1, 4))):
                b[int(rng.integers(len(b)))] ^= 1 << int(rng.integers(8))
        elif kind == "truncate":
            b = b[:int(rng.integers(len(b)))]
        else:
            o = corpus[int(rng.integers(len(corpus)))].data
            b = b[:int(rng.integers(len(b)))] + o[int(rng.integers(len(o))):]
        b = mm.fix_crcs(bytes(b)) if rng.random() < 0.7 else bytes(b)
        if mm.declared_work(b, 1 << 28) <= WORK_LIMIT:  # see the module docstring
            cases.append((f"{kind} #{len(cases)}", b))
    return cases[:n]


def _renamed(data: bytes, names: list[str]) -> bytes:
    h, words = mm.parts(data)
    for r, name in zip(h.images, names):
        r.name = name
    return fmt.write(h, words)


# Runs `mulancodec.cli.main` in a forked child per case (fd 2 redirected to a file), after
# importing torch once: a real process per case (exit status, everything written to fd 2,
# Rust panics and Python warnings included) at a few milliseconds each instead of seconds.
FORK_DRIVER = r"""
import json, os, sys, time
import mulancodec
from mulancodec.cli import main
# Load the model and run it once here, so every child inherits it warm (with
# OMP_NUM_THREADS=1 there is no thread pool for fork to break).
mulancodec.decompress_pictures(open(sys.argv[3], "rb").read(), model=sys.argv[2])
for case in json.load(open(sys.argv[1])):
    sys.stdout.flush(); sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        os.chdir(case["dir"])
        fd = os.open(case["stderr"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        os.dup2(fd, 2)
        code = 0
        try:
            main(case["args"], prog_name="mulancodec")
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        except BaseException:
            import traceback; traceback.print_exc(); code = 99
        sys.stderr.flush()
        os._exit(code)
    deadline = time.monotonic() + float(case["seconds"])
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            code = os.waitstatus_to_exitcode(status)
            break
        if time.monotonic() > deadline:
            os.kill(pid, 9); os.waitpid(pid, 0); code = "timeout"
            break
        time.sleep(0.005)
    print(json.dumps({"dir": case["dir"], "code": code}), flush=True)
"""


def _check_cli_outcome(name: str, d, code, err: str, corpus) -> str:
    assert code in CLI_EXIT, f"{name}: exit {code}: {err}"
    out = d / "out"
    outputs = sorted(out.rglob("*")) if out.exists() else []
    if code == 0:
        assert err == "", f"{name}: {err}"
        got = [np.asarray(Image.open(p)) for p in outputs]
        assert any(len(got) == len(s.arrays) and all(np.array_equal(a, b) for a, b in zip(got, s.arrays))
                   for s in corpus), f"{name}: decoded images that were never encoded"
        return "exact"
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("mulancodec: error:"), f"{name}: stderr {err!r}"
    assert not out.exists(), f"{name}: left {outputs or 'an empty out/'}"
    assert [p.name for p in d.iterdir()] == ["in.mlc"], f"{name}: left {list(d.iterdir())}"
    return f"exit {code}"


def _case_dir(tmp, i: int, data: bytes):
    d = tmp / f"case{i}"
    d.mkdir()
    (d / "in.mlc").write_bytes(data)
    return d


def _run_cli(tmp, i: int, name: str, data: bytes, model_path, corpus) -> str:
    d = _case_dir(tmp, i, data)
    env = dict(os.environ, MULANCODEC_MODEL=str(model_path))
    env.pop("MULANCODEC_DEBUG", None)
    r = subprocess.run([sys.executable, "-m", "mulancodec.cli", "decode", "in.mlc", "-o", "out/", "-q"],
                       cwd=d, capture_output=True, env=env, timeout=300)
    return _check_cli_outcome(name, d, r.returncode, r.stderr.decode(errors="replace"), corpus)


def test_cli_decode_mutants(corpus, tiny_model_path, tmp_path):
    """`python -m mulancodec.cli decode` on a few mutants: one-line errors, documented exits, no output."""
    cases = _mutants_for_cli(corpus, CLI_CASES)
    with ThreadPoolExecutor(max_workers=3) as ex:
        outcomes = list(ex.map(lambda a: _run_cli(tmp_path, a[0], *a[1], tiny_model_path, corpus),
                               enumerate(cases)))
    OUTCOMES["CLI subprocess"].update(outcomes)
    assert outcomes[0] == "exact" and "exact" not in outcomes[1:]


def test_cli_decode_mutants_forked(corpus, tiny_model_path, tmp_path):
    """Dozens more CLI mutants, each in its own (forked) process: the same rules."""
    cases = _mutants_for_cli(corpus, FORKED_CASES)
    errs = tmp_path / "stderr"
    errs.mkdir()
    spec = [{"dir": str(_case_dir(tmp_path, i, data)), "stderr": str(errs / f"{i}.txt"), "seconds": 60,
             "args": ["decode", "in.mlc", "-o", "out/", "-q", "--model", str(tiny_model_path)]}
            for i, (_, data) in enumerate(cases)]
    (tmp_path / "cases.json").write_text(json.dumps(spec))
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("MULANCODEC_DEBUG", None)
    r = subprocess.run([sys.executable, "-c", FORK_DRIVER, str(tmp_path / "cases.json"),
                        str(tiny_model_path), str(tmp_path / "case0" / "in.mlc")], env=env,
                       capture_output=True, timeout=600)
    assert r.returncode == 0, r.stderr.decode()
    results = [json.loads(x) for x in r.stdout.decode().splitlines()]
    assert len(results) == len(cases)
    outcomes = [_check_cli_outcome(name, tmp_path / f"case{i}", res["code"],
                                   (errs / f"{i}.txt").read_text(errors="replace"), corpus)
                for i, ((name, _), res) in enumerate(zip(cases, results))]
    OUTCOMES["CLI forked"].update(outcomes)
    assert outcomes[0] == "exact"


@fuzz_settings(RUNNER_EXAMPLES)
@given(st.data())
def test_cli_runner_mutants(corpus, tiny_model_path, tmp_path_factory, data):
    """More CLI mutants in-process (click's runner): the same exit and output rules, much faster."""
    from click.testing import CliRunner

    from mulancodec.cli import main

    mutant = byte_mutant(data.draw, corpus)
    if mm.declared_work(mutant, MAX_PIXELS) > WORK_LIMIT:
        return
    d = tmp_path_factory.mktemp("cli")
    (d / "in.mlc").write_bytes(mutant)
    res = CliRunner().invoke(main, ["decode", str(d / "in.mlc"), "-o", str(d / "out") + "/", "-q",
                                    "--model", str(tiny_model_path), "--max-pixels", str(MAX_PIXELS)])
    assert res.exception is None or isinstance(res.exception, SystemExit), repr(res.exception)
    assert res.exit_code in CLI_EXIT, res.stderr
    outputs = list((d / "out").rglob("*")) if (d / "out").exists() else []
    if res.exit_code:
        lines = res.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith("mulancodec: error:"), res.stderr
        assert not outputs
    else:
        assert outputs
    OUTCOMES["CLI runner"][f"exit {res.exit_code}"] += 1
