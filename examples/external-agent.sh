#!/bin/sh
# The heartbeat agent of an external workspace, in POSIX sh and curl. It renews the
# Lease named after the Workspace (creating it the first time) every TEND_INTERVAL
# seconds. Run it on the machine as the ServiceAccount of examples/external-agent.yaml:
#
#   TEND_API=https://my-cluster.example.com:6443 \
#   TEND_TOKEN="$(kubectl create token carol-laptop-agent -n default --duration 24h)" \
#   TEND_CA=/etc/tend/cluster-ca.crt \
#   ./external-agent.sh carol-laptop default
#
# TEND_INTERVAL (default 30) must be well within the Workspace's
# heartbeatTimeoutSeconds (default 90). TEND_HOLDER names the machine (default: its
# hostname). TEND_ONCE=1 sends one heartbeat and exits with its outcome. tend compares
# the renewal time with its own clock, so keep this machine's clock in sync (NTP).
set -eu

ws=${1:?usage: external-agent.sh WORKSPACE [NAMESPACE]}
ns=${2:-default}
interval=${TEND_INTERVAL:-30}
holder=${TEND_HOLDER:-$(hostname)}
leases="${TEND_API:?set TEND_API to the API server URL}/apis/coordination.k8s.io/v1/namespaces/$ns/leases"
: "${TEND_TOKEN:?set TEND_TOKEN to a token of the agent ServiceAccount}"

# call METHOD URL CONTENT-TYPE BODY: prints the HTTP status (000 if unreachable).
call() {
    set -- "$@" --silent --max-time 20 --output /dev/null --write-out '%{http_code}'
    if [ -n "${TEND_CA:-}" ]; then set -- "$@" --cacert "$TEND_CA"; fi
    method=$1 url=$2 type=$3 body=$4
    shift 4
    curl "$@" --header "Authorization: Bearer $TEND_TOKEN" --header "Content-Type: $type" \
        --request "$method" --data "$body" "$url" || true
}

now() { date -u +%Y-%m-%dT%H:%M:%S.000000Z; }

# A label value holds at most 63 characters; without the label tend still reads the
# Lease, only later.
labels=
if [ "${#ws}" -le 63 ]; then labels="\"labels\":{\"tend.dev/workspace\":\"$ws\"},"; fi

while :; do
    status=$(call PATCH "$leases/$ws" application/merge-patch+json \
        "{\"spec\":{\"holderIdentity\":\"$holder\",\"renewTime\":\"$(now)\"}}")
    if [ "$status" = 404 ]; then
        status=$(call POST "$leases" application/json \
            "{\"apiVersion\":\"coordination.k8s.io/v1\",\"kind\":\"Lease\",\"metadata\":{$labels\"name\":\"$ws\"},\"spec\":{\"holderIdentity\":\"$holder\",\"leaseDurationSeconds\":$interval,\"renewTime\":\"$(now)\"}}")
    fi
    case $status in
        2??) ok=1 ;;
        *) ok=0; echo "heartbeat for $ns/$ws failed: HTTP $status" >&2 ;;
    esac
    if [ -n "${TEND_ONCE:-}" ]; then
        [ "$ok" = 1 ]
        exit
    fi
    sleep "$interval"
done
