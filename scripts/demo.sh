#!/usr/bin/env bash
# Demo of herd's main job: a generated stream of CPU-heavy events, some of them nasty, through a
# pool of herd-chaos workers. Prints a sample of the records and a count by outcome.
set -euo pipefail
cd "$(dirname "$0")/.."

N=${N:-20000}
WORKERS=${WORKERS:-$(nproc)}

cargo build --release --quiet --bins
herd=target/release/herd
chaos=target/release/herd-chaos

# Mostly small CPU-bound work, with a few of every failure herd-chaos can inject.
gen() {
    awk -v n="$N" 'BEGIN {
        for (i = 0; i < n; i++) {
            if (i % 5000 == 1)      print "{\"op\":\"crash\"}";
            else if (i % 5000 == 2) print "{\"op\":\"panic\"}";
            else if (i % 5000 == 3) print "{\"op\":\"flaky\",\"fails\":1}";
            else if (i % 5000 == 4) print "this line is not an event";
            else if (i % 100 == 0)  print "{\"op\":\"spin\",\"ms\":2}";
            else                    printf "{\"op\":\"square\",\"n\":%d}\n", i;
        }
    }'
}

out=$(mktemp)
trap 'rm -f "$out"' EXIT
echo "herd run -w $WORKERS --timeout 5s -- herd-chaos   ($N events)"
start=$(date +%s.%N)
gen | "$herd" run -w "$WORKERS" --timeout 5s -- "$chaos" >"$out"
end=$(date +%s.%N)

echo
echo "first records:"
head -n 5 "$out" | sed 's/^/  /'
echo "one of each error:"
for kind in crashed failed; do
    grep -m1 "\"kind\":\"$kind\"" "$out" | sed 's/^/  /' || true
done
echo
echo "records: $(wc -l <"$out") for $N events"
echo "  ok:      $(grep -c '"ok":true' "$out" || true)"
for kind in failed crashed timeout protocol rejected shutdown; do
    c=$(grep -c "\"kind\":\"$kind\"" "$out" || true)
    [ "$c" = 0 ] || printf '  %-8s %s\n' "$kind:" "$c"
done
awk -v s="$start" -v e="$end" -v n="$N" 'BEGIN { printf "elapsed: %.2fs (%.0f events/s)\n", e - s, n / (e - s) }'
