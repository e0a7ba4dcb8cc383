#!/bin/sh
# The tests of everything that reaches into pika (producer, consumer outlet,
# content header decoder) on the oldest and the newest pika that pyproject's range
# allows, each in a throwaway venv made from the built wheel (not part of
# `make test`: it downloads two pikas and installs the wheel twice).
#
#   scripts/pika-range.sh                 # or: make pika-range
#   PIKA_OLDEST=1.3.0 PIKA_NEWEST=1.3.2 scripts/pika-range.sh
#
# The publisher writes pre-built frames through pika's private
# connection._adapter_emit_data and falls back to the public basic_publish
# when a pika lacks it; tests/unit/test_producer_frame_writer.py and
# tests/integration/test_producer_paths.py test both paths.
set -eu
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
OUT=${PIKA_RANGE_DIR:-/tmp/emq-pika-range}
RANGE=$(sed -n 's/^ *"\(pika>=[^"]*\)",$/\1/p' pyproject.toml)
[ "$RANGE" = "pika>=1.3,<2" ] || { echo "pika range is now $RANGE: update PIKA_OLDEST" >&2; exit 2; }
OLDEST=${PIKA_OLDEST:-1.3.0}
rm -rf "$OUT"
mkdir -p "$OUT"
if [ -z "${PIKA_NEWEST:-}" ]; then
  # What pip resolves the range to today.
  $PY -m pip download --quiet --no-deps --only-binary :all: -d "$OUT/newest" "$RANGE"
  PIKA_NEWEST=$(ls "$OUT/newest" | sed -n 's/^pika-\([^-]*\)-.*\.whl$/\1/p')
fi
$PY -m pip wheel --quiet --no-deps -w "$OUT/wheel" .
WHEEL=$(ls "$OUT"/wheel/envelope_mq-*.whl)
status=0
for version in "$OLDEST" "$PIKA_NEWEST"; do
  venv="$OUT/pika-$version"
  echo "== pika $version ($venv)"
  $PY -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet "$WHEEL[testing]" "pika==$version"
  "$venv/bin/python" -c "import pika, sys; sys.exit(pika.__version__ != '$version')"
  # -p no:cacheprovider: nothing written into the checkout.
  "$venv/bin/python" -m pytest -q -p no:cacheprovider \
    tests/unit/test_producer_*.py tests/integration/test_producer*.py \
    tests/unit/test_consumer_outlet.py tests/integration/test_outlet_paths.py \
    tests/integration/test_consumer_header_fallback.py || status=1
done
exit $status
