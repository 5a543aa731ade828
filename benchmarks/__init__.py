"""Side-by-side benchmark of mulancodec against classical lossless codecs.

Run it as ``python benchmarks/run.py --data PATH`` (see run.py); the package
form exists so tests can import the driver and its pieces.
"""
