#!/bin/sh
# encode McMaster photo 2 at T=25 with --adapt 100 and 0, then decode each in turn, 2 pairs
. .venv/bin/activate
set -e
O=${OUT:-runs/dectime}; mkdir -p $O
for a in 100 0; do
  /usr/bin/time -f "encode adapt=$a wall %e cpu %U" mulancodec encode ../shared/datasets/mcmaster/2.tif -o $O/a$a.mlc -f --steps 25 --adapt $a --no-fallback --threads 1 2>> $O/times.txt
done
ls -l $O/*.mlc >> $O/times.txt
for i in 1 2; do
  for a in 100 0; do
    /usr/bin/time -f "decode adapt=$a round $i wall %e cpu %U" mulancodec decode $O/a$a.mlc -o $O/d$a.png -f --threads 1 2>> $O/times.txt
  done
done
python -c "
import numpy as np; from PIL import Image
a=np.array(Image.open('../shared/datasets/mcmaster/2.tif')); print('exact', all(np.array_equal(a, np.array(Image.open(f'$O/d{x}.png'))) for x in (100, 0)))" >> $O/times.txt
