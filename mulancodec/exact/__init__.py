"""Exact arithmetic: the integer version of a float MuLAN, whose files decode anywhere.

`integer.IntegerMuLAN` is derived from the float model's layout layer by layer
(`intunet`, `intaux`, built from `intblocks` and `intops`); `exactmath` gives the
chain's elementary functions bit for bit on every machine; `quantize` makes an
integer model from a float one, `qat` trains a float model under its rounding, and
`quantcost` measures what the rounding costs in bits.
"""
