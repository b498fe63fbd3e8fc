#!/usr/bin/env bash
# A nemesis run with a history checker (issue 19 items 3 and 4; the engine is fdfs_testkit::nemesis, the same
# one the CI test `nemesis_short_run` runs for 60 s).
#
#   bash bench/nemesis.sh                 # 600 s, a random seed (printed)
#   bash bench/nemesis.sh 120 42          # 120 s of faults, seed 42 (a failing seed replays its fault schedule)
#
# A cluster of real processes, each in its own network namespace (2 trackers, 2 groups x 3 members, 2
# gateways; member 3 of each group on the FUSE power-cut simulator), clients uploading (raw, multipart,
# streamed, tus, the FastDFS door), downloading byte-checked, changing metadata and deleting, while faults drawn
# from the seed hit one node at a time: kill -9 and restart, SIGSTOP/SIGCONT, a node cut off, a member split
# from its group, a tracker cut off or restarted, a member's disk wiped, a power cut. Then everything is healed,
# the cluster must converge and the history is checked. Needs root (namespaces, FUSE) and iproute2.
#
# Exit status 0 only when every check holds. The markdown report (operations, faults injected, errors by kind,
# time to converge, failed checks) goes to $OUT (default target/nemesis/report-<seed>.md) and is printed.
#
# Knobs (environment): NEMESIS_OVERLAP=2 (faults held at once, each in its own group or role; 1: one at a
# time), NEMESIS_HANG_SECS=30 (a request longer than this is a hang), NEMESIS_BIG_MB=12 (streamed
# uploads), NEMESIS_POWER_CUTS=0 (no FUSE disks), OUT=path of the report.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

SECS=${1:-600}
SEED=${2:-$(od -An -N6 -tu8 /dev/urandom | tr -d ' ')}
mkdir -p target/nemesis
# Absolute: cargo runs the test in the package directory.
OUT=$(realpath -m "${OUT:-target/nemesis/report-$SEED.md}")
echo "nemesis: $SECS s, seed $SEED (replay: bash bench/nemesis.sh $SECS $SEED); report in $OUT"

# The test binary and the fdfs binary it starts (debug, as the tests run them).
cargo test -p fdfs --test it --no-run

export NEMESIS_SECS=$SECS NEMESIS_SEED=$SEED NEMESIS_REPORT=$OUT NEMESIS_OVERLAP=${NEMESIS_OVERLAP:-2}
status=0
cargo test -p fdfs --test it nemesis::nemesis_short_run -- --exact --nocapture || status=$?
if [[ -f $OUT ]]; then
    echo "----- report ($OUT) -----"
    cat "$OUT"
else
    echo "nemesis: no report written (the run broke before the check)" >&2
    [[ $status -ne 0 ]] || status=1
fi
exit "$status"
