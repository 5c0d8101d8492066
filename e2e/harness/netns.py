"""The chain test ground's network: one network namespace per simulated node, one per pod.

Why this exists (home-made, on purpose): there is no container runtime here, but the chain
suite (``e2e/chain/``) runs the real Ray processes of KWOK's pods. Ray binds several ports on
every interface (the dashboard agent's 52365, the metrics exporter, Serve's proxy on 8000 on
every node that hosts a replica), so two Ray nodes cannot share one network stack, and
EndpointSlices refuse loopback addresses, so KubeRay could not reach a head whose address is
127.x. A Kubernetes pod gets its own network namespace with its own address, on a node that has
its own network stack, bridge and packet filter; this module builds exactly that with iproute2:

* the whole test ground runs inside a network (and mount) namespace its runner created
  (``unshare -n -m``, see ``e2e/chain/run.sh``): only ``lo`` and the devices made here exist,
  so nothing can reach the host's networks, whatever address a process dials. That namespace
  (the "ground") plays the machine room: the control plane listens there, and the bridge
  ``k2f0`` (:data:`NODE_NETWORK`, the ground at :data:`GROUND_IP`) is the wire between nodes;
* :func:`add_node` makes a node: a network namespace ``k2n-<k>`` with its uplink ``eth0`` on
  that wire at ``10.243.0.<k>`` (the Node's ``InternalIP``), its own pod bridge ``k2t0`` holding
  the gateway of its pod range ``10.244.<k>.0/24`` (the Node's ``spec.podCIDR``, which KWOK
  hands pod IPs from), IP forwarding and ``bridge-nf-call-iptables`` on (so its iptables see
  bridged pod-to-pod packets, as on a node whose CNI bridges pods), and a route to every other
  node's pod range through that node's address (host-gateway routing, what flannel's host-gw
  or kube-router's routing do); the ground routes each pod range to its node too;
* :func:`add_pod` makes a network namespace per pod with a veth pair on its node's bridge (the
  node is the one whose range holds the IP), the pod's IP (KWOK's ``status.podIP``), a MAC
  derived from that IP (:func:`pod_mac`) and a default route through the node's gateway;
* the ``kubernetes`` Service address ``10.96.0.1`` is on the ground's ``lo`` (the apiserver
  listens on every address of the ground), reached by pods and nodes through their default route;
* :func:`inside` runs the calling thread in another network namespace (a node's, a pod's): the
  test ground reaches pods the way a kubelet does (from their node) or the way a workload does
  (from a pod), never from outside every node, where NetworkPolicies would rightly refuse it;
* :class:`HostsFile` is bind-mounted over ``/etc/hosts`` (in the private mount namespace only)
  and rewritten in place, so Services resolve to the pod addresses behind them (Go re-reads the
  file when its mtime changes, Python's resolver on every lookup).

Every function that changes the network refuses to run unless :func:`require_isolated` passes.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import ipaddress
import os
import socket
import subprocess
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

#: Every pod address of the ground; node ``k`` owns ``10.244.<k>.0/24``.
POD_CIDR = "10.244.0.0/16"
#: KWOK's ``--cidr``: only for pods on a node without ``spec.podCIDR``. Range 0 belongs to no
#: node, so such a pod gets an address no node routes (and :func:`add_pod` says so).
KWOK_CIDR = "10.244.0.1/24"
#: The wire between the nodes and the ground (node ``k`` at ``10.243.0.<k>``).
NODE_NETWORK = "10.243.0.0/24"
#: The ground's own address on that wire: what pods and nodes reach the ground at (the default
#: route of every node; a test's own servers, e.g. Redis, listen here).
GROUND_IP = "10.243.0.254"
#: The highest node index (a /24 each; the last address of a node's range is its gateway).
MAX_NODES = 250
#: ClusterIP of the ``kubernetes`` Service (first address of the harness's service range; the
#: apiserver's serving certificate carries it).
KUBERNETES_SERVICE_IP = "10.96.0.1"
FABRIC = "k2f0"
BRIDGE = "k2t0"
#: Environment variable the runner sets after entering its own namespaces.
ISOLATED_ENV = "K2T_CHAIN_NETNS"
#: The mount namespace the runner started in (``readlink /proc/self/ns/mnt`` before unshare).
OUTER_MNTNS_ENV = "K2T_OUTER_MNTNS"
_CLONE_NEWNET = 0x40000000


class NotIsolatedError(RuntimeError):
    """The caller is not inside a network namespace of its own."""


def _run(*argv: str) -> str:
    proc = subprocess.run(list(argv), capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc.stdout


def interfaces() -> list[str]:
    """Names of the network devices of the current namespace (``/proc/self/net/dev`` follows
    the caller's network namespace; ``/sys/class/net`` shows the one sysfs was mounted in)."""
    lines = Path("/proc/self/net/dev").read_text().splitlines()[2:]
    return sorted(line.split(":", 1)[0].strip() for line in lines if ":" in line)


def foreign_interfaces(names: Sequence[str]) -> list[str]:
    """Devices that this module did not make (anything but lo, the wire and node uplinks)."""
    return [n for n in names if n not in ("lo", FABRIC) and not n.startswith("k2u")]


def require_isolated() -> None:
    """Refuse to touch networking unless we run in a namespace the test ground created.

    Two checks: the runner's marker variable, and that no device exists besides the ones this
    module makes (a host namespace always has its uplink).
    """
    if os.environ.get(ISOLATED_ENV) != "1":
        raise NotIsolatedError(
            f"{ISOLATED_ENV}=1 is not set: run the chain suite through e2e/chain/run.sh, which "
            "enters its own network and mount namespaces"
        )
    foreign = foreign_interfaces(interfaces())
    if foreign:
        raise NotIsolatedError(f"this network namespace has foreign devices {foreign}")
    outer = os.environ.get(OUTER_MNTNS_ENV, "")
    if not outer or os.readlink("/proc/self/ns/mnt") == outer:
        raise NotIsolatedError(
            f"not in a private mount namespace (needed for /etc/hosts; {OUTER_MNTNS_ENV} is the "
            "runner's own, set before it unshares)"
        )


def setup_ground() -> None:
    """Loopback up, the wire between nodes with the ground's address, the kubernetes Service
    address on lo."""
    require_isolated()
    _run("ip", "link", "set", "lo", "up")
    if FABRIC not in interfaces():
        _run("ip", "link", "add", FABRIC, "type", "bridge")
        _run("ip", "addr", "add", f"{GROUND_IP}/{_prefix(NODE_NETWORK)}", "dev", FABRIC)
        _run("ip", "link", "set", FABRIC, "up")
    addrs = _run("ip", "-o", "addr", "show", "dev", "lo")
    if f" {KUBERNETES_SERVICE_IP}/" not in addrs:
        _run("ip", "addr", "add", f"{KUBERNETES_SERVICE_IP}/32", "dev", "lo")


def _prefix(cidr: str) -> int:
    return ipaddress.ip_network(cidr).prefixlen


# ------------------------------------------------------------------------------ nodes
@dataclass(frozen=True)
class NodeNet:
    """The network identity of simulated node number ``index`` (1-based)."""

    name: str
    index: int

    @property
    def ip(self) -> str:
        return str(ipaddress.ip_network(NODE_NETWORK)[self.index])

    @property
    def pod_cidr(self) -> str:
        return f"10.244.{self.index}.0/24"

    @property
    def gateway(self) -> str:
        return f"10.244.{self.index}.254"

    @property
    def netns(self) -> str:
        return f"k2n-{self.index}"

    @property
    def uplink(self) -> str:
        """The ground's end of the node's veth pair (the node's end is its ``eth0``)."""
        return f"k2u{self.index}"


def plan_nodes(names: Sequence[str]) -> list[NodeNet]:
    """Node numbers for ``names``: sorted, from 1, so a campus always maps the same way."""
    ordered = sorted(set(names))
    if len(ordered) > MAX_NODES:
        raise ValueError(f"{len(ordered)} nodes: the ground's address plan holds {MAX_NODES}")
    return [NodeNet(n, i) for i, n in enumerate(ordered, start=1)]


def node_netns_for_ip(ip: str) -> str:
    """The namespace of the node whose pod range holds ``ip`` (``10.244.<k>.x`` -> ``k2n-<k>``)."""
    addr = ipaddress.ip_address(ip)
    if addr not in ipaddress.ip_network(POD_CIDR):
        raise ValueError(f"{ip} is outside the pod network {POD_CIDR}")
    index = addr.packed[2]
    if not 1 <= index <= MAX_NODES:
        raise ValueError(f"{ip} is in no node's pod range (its node has no spec.podCIDR?)")
    return f"k2n-{index}"


def node_manifest_network(node: NodeNet) -> dict[str, object]:
    """What a node's manifest carries of its network: ``spec.podCIDR`` (KWOK hands its pods IPs
    from it, as from a range the node IPAM controller assigned) and its ``InternalIP`` (KWOK keeps
    an address that is there; kube-router finds its node's pods by ``status.hostIP``, which KWOK
    sets to it)."""
    return {
        "spec": {"podCIDR": node.pod_cidr, "podCIDRs": [node.pod_cidr]},
        "status": {
            "addresses": [
                {"type": "InternalIP", "address": node.ip},
                {"type": "Hostname", "address": node.name},
            ]
        },
    }


def _sysctl(netns: str, key: str, value: str) -> None:
    _run("ip", "netns", "exec", netns, "sysctl", "-q", "-w", f"{key}={value}")


def add_node(node: NodeNet, peers: Sequence[NodeNet]) -> Path:
    """Create node ``node``'s namespace (uplink, pod bridge, forwarding, routes to ``peers``'s
    pod ranges) and the ground's route to its pod range."""
    require_isolated()
    remove_node(node)
    ns = node.netns
    _run("ip", "netns", "add", ns)
    _run("ip", "link", "add", node.uplink, "type", "veth", "peer", "name", "eth0", "netns", ns)
    _run("ip", "link", "set", node.uplink, "master", FABRIC)
    _run("ip", "link", "set", node.uplink, "up")
    _run("ip", "-n", ns, "link", "set", "lo", "up")
    _run("ip", "-n", ns, "addr", "add", f"{node.ip}/{_prefix(NODE_NETWORK)}", "dev", "eth0")
    _run("ip", "-n", ns, "link", "set", "eth0", "up")
    _run("ip", "-n", ns, "link", "add", BRIDGE, "type", "bridge")
    _run("ip", "-n", ns, "addr", "add", f"{node.gateway}/24", "dev", BRIDGE)
    _run("ip", "-n", ns, "link", "set", BRIDGE, "up")
    _sysctl(ns, "net.ipv4.ip_forward", "1")
    # Per network namespace since Linux 5.3: bridged pod-to-pod packets pass this node's
    # iptables (kube-router's -m physdev --physdev-is-bridged rules), as on a real node.
    _sysctl(ns, "net.bridge.bridge-nf-call-iptables", "1")
    _run("ip", "-n", ns, "route", "add", "default", "via", GROUND_IP)
    for peer in peers:
        if peer.index != node.index:
            _run("ip", "-n", ns, "route", "replace", peer.pod_cidr, "via", peer.ip)
    _run("ip", "route", "replace", node.pod_cidr, "via", node.ip)
    return netns_path(ns)


def remove_node(node: NodeNet) -> None:
    """Delete the node's namespace (its pods' veths and its uplink go with it)."""
    if netns_path(node.netns).exists():
        subprocess.run(["ip", "netns", "del", node.netns], capture_output=True, check=False)
    subprocess.run(["ip", "route", "del", node.pod_cidr], capture_output=True, check=False)


# ------------------------------------------------------------------------------ pods
def netns_name(pod_uid: str) -> str:
    """Namespace name of a pod: short, stable, derived from its uid."""
    return "k2t-" + hashlib.sha256(pod_uid.encode()).hexdigest()[:10]


def netns_path(name: str) -> Path:
    return Path("/run/netns") / name


def _veth(name: str) -> str:
    return "k2v" + name.removeprefix("k2t-")[:10]  # <= 15 characters (IFNAMSIZ)


def pod_mac(ip: str) -> str:
    """The MAC of the pod with address ``ip``: ``02:42`` (locally administered, unicast) and the
    IPv4 address, the way Docker numbers its containers' interfaces.

    Why: KWOK hands a deleted pod's IP to the next pod at once (a replaced Ray head or worker
    usually gets its predecessor's address). With a random MAC per namespace, the other pods and
    the gateway keep the old pod's MAC in their neighbour caches for up to a minute (Linux's
    reachable time) and their packets to the new pod go nowhere: on the chain ground a new
    worker's TCP connection to the GCS was left half-open and a Serve replica hung in a GCS call
    for minutes after a head crash. One MAC per IP keeps every cached entry right.
    """
    packed = ipaddress.IPv4Address(ip).packed
    return "02:42:" + ":".join(f"{b:02x}" for b in packed)


def add_pod(name: str, ip: str) -> Path:
    """Create network namespace ``name`` with ``ip`` on its eth0, on the bridge of the node whose
    pod range holds ``ip``."""
    require_isolated()
    node_ns = node_netns_for_ip(ip)
    if not netns_path(node_ns).exists():
        raise RuntimeError(f"pod IP {ip} belongs to node namespace {node_ns}, which does not exist")
    gateway = str(ipaddress.ip_network(f"{ip}/24", strict=False)[254])
    if ip == gateway:
        raise ValueError(f"pod IP {ip} is its node's gateway")
    remove_pod(name)
    veth = _veth(name)
    _run("ip", "netns", "add", name)
    _run("ip", "-n", node_ns, "link", "add", veth, "type", "veth", "peer", "name", "eth0",
         "netns", name)  # fmt: skip
    _run("ip", "-n", node_ns, "link", "set", veth, "master", BRIDGE)
    _run("ip", "-n", node_ns, "link", "set", veth, "up")
    _run("ip", "-n", name, "link", "set", "lo", "up")
    _run("ip", "-n", name, "link", "set", "eth0", "address", pod_mac(ip))
    _run("ip", "-n", name, "addr", "add", f"{ip}/24", "dev", "eth0")
    _run("ip", "-n", name, "link", "set", "eth0", "up")
    _run("ip", "-n", name, "route", "add", "default", "via", gateway)
    return netns_path(name)


def pod_network_ready(name: str) -> bool:
    """The pod's namespace is complete (its default route, the last step of :func:`add_pod`)."""
    if not netns_path(name).exists():
        return False
    proc = subprocess.run(
        ["ip", "-n", name, "route", "show", "default"], capture_output=True, text=True
    )
    return proc.returncode == 0 and "default" in proc.stdout


def remove_pod(name: str) -> None:
    """Delete the pod's namespace (its veth pair goes with it); no error if it is gone."""
    if netns_path(name).exists():
        subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)


# ------------------------------------------------------------------------------ reaching in
def _setns(fd: int) -> None:
    setns = getattr(os, "setns", None)  # Python >= 3.12
    if setns is not None:
        setns(fd, _CLONE_NEWNET)
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, _CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


@contextlib.contextmanager
def inside(path: Path) -> Iterator[None]:
    """Run the calling thread, and only it, in the network namespace at ``path`` (``setns(2)``
    moves one thread); sockets opened meanwhile stay in that namespace for their whole life.
    The thread's own namespace is restored on exit."""
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        target = os.open(path, os.O_RDONLY)
        try:
            _setns(target)
        finally:
            os.close(target)
        try:
            yield
        finally:
            _setns(own)
    finally:
        os.close(own)


def from_node_of(ip: str) -> contextlib.AbstractContextManager[None]:
    """:func:`inside` the node that hosts pod address ``ip``: where a kubelet's probes and
    ``kubectl port-forward`` come from (NetworkPolicy agents let a pod's own node in)."""
    return inside(netns_path(node_netns_for_ip(ip)))


def paths_under_tmp(paths: Sequence[Path], tmp: Path = Path("/tmp")) -> tuple[Path, ...]:
    """The top-level entries of ``tmp`` that hold any of ``paths`` (sorted, no repeats): what a
    pod's private ``/tmp`` must keep visible when the checkout, its venv or the state directory
    lives under ``/tmp`` (hidden, the head crash-loops on ``ray: command not found``)."""
    tmp = tmp.resolve()
    found = set()
    for path in paths:
        try:
            rel = path.resolve().relative_to(tmp)
        except ValueError:
            continue
        if rel.parts:
            found.add(tmp / rel.parts[0])
    return tuple(sorted(found))


#: Mount the pod's /tmp over /tmp, first binding each kept host path into it at the same place;
#: then bind each ``(directory, mount path)`` pair read-only (a projected ServiceAccount token).
_POD_TMP_SCRIPT = """set -e
tmp=$1; n=$2; shift 2
while [ "$n" -gt 0 ]; do
  rel=${1#/tmp/}; mkdir -p "$tmp/$rel"; mount --bind "$1" "$tmp/$rel"; shift; n=$((n - 1))
done
mount --rbind "$tmp" /tmp
m=$1; shift
while [ "$m" -gt 0 ]; do
  mkdir -p "$2"; mount --bind "$1" "$2"; mount -o remount,bind,ro "$2"; shift 2; m=$((m - 1))
done
exec "$@"
"""


def in_pod_argv(
    netns: Path,
    pod_dir: Path,
    argv: Sequence[str],
    binds: Sequence[tuple[str, str]] = (),
    keep: Sequence[Path] = (),
) -> list[str]:
    """``argv`` run as a pod's container would: in the pod's network namespace and with a
    private ``/tmp`` (a pod has its own filesystem; Ray keeps its session and sockets there).
    ``binds``: ``(directory, mount path)`` pairs bind-mounted read-only in the container's mount
    namespace only (a projected ServiceAccount token at its standard path). ``keep``:
    directories directly under ``/tmp`` (:func:`paths_under_tmp`) that stay visible through the
    private ``/tmp``, as a container image would carry the venv."""
    tmp = pod_dir / "tmp"
    return [
        "nsenter",
        f"--net={netns}",
        "--",
        "unshare",
        "--mount",
        "--propagation",
        "private",
        "--",
        "/bin/sh",
        "-c",
        _POD_TMP_SCRIPT,
        "k2t-pod",
        str(tmp),
        str(len(keep)),
        *(str(k) for k in keep),
        str(len(binds)),
        *(part for pair in binds for part in pair),
        *argv,
    ]


class HostsFile:
    """``/etc/hosts`` of the test ground: a file of ours bind-mounted over it, rewritten in place
    (a rename would leave the bind mount on the old inode)."""

    BASE = "127.0.0.1 localhost\n::1 localhost ip6-localhost ip6-loopback\n"

    def __init__(self, path: Path) -> None:
        self.path = path
        self.base = self.BASE
        self._last = ""

    def install(self) -> None:
        """Bind our hosts file over ``/etc/hosts`` (keeping the machine's own name, which Ray
        looks up) and a resolver config whose only name server is loopback: a name that is no
        Service fails at once instead of waiting for a DNS server no packet can reach."""
        require_isolated()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        own = socket.gethostname()
        self.base = self.BASE + f"127.0.1.1 {own}\n"
        self.path.write_text(self.base)
        _run("mount", "--bind", str(self.path), "/etc/hosts")
        resolv = self.path.with_name("resolv.conf")
        resolv.write_text("nameserver 127.0.0.1\noptions timeout:1 attempts:1\n")
        _run("mount", "--bind", str(resolv), "/etc/resolv.conf")

    def update(self, entries: Mapping[str, Sequence[str]]) -> bool:
        """Write ``name -> addresses``; True if the content changed."""
        text = render_hosts(entries, self.base)
        if text == self._last:
            return False
        with self.path.open("r+") as f:
            f.write(text)
            f.truncate()
        self._last = text
        return True


def render_hosts(entries: Mapping[str, Sequence[str]], base: str = HostsFile.BASE) -> str:
    """Hosts-file text: one line per (address, name), sorted, so equal input gives equal bytes."""
    lines = [base.rstrip("\n")]
    for name in sorted(entries):
        for addr in sorted(set(entries[name])):
            lines.append(f"{addr} {name}")
    return "\n".join(lines) + "\n"


def service_names(name: str, namespace: str, domain: str = "cluster.local") -> list[str]:
    """The DNS names a pod can use for a Service (``kubelet`` search paths aside)."""
    return [f"{name}.{namespace}.svc.{domain}", f"{name}.{namespace}.svc", f"{name}.{namespace}"]
