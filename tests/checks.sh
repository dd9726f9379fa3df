# checks.sh: the harness the shell tests source: a scratch directory removed on exit, counted
# pass/fail lines ("ok - ..." / "not ok - ..."), and checks_done to print the tally and set the status.
#   suite=cli; . "$(dirname "$0")/checks.sh"
tmp=$(mktemp -d "${TMPDIR:-/tmp}/ddpm-${suite:-test}.XXXXXX") || exit 1
trap 'rm -rf "$tmp"' EXIT
trap 'exit 130' INT TERM

failed=0
checks=0
pass() {
    checks=$((checks + 1))
    echo "ok - $*"
}
fail() {
    checks=$((checks + 1))
    failed=$((failed + 1))
    echo "not ok - $*"
}
# show FILE: a file's content on one line (for messages)
show() { tr '\n' '|' <"$1" | cut -c1-400; }
# checks_done: the tally; the status is non-zero when a check failed
checks_done() {
    echo "${suite:-test}: $checks checks, $failed failed"
    [ "$failed" -eq 0 ]
}
