#!/usr/bin/env bash
# Demo of herd's main job: a generated stream of CPU-heavy events, some of them nasty, through a
# pool of herd-chaos workers. Prints a sample of the records and what happened to every event;
# herd's own log (the injected crashes and panics as the workers report them) goes to a file.
set -euo pipefail
cd "$(dirname "$0")/.."

N=${N:-20000}
WORKERS=${WORKERS:-$(nproc)}
out_dir=target/demo
records=$out_dir/records.jsonl
log=$out_dir/herd.log

echo "==> building herd and herd-chaos (release; the first build takes several minutes)"
cargo build --release --bins
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
count() { grep -c "$1" "$records" || true; }

mkdir -p "$out_dir"
: >"$log"
echo
echo "==> herd run -w $WORKERS --timeout 5s -- herd-chaos   ($N events, a few of them nasty)"
start=$(date +%s.%N)
gen | "$herd" run -w "$WORKERS" --timeout 5s --log-file "$log" -- "$chaos" >"$records"
end=$(date +%s.%N)

echo
echo "The first records (one JSON line per event, in the order they finished):"
head -n 3 "$records" | sed 's/^/  /'
echo "One record of each kind of failure:"
for kind in failed crashed; do
    grep -m1 "\"kind\":\"$kind\"" "$records" | sed 's/^/  /' || true
done

total=$(wc -l <"$records")
ok=$(count '"ok":true')
retried=$(grep '"ok":true' "$records" | grep -vc '"attempts":1,' || true)
echo
awk -v s="$start" -v e="$end" -v n="$N" -v w="$WORKERS" 'BEGIN {
    printf "What happened: %d events through %d worker processes in %.1f s (%.0f events/s).\n",
        n, w, e - s, n / (e - s) }'
echo "Every event got exactly one record ($total records for $N events, in $records):"
printf '  %-9s %7s  %s\n' ok "$ok" "answered ($retried of them after a retry: the flaky ones)"
printf '  %-9s %7s  %s\n' failed "$(count '"kind":"failed"')" \
    "the worker reported an error: a handler that panicked, a line that is not JSON"
printf '  %-9s %7s  %s\n' crashed "$(count '"kind":"crashed"')" \
    "the event killed its worker on every attempt; herd restarted the worker each time"
for kind in timeout protocol rejected shutdown; do
    c=$(count "\"kind\":\"$kind\"")
    [ "$c" = 0 ] || printf '  %-9s %7s\n' "$kind" "$c"
done
echo "The crashes and panics were injected on purpose: herd replaced every dead worker and"
echo "carried on. Its log ($(wc -l <"$log") lines, the workers' panic messages among them): $log"
[ "$total" = "$N" ]
