#!/bin/sh
# The create-datastores one-shot of docker-compose.yml (grpcurl's alpine image, so plain POSIX sh):
# waits until netsyncd serves, then registers the two simulated devices as datastores through the
# API, as a user would with grpcurl. netsyncd has reflection, so grpcurl needs no .proto files.
#
# Running it again is harmless: the database outlives the containers (a named volume), so on a
# second `docker compose up` the datastores exist already, and AlreadyExists counts as done.
set -eu

NETSYNCD=${NETSYNCD:-netsyncd:50051}
# Put before each datastore's name (the replicas profile's one-shot sets it).
NAME_PREFIX=${NAME_PREFIX:-}

# netsyncd binds its port before it opens the database and reloads the stored datastores, so a
# connection can succeed long before it answers: each check has its own deadline, and only
# SERVING for the netsync.v1.NetSync service (not NOT_SERVING, not a timeout) counts.
wait_serving() {
	tries=0
	until grpcurl -plaintext -max-time 3 -d '{"service": "netsync.v1.NetSync"}' \
		"$NETSYNCD" grpc.health.v1.Health/Check 2>/dev/null | grep -q '"SERVING"'; do
		tries=$((tries + 1))
		if [ "$tries" -ge 60 ]; then
			echo "netsyncd at $NETSYNCD is not SERVING after $tries tries" >&2
			return 1
		fi
		sleep 1
	done
	echo "netsyncd at $NETSYNCD is SERVING"
}

# create NAME ADDRESS: one datastore for the simulated device at ADDRESS. The devices require the
# credentials that docker-compose.yml gives them, over plaintext on the compose network, which
# netsyncd refuses unless allowInsecureCredentials says so (a lab); PROTO encoding is the cheapest
# to decode.
create() {
	body=$(printf '{"datastore": {
	  "name": "%s",
	  "target": {"address": "%s", "encoding": "ENCODING_PROTO",
	             "credentials": {"username": "admin", "password": "admin"},
	             "allowInsecureCredentials": true},
	  "sync": {"mode": "SYNC_MODE_ON_CHANGE", "paths": ["/"], "commitInterval": "1s"}}}' "$1" "$2")
	if out=$(grpcurl -plaintext -max-time 10 -d "$body" "$NETSYNCD" \
		netsync.v1.NetSync/CreateDatastore 2>&1); then
		echo "created datastore $1:"
		echo "$out"
	elif echo "$out" | grep -q 'AlreadyExists'; then
		echo "datastore $1 exists already"
	else
		echo "cannot create datastore $1:" >&2
		echo "$out" >&2
		return 1
	fi
}

wait_serving
create "${NAME_PREFIX}device1" device1:57400
create "${NAME_PREFIX}device2" device2:57400
