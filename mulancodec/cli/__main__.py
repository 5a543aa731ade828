"""`python -m mulancodec.cli` (and `torchrun -m mulancodec.cli train`): the same as `mulancodec`."""
from . import main

main()
