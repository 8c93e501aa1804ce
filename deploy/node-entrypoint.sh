#!/bin/sh
# A node of the compose demo: join with the token the operator handed over (once), then run.
# Usage: node-entrypoint.sh NAME DATA_FOLDER RANK
set -eu
NAME=$1 DATA=$2 RANK=$3 NODE=${NODE:-/node} TOKENS=${TOKENS:-/tokens}
if [ ! -f "$NODE/node.json" ]; then
    until [ -s "$TOKENS/$NAME" ]; do sleep 1; done
    until fedlora node join "$(cat "$TOKENS/$NAME")" --dir "$NODE"; do sleep 2; done
fi
if [ ! -f "$DATA/train.jsonl" ]; then
    fedlora data synth --out /tmp/synth > /dev/null
    mkdir -p "$DATA" && cp /tmp/synth/"$(basename "$DATA")"/*.jsonl "$DATA"/
fi
exec fedlora node start --dir "$NODE" --data "$DATA" --rank "$RANK"
