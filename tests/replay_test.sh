#!/bin/bash
# SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
# Runs //tools:replay on the recorded trace and on broken inputs, checking its
# exit status and what it prints.
set -u

REPLAY="tools/replay"
DATA="tests/data/qemu-q35-linux61"
TMP="${TEST_TMPDIR:-$(mktemp -d)}"
failures=0

fail() {
  echo "FAIL: $*" >&2
  failures=$((failures + 1))
}

# run NAME EXPECTED_RC ARGS...: runs the tool, output in $TMP/NAME.{out,err}.
run() {
  local name="$1" want="$2"
  shift 2
  "$REPLAY" "$@" >"$TMP/$name.out" 2>"$TMP/$name.err"
  local rc=$?
  if [[ "$want" == "nonzero" ]]; then
    [[ $rc -ne 0 ]] || fail "$name: exit 0, expected non-zero"
  elif [[ $rc -ne $want ]]; then
    fail "$name: exit $rc, expected $want"
  fi
  echo "--- $name (exit $rc)"
  cat "$TMP/$name.out" "$TMP/$name.err"
}

expect_in() {  # expect_in NAME FILE TEXT
  grep -qF -- "$3" "$2" || fail "$1: '$3' not in $(basename "$2")"
}

# 1. The recorded trace, with the default flags (the data under tests/data):
#    one thread per vCPU, nothing misrouted.
run real 0
expect_in real "$TMP/real.out" "accesses: 410519"
expect_in real "$TMP/real.out" "routed to the named device: 381387"
expect_in real "$TMP/real.out" "\"no device\" expected: 29132"
expect_in real "$TMP/real.out" "\"no device\" unexpected: 0"
expect_in real "$TMP/real.out" "misrouted: 0"
expect_in real "$TMP/real.out" "threads: 5 (one per vCPU)"

# 2. Round-robin over 3 threads, on the first 20,000 rows as a plain
#    (not gzip'd) file.
gzip -dc "$DATA/trace.tsv.gz" | head -n 20002 >"$TMP/head.tsv"
run head 0 --map "$DATA/devices.tsv" --trace "$TMP/head.tsv" --threads 3
expect_in head "$TMP/head.out" "accesses: 20000"
expect_in head "$TMP/head.out" "threads: 3 (rows round-robin)"
expect_in head "$TMP/head.out" "misrouted: 0"

# 3. A map missing one device (rtc, which the trace reads on its 3rd row):
#    the trace names a device the map lacks, so the run fails.
grep -v -P '\trtc$' "$DATA/devices.tsv" >"$TMP/missing.tsv"
[[ $(wc -l <"$TMP/missing.tsv") -eq $(($(wc -l <"$DATA/devices.tsv") - 1)) ]] ||
  fail "missing: the map did not lose exactly one line"
run missing nonzero --map "$TMP/missing.tsv"
expect_in missing "$TMP/missing.err" "trace.tsv.gz:5: region 'rtc' is not a device of the map"

# 4. A malformed map: line 12 has a bad hex address.
sed '12s/.*/pio\t0x8g\t0x8f\tdma-page/' "$DATA/devices.tsv" >"$TMP/malformed.tsv"
run malformed_map 2 --map "$TMP/malformed.tsv"
expect_in malformed_map "$TMP/malformed_map.err" "malformed.tsv:12: bad hex address '0x8g'"

# 5. A malformed trace: line 4 has 6 fields.
printf '# header\n0\tpio\tw\t0x70\t1\t0x8f\trtc-index\n\n0\tpio\tr\t0x71\t1\t0x0\n' \
  >"$TMP/malformed_trace.tsv"
run malformed_trace 2 --trace "$TMP/malformed_trace.tsv"
expect_in malformed_trace "$TMP/malformed_trace.err" \
  "malformed_trace.tsv:4: expected 7 TAB-separated fields"

# 6. A missing file.
run no_file 2 --trace "$TMP/no-such-trace.tsv.gz"
expect_in no_file "$TMP/no_file.err" "no-such-trace.tsv.gz"

# 7. A row the map contradicts: '-' at the serial port, which the map
#    claims. The dispatcher routes it, so it counts as misrouted: exit 1.
printf '0\tpio\tw\t0x3f8\t1\t0x41\t-\n0\tpio\tw\t0x3f8\t1\t0x41\tserial\n' \
  >"$TMP/contradicted.tsv"
run contradicted 1 --trace "$TMP/contradicted.tsv"
expect_in contradicted "$TMP/contradicted.out" "misrouted: 1"
expect_in contradicted "$TMP/contradicted.out" "routed to the named device: 1"
expect_in contradicted "$TMP/contradicted.err" "row 0:"

# 8. The trace with device-map changes (BAR sizing, PCIe hotplug), ordered:
#    every access between the changes around it, nothing misrouted.
HP="tests/data/qemu-q35-hotplug"
run hotplug_ordered 0 --map "$HP/devices.tsv" --trace "$HP/trace.tsv.gz"
expect_in hotplug_ordered "$TMP/hotplug_ordered.out" "mode: ordered (one commit per burst)"
expect_in hotplug_ordered "$TMP/hotplug_ordered.out" "accesses: 410888"
expect_in hotplug_ordered "$TMP/hotplug_ordered.out" "routed to the named device: 380666"
expect_in hotplug_ordered "$TMP/hotplug_ordered.out" "\"no device\" expected: 30222 (3289 '-' rows, 26933 running past their range's end)"
expect_in hotplug_ordered "$TMP/hotplug_ordered.out" "\"no device\" unexpected: 0"
expect_in hotplug_ordered "$TMP/hotplug_ordered.out" "misrouted: 0"
expect_in hotplug_ordered "$TMP/hotplug_ordered.out" "writer: 356 changes in 89 commits, 0 failed"
expect_in hotplug_ordered "$TMP/hotplug_ordered.out" "destroyed while running: 0"
expect_in hotplug_ordered "$TMP/hotplug_ordered.out" "leaked: 0"
expect_in hotplug_ordered "$TMP/hotplug_ordered.out" "ns per access: "

# 9. Racing, one call per change, over 3 threads round-robin.
run hotplug_racing 0 --map "$HP/devices.tsv" --trace "$HP/trace.tsv.gz" \
  --mode=racing --commit=change --threads 3
expect_in hotplug_racing "$TMP/hotplug_racing.out" "mode: racing (one call per change)"
expect_in hotplug_racing "$TMP/hotplug_racing.out" "threads: 3 (rows round-robin)"
expect_in hotplug_racing "$TMP/hotplug_racing.out" "\"no device\" unexpected: 0"
expect_in hotplug_racing "$TMP/hotplug_racing.out" "misrouted: 0"
expect_in hotplug_racing "$TMP/hotplug_racing.out" "destroyed while running: 0"
expect_in hotplug_racing "$TMP/hotplug_racing.out" "leaked: 0"
expect_in hotplug_racing "$TMP/hotplug_racing.out" "latency of accesses overlapping a commit: "

# 10. Bad change rows and flags: exit 2, naming the file and line.
printf -- '-1\tmmio\tmap\t0xfe000000\t4096\t-\tbar\n-1\tmmio\tunmap\t0xfe000000\t16\t-\tbar\n' \
  >"$TMP/hp_bad_unmap.tsv"
run hp_bad_unmap 2 --map "$HP/devices.tsv" --trace "$TMP/hp_bad_unmap.tsv"
expect_in hp_bad_unmap "$TMP/hp_bad_unmap.err" "hp_bad_unmap.tsv:2: unmap of mmio [0xfe000000, 0xfe00000f] 'bar': no such range is live (the live range there is [0xfe000000, 0xfe000fff] of 'bar' (mapped at line 1))"
printf -- '-1\tmmio\tmap\t0xfed00000\t16\t-\tclash\n' >"$TMP/hp_overlap.tsv"
run hp_overlap 2 --map "$HP/devices.tsv" --trace "$TMP/hp_overlap.tsv"
expect_in hp_overlap "$TMP/hp_overlap.err" "hp_overlap.tsv:1: map of mmio [0xfed00000, 0xfed0000f] 'clash' overlaps the live range"
printf -- '-1\tmmio\tmap\t0xfe000000\t0\t-\tbar\n' >"$TMP/hp_size0.tsv"
run hp_size0 2 --map "$HP/devices.tsv" --trace "$TMP/hp_size0.tsv"
expect_in hp_size0 "$TMP/hp_size0.err" "hp_size0.tsv:1: bad size '0' in a map row"
run bad_mode 2 --map "$HP/devices.tsv" --trace "$HP/trace.tsv.gz" --mode=sloppy
expect_in bad_mode "$TMP/bad_mode.err" "--mode must be 'ordered' or 'racing', not 'sloppy'"
run bad_commit 2 --map "$HP/devices.tsv" --trace "$HP/trace.tsv.gz" --commit=all
expect_in bad_commit "$TMP/bad_commit.err" "--commit must be 'burst' or 'change', not 'all'"

if [[ $failures -ne 0 ]]; then
  echo "$failures check(s) failed" >&2
  exit 1
fi
echo "PASS"
