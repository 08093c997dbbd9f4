#!/usr/bin/env bash
# The main job on built-in sample data (`make demo`):
#   1. generate phantom test cases (images + labels);
#   2. build the baseline predictor image and a second team that really differs ("lowres": the same
#      weights with the fine pass at 3 mm instead of 2 mm and one CPU thread), and save both as
#      TEAM.tar.gz archives, as teams submit them;
#   3. run the whole challenge on them: load, monitored runs per case, scoring, ranking, report;
#   4. print the path of the leaderboard.
# Where Docker cannot run, the same pipeline runs the teams as host commands (the monitor's local mode).
#   usage: docker/demo.sh [OUT_DIR]    env: DEMO_CASES (4), DEMO_SHAPE ("160 160 48"), DEMO_SEED (2026),
#          DEMO_LOCAL=1 (local mode even where Docker runs)
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
OUT=$(mkdir -p "${1:-out/demo}" && cd "${1:-out/demo}" && pwd)
CASES=${DEMO_CASES:-4}
SHAPE=${DEMO_SHAPE:-160 160 48}
SEED=${DEMO_SEED:-2026}
PY=${PYTHON:-python3}
DOCKER=/usr/bin/docker
cd "$repo"

echo "== 1. phantoms: $CASES cases, shape $SHAPE, seed $SEED -> $OUT/data"
rm -rf "$OUT/data" "$OUT/challenge"
# shellcheck disable=SC2086
$PY -m phantoms --out "$OUT/data" --count "$CASES" --seed "$SEED" --shape $SHAPE --domain mixed

lowres_weights="$OUT/lowres-weights"
rm -rf "$lowres_weights" && cp -r predictor/weights "$lowres_weights"
$PY - "$lowres_weights/config.json" <<'PY'
import json, sys
path = sys.argv[1]
config = json.load(open(path))
config["pipeline"]["fine_mm"] = 3.0
json.dump(config, open(path, "w"), indent=2)
PY

if [ -z "${DEMO_LOCAL:-}" ] && bash docker/engine.sh >/dev/null 2>&1 && "$DOCKER" info >/dev/null 2>&1; then
  echo "== 2. images: baseline (make image) and lowres (fine pass at 3 mm, 1 thread)"
  bash docker/build_image.sh flare-predictor:latest
  ctx=$(mktemp -d)
  cp "$lowres_weights/config.json" "$ctx/config.json"
  printf 'FROM flare-predictor:latest\nCOPY config.json /opt/flare/predictor/weights/config.json\nENV FLARE_THREADS=1\n' \
    > "$ctx/Dockerfile"
  DOCKER_BUILDKIT=1 "$DOCKER" build -q --network none -t flare-predictor-lowres:latest "$ctx" >/dev/null
  rm -rf "$ctx"
  mkdir -p "$OUT/teams"
  # FORCE=1: the demo owns the baseline:latest and lowres:latest tags (a rebuilt image retags them).
  (cd "$OUT/teams" && FORCE=1 bash "$repo/docker/save_submission.sh" baseline flare-predictor:latest \
     && FORCE=1 bash "$repo/docker/save_submission.sh" lowres flare-predictor-lowres:latest)
  echo "== 3. challenge: archives -> monitored container runs -> scores -> leaderboard"
  $PY -m organizer challenge --teams "$OUT/teams" --images "$OUT/data/images" --labels "$OUT/data/labels" \
    --out "$OUT/challenge" --memory 8g --shm-size 2g --timeout 600
else
  echo "== 2. Docker cannot run here (or DEMO_LOCAL is set): the teams run as host commands (the monitor's local mode)"
  echo "== 3. challenge: local runs -> scores -> leaderboard"
  $PY -m organizer challenge \
    --local "baseline=$PY -m predictor -i {inputs} -o {outputs}" \
    --local "lowres=env FLARE_THREADS=1 $PY -m predictor -i {inputs} -o {outputs} --weights $lowres_weights" \
    --images "$OUT/data/images" --labels "$OUT/data/labels" --out "$OUT/challenge" --timeout 600
fi
echo "== 4. leaderboard: $OUT/challenge/leaderboard/index.html"
