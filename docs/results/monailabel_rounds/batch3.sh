cd "$(dirname "$0")/../../.."
for i in 1 2; do bash scripts/monailabel_check.sh > runs/mlreplay/check_bn_$i.log 2>&1; echo "check $i exit $?"; done
. .venv/bin/activate
export OMP_NUM_THREADS=2
O=runs/mlreplay; R=docs/results/monailabel_rounds
for pair in "demo_000 demo_002" "demo_005 demo_002"; do
  set -- $pair
  python $R/replay.py $O $1 $2 paper_bn '{}'
done
