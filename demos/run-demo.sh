#!/usr/bin/env bash
# run-demo.sh: the aaproxy demo pair, side by side. Starts aa-server on a
# private ipc:// address with a JSON event log, then runs aa-client for an
# echo, a count with progress, and the three cancellation timelines; after
# each of those it prints the server's log lines for that op, so that what
# each side saw can be compared. docs/demo.md explains the output.
#
#   demos/run-demo.sh [BUILD_DIR]     (default ./build)
set -euo pipefail

build=${1:-./build}
server_bin=$build/demos/aa-server
client_bin=$build/demos/aa-client
for b in "$server_bin" "$client_bin"; do
	if [[ ! -x $b ]]; then
		echo "run-demo: $b not found; build first (cmake --build $build)" >&2
		exit 1
	fi
done

dir=$(mktemp -d "${TMPDIR:-/tmp}/aa-demo.XXXXXX")
url="ipc://$dir/aa.sock"
log="$dir/server.log"
server_pid=

cleanup() {
	if [[ -n $server_pid ]] && kill -0 "$server_pid" 2>/dev/null; then
		kill -TERM "$server_pid" 2>/dev/null || true
		wait "$server_pid" 2>/dev/null || true
	fi
	rm -rf "$dir"
}
trap cleanup EXIT

if [[ -t 1 ]]; then
	bold=$'\e[1m' dim=$'\e[2m' off=$'\e[0m'
else
	bold='' dim='' off=''
fi

heading() {
	printf '\n%s== %s%s\n' "$bold" "$*" "$off"
}

client() {
	"$client_bin" --dial "$url" "$@"
}

# field NAME JSON: the value of a number field of a one-line JSON object.
field() {
	sed -n "s/.*\"$1\":\\([0-9][0-9]*\\).*/\\1/p" <<<"$2"
}

# server_lines JSON_LINE [WAIT]: the server's log lines for the op that
# the client's JSON line names (same op id, same connection id). With
# WAIT, first wait (up to 2 s) until the op's reply was sent or dropped:
# the server logs that after the client may already have exited.
server_lines() {
	local op conn key i
	op=$(field op "$1")
	conn=$(field client "$1")
	key="\"op\":$op,\"client\":$conn,"
	if [[ ${2:-} == wait ]]; then
		for ((i = 0; i < 100; i++)); do
			if grep -F "$key" "$log" |
				grep -Eq '"event":"(reply_sent|reply_dropped)"'; then
				break
			fi
			sleep 0.02
		done
		# The compensation hook runs right after the reply.
		sleep 0.02
	fi
	echo "${dim}server log for op $op of client $conn:${off}"
	if ! grep -F "$key" "$log" | sed 's/^/  /'; then
		echo "  (no line: the server never heard of this op)"
	fi
}

heading "aa-server on $url (log: JSON, one event a line)"
"$server_bin" --listen "$url" --log "$log" &
server_pid=$!
for ((i = 0; ; i++)); do
	if client call echo ping >/dev/null 2>&1; then
		break
	fi
	if ((i == 50)) || ! kill -0 "$server_pid" 2>/dev/null; then
		echo "run-demo: the server did not answer" >&2
		exit 1
	fi
	sleep 0.05
done

heading "echo: a call that completes (Start and Complete cross the wire)"
echo "\$ aa-client call echo 'hello, async-async'"
client call echo 'hello, async-async'

heading "count 10: ten Progress messages, then the result"
echo "\$ aa-client call count 10"
if [[ -t 2 ]] && command -v script >/dev/null; then
	# A terminal for the client's stderr, so that it draws its bar.
	script -qec "$(printf '%q ' "$client_bin" --dial "$url" call count 10)" \
		/dev/null
else
	client call count 10
fi

heading "timeline 1, pre-submit: cancelled before Start was sent"
echo "\$ aa-client --json call sleep 1000 --cancel-before-submit"
line=$(client --json call sleep 1000 --cancel-before-submit)
echo "$line"
server_lines "$line"

heading "timeline 2, in flight: cancelled 50 ms after the call"
echo "\$ aa-client --json call sleep 1000 --cancel-after-ms 50"
line=$(client --json call sleep 1000 --cancel-after-ms 50)
echo "$line"
server_lines "$line" wait

heading "timeline 3, the server completes anyway: spin ignores the cancel"
# The client reports CANCELED at once; the server's late Complete says
# "completed", and its compensation hook runs. (The already-complete
# timeline proper, a Complete that arrived but was not yet handed over, is
# a window of microseconds: tests/test_client.c forces it with checkpoints.)
echo "\$ aa-client --json call spin 100 --cancel-after-ms 20 --settle-ms 500"
line=$(client --json call spin 100 --cancel-after-ms 20 --settle-ms 500)
echo "$line"
server_lines "$line" wait

heading "a failure and a deadline (exit status 1 each)"
echo "\$ aa-client call fail 7"
client call fail 7 || echo "${dim}(exit status $?)${off}"
echo "\$ aa-client call sleep 1000 --deadline-ms 50"
client call sleep 1000 --deadline-ms 50 || echo "${dim}(exit status $?)${off}"

heading "stopping the server (SIGTERM)"
kill -TERM "$server_pid"
wait "$server_pid"
server_pid=
echo "done: client and server name each op by the same op and client ids."

# The already-complete timeline forced deterministically by aa-replay
# (docs/replay.md): the four-column table of a real run. Self-contained.
replay_bin=$build/demos/replay/aa-replay
scenario=$(dirname "${BASH_SOURCE[0]}")/scenarios/already_complete.aa
if [[ -x $replay_bin && -f $scenario ]]; then
	echo
	echo "${bold}== aa-replay: the already-complete race, replayed" \
		"from demos/scenarios/already_complete.aa ==${off}"
	"$replay_bin" "$scenario"
fi
