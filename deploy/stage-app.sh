#!/usr/bin/env sh
# The files the server image runs from, staged from a built clone (`npm ci` done, dev dependencies
# pruned) into <out>: one list, used by deploy/Dockerfile's build stage and by check-container.sh.
#   deploy/stage-app.sh <built clone> <out>
set -eu
src=$1
out=$2
mkdir -p "$out/fixtures"
cd "$src"
cp -r package.json index.js platform.cjs platforms.json dist bin node_modules "$out/"
cp ./*.node "$out/"
cp -r fixtures/qwen3-tiny "$out/fixtures/"
