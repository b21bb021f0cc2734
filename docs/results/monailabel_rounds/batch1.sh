cd "$(dirname "$0")/../../.." && . .venv/bin/activate
export OMP_NUM_THREADS=2
O=runs/mlreplay; R=docs/results/monailabel_rounds
for pair in "demo_000 demo_002" "demo_005 demo_002"; do
  set -- $pair
  python $R/replay.py $O $1 $2 paper '{"semi_warmup": "none"}'
  python $R/replay.py $O $1 $2 auto '{"semi_warmup": "auto"}'
  python $R/replay.py $O $1 $2 supervised '{"use_unlabeled": false}'
done
