"""A private pod network for the chain test ground: one network namespace per simulated pod.

Why this exists (home-made, on purpose): there is no container runtime here, but the chain
suite (``e2e/chain/``) runs the real Ray processes of KWOK's pods. Ray binds several ports on
every interface (the dashboard agent's 52365, the metrics exporter, Serve's proxy on 8000 on
every node that hosts a replica), so two Ray nodes cannot share one network stack, and
EndpointSlices refuse loopback addresses, so KubeRay could not reach a head whose address is
127.x. A Kubernetes pod gets its own network namespace with its own address; this module does
exactly that with iproute2:

* the whole test ground runs inside a network (and mount) namespace its runner created
  (``unshare -n -m``, see ``e2e/chain/run.sh``): only ``lo`` and the devices made here exist,
  so nothing can reach the host's networks, whatever address a process dials;
* :func:`setup_ground` adds a bridge ``k2t0`` holding the pod gateway ``10.244.255.254/16``, puts
  the ``kubernetes`` Service address ``10.96.0.1`` on ``lo`` (the apiserver listens on every
  address of this namespace, so pods reach it the way they do in a cluster);
* :func:`add_pod` makes a network namespace per pod with a veth pair on the bridge, the pod's IP
  (KWOK's ``status.podIP``), a MAC address derived from that IP (:func:`pod_mac`) and a default
  route through the gateway;
* :class:`HostsFile` is bind-mounted over ``/etc/hosts`` (in the private mount namespace only)
  and rewritten in place, so Services resolve to the pod addresses behind them (Go re-reads the
  file when its mtime changes, Python's resolver on every lookup).

Every function refuses to run unless :func:`require_isolated` passes.
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import socket
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

#: The pod network. KWOK v0.8 hands out pod IPs from ``--cidr`` counting up from the address
#: written there (``pkg/utils/net/ip.go``, ``ParseCIDR`` keeps it; nodes without
#: ``spec.podCIDR`` use it: ``pkg/kwok/controllers/pod_controller.go``); the gateway sits at the
#: other end of the range so the two never meet.
POD_CIDR = "10.244.0.0/16"
GATEWAY = "10.244.255.254"
KWOK_CIDR = "10.244.1.1/16"
#: ClusterIP of the ``kubernetes`` Service (first address of the harness's service range; the
#: apiserver's serving certificate carries it).
KUBERNETES_SERVICE_IP = "10.96.0.1"
BRIDGE = "k2t0"
#: Environment variable the runner sets after entering its own namespaces.
ISOLATED_ENV = "K2T_CHAIN_NETNS"
#: The mount namespace the runner started in (``readlink /proc/self/ns/mnt`` before unshare).
OUTER_MNTNS_ENV = "K2T_OUTER_MNTNS"


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
    """Devices that this module did not make (anything but lo, the bridge and pod veths)."""
    return [n for n in names if n != "lo" and n != BRIDGE and not n.startswith("k2v")]


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
    """Loopback up, the pod bridge with its gateway, the kubernetes Service address on lo."""
    require_isolated()
    _run("ip", "link", "set", "lo", "up")
    if BRIDGE not in interfaces():
        _run("ip", "link", "add", BRIDGE, "type", "bridge")
        _run("ip", "addr", "add", f"{GATEWAY}/{_prefix()}", "dev", BRIDGE)
        _run("ip", "link", "set", BRIDGE, "up")
    addrs = _run("ip", "-o", "addr", "show", "dev", "lo")
    if f" {KUBERNETES_SERVICE_IP}/" not in addrs:
        _run("ip", "addr", "add", f"{KUBERNETES_SERVICE_IP}/32", "dev", "lo")


def _prefix() -> int:
    return ipaddress.ip_network(POD_CIDR).prefixlen


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
    """Create network namespace ``name`` with ``ip`` on its eth0, bridged to the ground."""
    require_isolated()
    if ipaddress.ip_address(ip) not in ipaddress.ip_network(POD_CIDR):
        raise ValueError(f"pod IP {ip} is outside the pod network {POD_CIDR}")
    remove_pod(name)
    veth = _veth(name)
    _run("ip", "netns", "add", name)
    _run("ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", name)
    _run("ip", "link", "set", veth, "master", BRIDGE)
    _run("ip", "link", "set", veth, "up")
    _run("ip", "-n", name, "link", "set", "lo", "up")
    _run("ip", "-n", name, "link", "set", "eth0", "address", pod_mac(ip))
    _run("ip", "-n", name, "addr", "add", f"{ip}/{_prefix()}", "dev", "eth0")
    _run("ip", "-n", name, "link", "set", "eth0", "up")
    _run("ip", "-n", name, "route", "add", "default", "via", GATEWAY)
    return netns_path(name)


def remove_pod(name: str) -> None:
    """Delete the pod's namespace (its veth pair goes with it); no error if it is gone."""
    if netns_path(name).exists():
        subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)


def in_pod_argv(netns: Path, pod_dir: Path, argv: Sequence[str]) -> list[str]:
    """``argv`` run as a pod's container would: in the pod's network namespace and with a
    private ``/tmp`` (a pod has its own filesystem; Ray keeps its session and sockets there)."""
    tmp = pod_dir / "tmp"
    script = 'mount --bind "$1" /tmp && shift && exec "$@"'
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
        script,
        "k2t-pod",
        str(tmp),
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
