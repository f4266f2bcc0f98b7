#!/usr/bin/env bash
# Baton's GPU acceptance run: one entry point, phases each under its own timeout, a report.
#
#   bash bench/gpu/acceptance.sh --out DIR              # on a CUDA machine (about 8 minutes)
#   bash bench/gpu/acceptance.sh --dry-run --out DIR    # on the CPU, tiny shapes (under 2 minutes)
#
# Options: --budget SECONDS (whole run, default 540; a phase never gets more than what is left),
# --phases "env build ..." (a subset, in order), --work DIR (scratch; default a fresh temp dir).
# DIR receives exactly three files, rewritten after every phase so a run killed midway still
# reports: report.md, results.json and logs.tar.gz (each phase's log, results JSON and the
# cost model's outputs). A failing or timed-out phase is recorded and the next one runs.
# On a lent GPU machine pass its output folder (--out "$OUT") and a call limit above the budget.
set -u

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
ALL_PHASES="env build correctness kernels e2e multi_agent cost_model cpu_amx"
OUT="" DRY=0 BUDGET=540 PHASES="$ALL_PHASES" WORK=""

usage() { awk 'NR > 1 && /^#/ {sub(/^# ?/, ""); print; next} NR > 1 {exit}' "$0"; }
while [ $# -gt 0 ]; do
  case "$1" in
    --out) OUT=$2; shift 2 ;;
    --dry-run) DRY=1; shift ;;
    --budget) BUDGET=$2; shift 2 ;;
    --phases) PHASES=$2; shift 2 ;;
    --work) WORK=$2; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "unknown option $1" >&2; usage >&2; exit 2 ;;
  esac
done
[ -n "$OUT" ] || { echo "--out DIR is required" >&2; usage >&2; exit 2; }
for p in $PHASES; do
  case " $ALL_PHASES " in *" $p "*) ;; *) echo "unknown phase $p (known: $ALL_PHASES)" >&2; exit 2 ;; esac
done

# the interpreter that has torch: python3 where it does (the GPU image), else python
PY=${PYTHON:-}
if [ -z "$PY" ]; then
  for cand in python3 python; do
    if command -v "$cand" >/dev/null && "$cand" -c "import torch" 2>/dev/null; then PY=$cand; break; fi
  done
fi
[ -n "$PY" ] || { echo "no python with torch found (set PYTHON=...)" >&2; exit 2; }

mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
WORK=${WORK:-$(mktemp -d "${TMPDIR:-/tmp}/baton-acceptance.XXXXXX")}
mkdir -p "$WORK/logs"
WORK=$(cd "$WORK" && pwd)
: >"$WORK/phases.tsv"
export PYTHONUNBUFFERED=1
export BATON_CACHE_DIR=${BATON_CACHE_DIR:-$WORK/cache}  # synthetic tokenizer / checkpoints
MODE=gpu
DRY_ARG=""
if [ "$DRY" = 1 ]; then
  MODE=dry-run
  DRY_ARG=--dry-run
  export TRITON_INTERPRET=1 CUDA_VISIBLE_DEVICES=""  # the CPU even on a GPU machine
fi
HAVE_TIMEOUT=1
command -v timeout >/dev/null || HAVE_TIMEOUT=0
START=$(date +%s)

# per-phase limits (seconds) on a GPU; a dry run gives each phase at most 60
declare -A LIMIT=([env]=60 [build]=240 [correctness]=180 [kernels]=120 [e2e]=180 [multi_agent]=150 [cost_model]=120 [cpu_amx]=120)

render() {
  "$PY" "$HERE/report.py" --work "$WORK" --out "$OUT" --mode "$MODE" --phases "$PHASES" --started "$START" \
    --budget "$BUDGET" || echo "report.py failed" >&2
  tar -czf "$OUT/logs.tar.gz.tmp" -C "$WORK" --exclude=cache --exclude=processor --exclude='*.safetensors' \
    --exclude='*.tmp' . 2>/dev/null && mv "$OUT/logs.tar.gz.tmp" "$OUT/logs.tar.gz"
}

run_phase() {
  local name=$1 limit=${LIMIT[$1]} now left rc t0 t1
  [ "$DRY" = 1 ] && [ "$limit" -gt 60 ] && limit=60
  now=$(date +%s)
  left=$((BUDGET - (now - START)))
  if [ "$left" -lt 15 ]; then
    printf '%s\t\t0\t0\tout of the %s s time budget\n' "$name" "$BUDGET" >>"$WORK/phases.tsv"
    return
  fi
  [ "$limit" -gt "$left" ] && limit=$left
  echo "== phase $name (limit ${limit}s, ${left}s of the budget left)"
  t0=$(date +%s)
  export BATON_PHASE_DEADLINE=$((t0 + limit))
  if [ "$HAVE_TIMEOUT" = 1 ]; then
    (cd "$HERE" && timeout -k 10 "$limit" "$PY" "$HERE/${name}_phase.py" --json "$WORK/$name.json" \
      --work "$WORK/$name" $DRY_ARG) >"$WORK/logs/$name.log" 2>&1
  else
    (cd "$HERE" && "$PY" "$HERE/${name}_phase.py" --json "$WORK/$name.json" --work "$WORK/$name" \
      $DRY_ARG) >"$WORK/logs/$name.log" 2>&1
  fi
  rc=$?
  t1=$(date +%s)
  printf '%s\t%s\t%s\t%s\t\n' "$name" "$rc" "$((t1 - t0))" "$limit" >>"$WORK/phases.tsv"
  echo "   rc $rc in $((t1 - t0))s; log $WORK/logs/$name.log"
  tail -n 3 "$WORK/logs/$name.log" | sed 's/^/   | /'
}

echo "Baton acceptance ($MODE): out $OUT, scratch $WORK, python $PY, budget ${BUDGET}s"
for name in $PHASES; do
  run_phase "$name"
  render
done
echo "report: $OUT/report.md"
awk '/^## Phases/ {on = 1; next} /^## / {on = 0} on && NF' "$OUT/report.md"
