#!/bin/sh
# Bootstrap and run: `sh tools/run.sh demo` (the demo pipeline) or `sh tools/run.sh test` (the test suite).
# Creates .venv, installs the CPU build of torch and evonnx with its search and test extras when pyproject.toml changed,
# and installs the FashionMNIST and espeak-ng Debian packages when it can (the zoo falls back to scikit-learn
# digits; the corpus reads calibration speech with espeak-ng).
set -e
cd "$(dirname "$0")/.."
PY=.venv/bin/python
[ -x "$PY" ] || python3 -m venv .venv
STAMP=.venv/.evonnx-installed
WANT=$(cat pyproject.toml | cksum)
if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$WANT" ]; then
    "$PY" -m pip install -q --upgrade pip
    # the CPU build of torch from its own index (the default index serves a multi-GB CUDA build), or the default
    # index where that one is unreachable; `pip install torch` yourself for CUDA
    "$PY" -m pip install -q --timeout 10 --retries 1 --index-url https://download.pytorch.org/whl/cpu torch==2.13.0 \
        || "$PY" -m pip install -q torch==2.13.0
    "$PY" -m pip install -q -e ".[gpu,torch,test]"  # onnxruntime-gpu runs on the CPU where CUDA is unusable
    echo "$WANT" > "$STAMP"
fi
if ! command -v espeak-ng >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    apt-get install -y -q espeak-ng >/dev/null 2>&1 \
        || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q espeak-ng >/dev/null 2>&1; } \
        || echo "note: espeak-ng not installable; the corpus cannot synthesize calibration speech"
fi
if [ ! -d /usr/share/datasets/fashion-mnist ] && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 \
        || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1; } \
        || echo "note: dataset-fashion-mnist not installable; the zoo uses scikit-learn's digits instead"
fi
case "$1" in
    demo) shift; exec .venv/bin/evonnx demo "$@" ;;
    test) shift; exec "$PY" -m pytest -q "$@" ;;
    *) echo "usage: sh tools/run.sh demo|test [args]" >&2; exit 2 ;;
esac
