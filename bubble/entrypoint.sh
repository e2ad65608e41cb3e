#!/bin/sh
# The bubble's entrypoint: runs inside the Apptainer instance hpk-bubble
# starts (user + network namespace, root inside), after which slirp4netns
# attaches tap0. It turns forwarding on, waits for tap0, gives it HOST_IP/32
# (flanneld's public address must be local), starts etcd and writes
# flannel's network config on the controller, starts flanneld, switches tx
# checksum offload off on flannel.1, then runs the given command.
#
# Environment (hpk-bubble sets the first five):
#   HOST_IP          this host's address, as the other nodes reach it
#   ETCD_IP          the controller's host address
#   HPK_ROLE         controller | node
#   VXLAN_PORT       flannel's VXLAN UDP port (default 8472)
#   HPK_BUBBLE_ID    the bubble's number (names etcd's member)
#   FLANNEL_NETWORK  the cluster network (default 10.244.0.0/16)
#   FLANNEL_SUBNET_LEN  each bubble's share (default 24)
#   ETCD_DATA_DIR    etcd's data (default /tmp/hpk-etcd)
#   HPK_WAIT         seconds to wait for tap0, etcd and flannel.1 (default 60)
set -eu

: "${HOST_IP:?HOST_IP is not set: start the bubble with hpk-bubble}"
: "${HPK_ROLE:=node}"
: "${ETCD_IP:=$HOST_IP}"
: "${VXLAN_PORT:=8472}"
: "${HPK_BUBBLE_ID:=0}"
: "${FLANNEL_NETWORK:=10.244.0.0/16}"
: "${FLANNEL_SUBNET_LEN:=24}"
: "${ETCD_DATA_DIR:=/tmp/hpk-etcd}"
: "${HPK_WAIT:=60}"

say() {
	echo "hpk-entrypoint: $*" >&2
}

die() {
	say "error: $*"
	exit 1
}

# wait_for_link NAME: returns once link NAME exists, fails after HPK_WAIT
# seconds. Link events (ip monitor) wake the check at once; ticks, one soon
# after the monitor starts and then one a second, cover a link that appeared
# before the monitor was listening. GNU timeout ends its whole process
# group, monitor and ticker included.
wait_for_link() {
	if ip link show "$1" >/dev/null 2>&1; then
		return 0
	fi
	say "waiting for $1"
	fifo=$(mktemp -u "${TMPDIR:-/tmp}/hpk-link.XXXXXX")
	mkfifo "$fifo"
	timeout "$HPK_WAIT" sh -c 'ip monitor link &
		sleep 0.2 2>/dev/null || sleep 1
		while echo tick; do sleep 1; done' >"$fifo" 2>/dev/null &
	feeder=$!
	found=1
	while read -r _event; do
		if ip link show "$1" >/dev/null 2>&1; then
			found=0
			break
		fi
	done <"$fifo"
	kill "$feeder" 2>/dev/null || true
	wait "$feeder" 2>/dev/null || true
	rm -f "$fifo"
	if [ "$found" -ne 0 ] && ! ip link show "$1" >/dev/null 2>&1; then
		return 1
	fi
	return 0
}

# Bubble traffic to other bubbles' containers is routed, not bridged.
echo 1 >/proc/sys/net/ipv4/ip_forward

wait_for_link tap0 || die "tap0 did not appear within ${HPK_WAIT}s: is slirp4netns attached?"
ip addr replace "$HOST_IP/32" dev tap0

etcd_endpoint="http://$ETCD_IP:2379"
if [ "$HPK_ROLE" = controller ]; then
	say "starting etcd"
	etcd --name "hpk-$HPK_BUBBLE_ID" --data-dir "$ETCD_DATA_DIR" \
		--listen-client-urls http://0.0.0.0:2379 \
		--advertise-client-urls "$etcd_endpoint" \
		--listen-peer-urls http://127.0.0.1:2380 &
	# etcd runs here: talk to it directly rather than round the forward.
	etcd_endpoint=http://127.0.0.1:2379
	config=$(printf '{"Network": "%s", "SubnetLen": %s, "Backend": {"Type": "vxlan", "Port": %s}}' \
		"$FLANNEL_NETWORK" "$FLANNEL_SUBNET_LEN" "$VXLAN_PORT")
	# --dial-timeout makes etcdctl wait (bounded) for etcd to listen.
	etcdctl --endpoints "$etcd_endpoint" --dial-timeout "${HPK_WAIT}s" \
		put /coreos.com/network/config "$config" >/dev/null ||
		die "could not write flannel's config to etcd"
fi

say "starting flanneld"
flanneld --iface tap0 --public-ip "$HOST_IP" --ip-masq \
	--etcd-endpoints "$etcd_endpoint" &

# As the original launcher did: with tx checksum offload on flannel.1, VXLAN
# packets can leave with wrong UDP checksums once they are NATed (a known
# kernel and flannel problem) and the far end drops them; compute them here.
wait_for_link flannel.1 || die "flanneld made no flannel.1 within ${HPK_WAIT}s"
ethtool -K flannel.1 tx off >/dev/null
say "flannel is up"

if [ $# -gt 0 ]; then
	exec "$@"
fi
if [ -t 0 ]; then
	exec /bin/sh
fi
# An instance has no terminal: live as long as flanneld (and etcd) do.
wait
