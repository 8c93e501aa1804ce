#!/bin/sh
# The aggregation server of the compose demo: create the federation once, invite the demo's two
# nodes by writing their tokens into a shared folder (in real life: a message to each node's
# admin), then run the server in the foreground.
set -eu
FED=${FED:-/fed} TOKENS=${TOKENS:-/tokens} HOST=${FEDLORA_HOST:-server}
if [ ! -f "$FED/federation.json" ]; then
    fedlora server init --dir "$FED" --host "$HOST"
fi
fedlora server start --dir "$FED" &
SERVER=$!
trap 'kill -TERM "$SERVER"; wait "$SERVER"' TERM INT
for name in hospital-a bank-b; do
    if [ ! -s "$TOKENS/$name" ]; then
        until fedlora server invite --dir "$FED" --name "$name" --ttl 1h > /tmp/invite 2>/dev/null; do
            sleep 1
        done
        tail -n 1 /tmp/invite > "$TOKENS/$name"
    fi
done
wait "$SERVER"
