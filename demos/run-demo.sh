#!/usr/bin/env bash
# run-demo.sh: the aaproxy demo pair, side by side. Starts aa-server on a
# private ipc:// address with a JSON event log, then runs aa-client for an
# echo, a count with progress, and the three cancellation timelines (the
# third against a second server that holds its replies 300 ms, a slow
# link, so that the Complete and the Cancel cross); after each of those it
# prints the server's log lines for that op, so that what each side saw
# can be compared. docs/demo.md explains the output.
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
slow_url="ipc://$dir/slow.sock"
slow_log="$dir/slow.log"
server_pid=
slow_pid=

cleanup() {
	local pid
	for pid in "$server_pid" "$slow_pid"; do
		if [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null; then
			kill -TERM "$pid" 2>/dev/null || true
			wait "$pid" 2>/dev/null || true
		fi
	done
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

# server_lines JSON_LINE [WAIT [LOG]]: the server's log lines for the op
# that the client's JSON line names (same op id, same connection id). With
# WAIT, first wait (up to 2 s) until the op's reply was sent or dropped:
# the server logs that after the client may already have exited.
server_lines() {
	local op conn key i log=${3:-$log}
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

# wait_up URL PID: wait until the server at URL answers an echo.
wait_up() {
	local i
	for ((i = 0; ; i++)); do
		if "$client_bin" --dial "$1" call echo ping >/dev/null 2>&1; then
			return
		fi
		if ((i == 50)) || ! kill -0 "$2" 2>/dev/null; then
			echo "run-demo: the server at $1 did not answer" >&2
			exit 1
		fi
		sleep 0.05
	done
}

heading "aa-server on $url (log: JSON, one event a line)"
"$server_bin" --listen "$url" --log "$log" &
server_pid=$!
wait_up "$url" "$server_pid"

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

heading "in flight, the server completes anyway: spin ignores the cancel"
# The client reports CANCELED at once; the server received the Cancel
# while spin ran, completed anyway, and its late Complete says so
# ("completed"); the compensation hook runs.
echo "\$ aa-client --json call spin 100 --cancel-after-ms 20 --settle-ms 500"
line=$(client --json call spin 100 --cancel-after-ms 20 --settle-ms 500)
echo "$line"
server_lines "$line" wait

heading "timeline 3, already complete: the Complete and the Cancel cross"
# A second server holds every Complete 300 ms, as a slow link would. Its
# sleep 50 finishes long before the client cancels at 150 ms; the Cancel
# reaches it "after completion", the late Complete says so, and the
# client, CANCELED at once, classifies it already_complete.
echo "\$ aa-server --reply-delay-ms 300 &"
"$server_bin" --listen "$slow_url" --log "$slow_log" --reply-delay-ms 300 &
slow_pid=$!
wait_up "$slow_url" "$slow_pid"
echo "\$ aa-client --json call sleep 50 --cancel-after-ms 150 --settle-ms 1000"
line=$("$client_bin" --dial "$slow_url" --json call sleep 50 \
	--cancel-after-ms 150 --settle-ms 1000)
echo "$line"
server_lines "$line" wait "$slow_log"

heading "a typed call: aa.demo.Demo/Echo of demos/demo.proto, JSON in and out"
echo "\$ aa-client call aa.demo.Demo/Echo '{\"text\": \"typed\"}'"
client call aa.demo.Demo/Echo '{"text": "typed"}'

heading "a failure and a deadline (exit status 1 each)"
echo "\$ aa-client call fail 7"
client call fail 7 || echo "${dim}(exit status $?)${off}"
echo "\$ aa-client call sleep 1000 --deadline-ms 50"
client call sleep 1000 --deadline-ms 50 || echo "${dim}(exit status $?)${off}"

heading "stopping the servers (SIGTERM)"
kill -TERM "$server_pid" "$slow_pid"
wait "$server_pid" "$slow_pid"
server_pid= slow_pid=
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
