#!/usr/bin/env bash
# Events from MQTT, records back over MQTT, through herd daemons sharing one JetStream consumer.
#
# An MQTT client publishes events to the topic herd/events on the NATS server's MQTT listener;
# the JetStream stream HERD captures the subject herd.events (MQTT's "/" is NATS's "."); two
# herd daemons share its durable consumer, and each record they publish to herd.results reaches
# an MQTT subscriber of herd/results. Adding a daemon adds capacity: each event is still
# processed by one of them, and gets one record.
#
# Needs nats-server (Debian: nats-server) and mosquitto_pub/mosquitto_sub (Debian:
# mosquitto-clients). Run from the repository after `cargo build --release`:
#   examples/mqtt/run.sh            # 1000 events; the records on stdout
# Settings (environment): HERD, WORKER, NATS_SERVER, NATS_PORT (4222), MQTT_PORT (1883),
# EVENTS (1000), WORKDIR (a new temp dir). Everything listens on 127.0.0.1 only.
set -euo pipefail
cd "$(dirname "$0")/../.."
HERD=${HERD:-target/release/herd}
WORKER=${WORKER:-target/release/herd-chaos}
NATS_SERVER=${NATS_SERVER:-nats-server}
NATS_PORT=${NATS_PORT:-4222}
MQTT_PORT=${MQTT_PORT:-1883}
EVENTS=${EVENTS:-1000}
WORKDIR=${WORKDIR:-$(mktemp -d)}
for tool in "$NATS_SERVER" mosquitto_pub mosquitto_sub "$HERD" "$WORKER"; do
    command -v "$tool" >/dev/null || { echo "run.sh: $tool not found" >&2; exit 1; }
done

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

# waits up to $2 seconds for the command $1 to succeed
until_ok() {
    local deadline=$((SECONDS + $2))
    until eval "$1"; do
        [ "$SECONDS" -lt "$deadline" ] || { echo "run.sh: timed out waiting for: $1" >&2; exit 1; }
        sleep 0.1
    done
}

# 1. The server: JetStream (herd's streams) and an MQTT listener (which needs a server name).
cat > "$WORKDIR/nats.conf" <<CONF
server_name: herd_example
listen: 127.0.0.1:$NATS_PORT
jetstream { store_dir: "$WORKDIR/store" }
mqtt { listen: 127.0.0.1:$MQTT_PORT }
CONF
"$NATS_SERVER" -c "$WORKDIR/nats.conf" 2>"$WORKDIR/nats.log" &
pids+=($!)
until_ok "(exec 3<>/dev/tcp/127.0.0.1/$MQTT_PORT) 2>/dev/null" 30

# 2. Two daemons on the same consumer (the first creates the streams and the consumer).
for i in 1 2; do
    "$HERD" serve --control "$WORKDIR/herd-$i.sock" -w 1 --log-format json \
        --log-file "$WORKDIR/herd-$i.log" --nats "nats://127.0.0.1:$NATS_PORT" \
        -- "$WORKER" &
    pids+=($!)
    until_ok "grep -q 'JetStream consumer bound' '$WORKDIR/herd-$i.log' 2>/dev/null" 60
done

# 3. An MQTT subscriber for the records; -d prints SUBACK once it is subscribed (stdbuf:
#    line by line, not when its buffer fills).
stdbuf -oL mosquitto_sub -h 127.0.0.1 -p "$MQTT_PORT" -t herd/results -C "$EVENTS" -W 120 -d \
    >"$WORKDIR/sub.out" &
sub=$!
pids+=("$sub")
until_ok "grep -qs SUBACK '$WORKDIR/sub.out'" 30

# 4. The events, one MQTT message per line, QoS 1 (stored by the server before it answers).
seq 1 "$EVENTS" | sed 's/.*/{"op":"square","n":&}/' |
    mosquitto_pub -h 127.0.0.1 -p "$MQTT_PORT" -t herd/events -q 1 -l

wait "$sub"
grep '^{' "$WORKDIR/sub.out"
