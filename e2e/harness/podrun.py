"""What the kubelet stand-in (:mod:`harness.raynodes`) needs to run a pod the way a kubelet does:
containers from an image, volumes, a projected ServiceAccount token, probes, securityContext.

Why home-made: there is no container runtime on these machines (no Docker daemon, no containerd,
no CRI), and KWOK only pretends to run pods. The operator's own pods (the Helm chart's
Deployment) must run for real from the image ``make image`` builds (docker/build-image.sh, into
buildah's local store), so this module does, with Linux namespaces, ``mount`` and ``chroot``,
the part of a container runtime and kubelet that such a pod exercises:

* **Image**: refs under ``localhost/`` (what ``make image`` tags) are looked up in buildah's
  local store (:func:`image_config`: entrypoint, cmd, env, user, working dir) and their root
  filesystem is copied out once per image ID (:func:`extract_rootfs`, ``buildah from`` +
  ``buildah mount``) with the mount points a runtime's init layer adds (``/proc``, ``/dev``,
  ``/etc/hosts``, ...). Nothing is pulled: other images are not run (KWOK keeps faking them).
* **Root filesystem**: an overlay per container (lower: the image, upper: the pod's directory);
  ``readOnlyRootFilesystem`` remounts it read-only after the mounts are in place (containerd's
  order).
* **Process**: :func:`container_argv` (Kubernetes' command/args over the image's
  entrypoint/cmd), :func:`container_env` (image env, then what a kubelet adds, then the pod's
  env), :func:`resolve_user` (``runAsUser``/``runAsGroup`` over the image's ``USER``,
  ``runAsNonRoot`` refused for uid 0), ``allowPrivilegeEscalation: false`` as
  ``PR_SET_NO_NEW_PRIVS``, ``capabilities.drop: [ALL]`` as an empty bounding set; its own PID and
  mount namespace, the pod's network namespace. The launcher (``python -m harness.podrun exec
  <spec.json>``) runs as root until it ``chroot``s, drops to the user and ``exec``s.
* **Volumes** (:func:`materialize_volumes`): ``emptyDir``, ``configMap``, ``secret``,
  ``downwardAPI`` and ``projected`` (incl. ``serviceAccountToken`` from the TokenRequest API,
  bound to the pod, renewed at 80 % of its lifetime like the kubelet does). The ServiceAccount
  admission plugin turns ``automountServiceAccountToken`` into such a projected volume mounted
  at ``/var/run/secrets/kubernetes.io/serviceaccount`` in every container, so a container has
  Kubernetes credentials exactly when its pod spec mounts a token.
* **Probes** (:class:`ProbeState`): ``httpGet`` and ``tcpSocket`` liveness/readiness/startup
  probes, sent from the pod's node (as the kubelet sends them) with the spec's delays,
  periods, timeouts and thresholds; readiness drives the pod's ``Ready`` condition, a failed
  liveness probe restarts the container (SIGTERM, the pod's grace, SIGKILL).

What it does not do: seccomp profiles, cgroups (resource limits are not enforced), image pulls,
``exec`` probes, persistent volumes.
"""

from __future__ import annotations

import base64
import contextlib
import ctypes
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: Image references the stand-in runs from buildah's local store (what ``make image`` tags).
LOCAL_PREFIX = "localhost/"
SA_MOUNT = "/var/run/secrets/kubernetes.io/serviceaccount"
#: Paths a container runtime's init layer provides in every root filesystem.
INIT_DIRS = ("proc", "dev", "sys", "tmp", "run", "etc", "var/run/secrets/kubernetes.io")
INIT_FILES = ("etc/hosts", "etc/resolv.conf", "etc/hostname")
DEV_NODES = ("null", "zero", "full", "random", "urandom", "tty")
#: The kubelet renews a projected token once 80 % of its lifetime has passed.
TOKEN_RENEW_FRACTION = 0.8


# ------------------------------------------------------------------------------ pure: images
def runs_from_image(pod: Mapping[str, Any]) -> bool:
    """A pod the stand-in runs from local images: every container's image is under
    :data:`LOCAL_PREFIX`."""
    containers = list((pod.get("spec") or {}).get("containers") or [])
    return bool(containers) and all(
        str(c.get("image", "")).startswith(LOCAL_PREFIX) for c in containers
    )


@dataclass(frozen=True)
class ImageConfig:
    id: str
    entrypoint: list[str]
    cmd: list[str]
    env: dict[str, str]
    user: str
    workdir: str


def parse_image_config(inspect: Mapping[str, Any]) -> ImageConfig:
    """``buildah inspect --type image`` output -> the parts of the OCI config a runtime uses."""
    config = ((inspect.get("OCIv1") or {}).get("config")) or {}
    env = {}
    for item in config.get("Env") or []:
        key, _, value = str(item).partition("=")
        env[key] = value
    return ImageConfig(
        id=str(inspect.get("FromImageID") or inspect.get("FromImageDigest") or ""),
        entrypoint=list(config.get("Entrypoint") or []),
        cmd=list(config.get("Cmd") or []),
        env=env,
        user=str(config.get("User") or ""),
        workdir=str(config.get("WorkingDir") or "/"),
    )


def container_argv(container: Mapping[str, Any], image: ImageConfig) -> list[str]:
    """Kubernetes' rule: ``command`` replaces the entrypoint (and drops the image's cmd),
    ``args`` replaces the cmd."""
    command = container.get("command")
    args = container.get("args")
    if command:
        argv = [str(a) for a in command] + [str(a) for a in args or []]
    else:
        argv = list(image.entrypoint) + (
            [str(a) for a in args] if args is not None else list(image.cmd)
        )
    if not argv:
        raise ValueError(f"container {container.get('name')}: no command and no image entrypoint")
    return argv


def _passwd_ids(rootfs: Path, name: str, *, group: bool) -> int | None:
    table = rootfs / "etc" / ("group" if group else "passwd")
    with contextlib.suppress(OSError):
        for line in table.read_text().splitlines():
            fields = line.split(":")
            if len(fields) > 3 and fields[0] == name:
                return int(fields[2])
    return None


def resolve_user(
    pod: Mapping[str, Any], container: Mapping[str, Any], image: ImageConfig, rootfs: Path
) -> tuple[int, int]:
    """``(uid, gid)``: the container's securityContext over the pod's over the image's ``USER``;
    ``runAsNonRoot`` with uid 0 is refused as the kubelet refuses it."""
    pod_sc = (pod.get("spec") or {}).get("securityContext") or {}
    sc = container.get("securityContext") or {}
    user_s, _, group_s = image.user.partition(":")
    uid: int | None = None
    gid: int | None = None
    if user_s:
        uid = int(user_s) if user_s.isdigit() else _passwd_ids(rootfs, user_s, group=False)
        if uid is None:
            raise ValueError(f"image user {user_s!r} is not in the image's /etc/passwd")
    if group_s:
        gid = int(group_s) if group_s.isdigit() else _passwd_ids(rootfs, group_s, group=True)
    for source in (pod_sc, sc):
        if source.get("runAsUser") is not None:
            uid = int(source["runAsUser"])
        if source.get("runAsGroup") is not None:
            gid = int(source["runAsGroup"])
    uid = 0 if uid is None else uid
    gid = 0 if gid is None else gid
    non_root = sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot"))
    if non_root and uid == 0:
        raise ValueError(
            f"container {container.get('name')}: runAsNonRoot and the image will run as root"
        )
    return uid, gid


def security_flags(container: Mapping[str, Any]) -> dict[str, bool]:
    sc = container.get("securityContext") or {}
    drop = [str(c).upper() for c in (sc.get("capabilities") or {}).get("drop") or []]
    return {
        "read_only_root": bool(sc.get("readOnlyRootFilesystem")),
        # Kubernetes: privilege escalation is allowed unless set false (or a restricted PSS).
        "no_new_privs": sc.get("allowPrivilegeEscalation") is False,
        "drop_all_caps": "ALL" in drop,
    }


# ------------------------------------------------------------------------------ pure: volumes
@dataclass(frozen=True)
class Mount:
    source: str
    target: str
    read_only: bool


def container_mounts(container: Mapping[str, Any], volume_dirs: Mapping[str, Path]) -> list[Mount]:
    """The container's ``volumeMounts`` as bind mounts from the pod's volume directories
    (``subPath`` supported); projected/secret/configMap volumes are always read-only."""
    mounts = []
    for vm in container.get("volumeMounts") or []:
        name = vm["name"]
        if name not in volume_dirs:
            raise ValueError(f"volumeMount {name!r}: volume not supported or not defined")
        source = volume_dirs[name] / str(vm.get("subPath") or "")
        mounts.append(Mount(str(source), str(vm["mountPath"]), bool(vm.get("readOnly"))))
    return mounts


def token_mounts(container: Mapping[str, Any], volumes: Sequence[Mapping[str, Any]]) -> list[str]:
    """Names of the volumes holding a ServiceAccount token that ``container`` mounts."""
    tokens = {
        v["name"]
        for v in volumes
        if any("serviceAccountToken" in s for s in (v.get("projected") or {}).get("sources") or [])
    }
    return [vm["name"] for vm in container.get("volumeMounts") or [] if vm["name"] in tokens]


def data_volumes(volumes: Sequence[Mapping[str, Any]]) -> set[str]:
    """Names of the volumes whose content the kubelet writes (configMap, secret, downwardAPI,
    projected): what the stand-in binds into Ray containers."""
    kinds = ("configMap", "secret", "downwardAPI", "projected")
    return {v["name"] for v in volumes if any(k in v for k in kinds)}


def mounts_token(pod: Mapping[str, Any], container: Mapping[str, Any]) -> bool:
    """Whether the container gets Kubernetes credentials (its pod spec mounts a token in it)."""
    return bool(token_mounts(container, (pod.get("spec") or {}).get("volumes") or []))


# ------------------------------------------------------------------------------ pure: probes
@dataclass
class ProbeState:
    """One probe of one container: the kubelet's counting (``prober/worker.go``): a result is
    taken every ``periodSeconds`` after ``initialDelaySeconds``; ``failureThreshold``
    consecutive failures make it fail, ``successThreshold`` successes make it pass. Readiness
    starts failed, liveness starts passing."""

    spec: Mapping[str, Any]
    kind: str  # liveness | readiness | startup
    started: float
    ok: bool = False
    successes: int = 0
    failures: int = 0
    last: float | None = None

    def __post_init__(self) -> None:
        self.ok = self.kind == "liveness"

    @property
    def period(self) -> float:
        return float(self.spec.get("periodSeconds") or 10)

    @property
    def timeout(self) -> float:
        return float(self.spec.get("timeoutSeconds") or 1)

    def due(self, now: float) -> bool:
        if now - self.started < float(self.spec.get("initialDelaySeconds") or 0):
            return False
        return self.last is None or now - self.last >= self.period

    def record(self, success: bool, now: float) -> bool:
        """Take one result; returns True when the probe's verdict changed."""
        self.last = now
        before = self.ok
        if success:
            self.successes, self.failures = self.successes + 1, 0
            if self.successes >= int(self.spec.get("successThreshold") or 1):
                self.ok = True
        else:
            self.failures, self.successes = self.failures + 1, 0
            if self.failures >= int(self.spec.get("failureThreshold") or 3):
                self.ok = False
        return self.ok != before


def probe_target(
    probe: Mapping[str, Any], container: Mapping[str, Any], pod_ip: str
) -> tuple[str, str, int, str]:
    """``(kind, host, port, path)`` of an ``httpGet``/``tcpSocket`` probe, named ports resolved
    from the container's ``ports``."""
    for kind in ("httpGet", "tcpSocket"):
        action = probe.get(kind)
        if action is None:
            continue
        port = action.get("port")
        if isinstance(port, str) and not port.isdigit():
            named = [p for p in container.get("ports") or [] if p.get("name") == port]
            if not named:
                raise ValueError(f"probe port {port!r} is not a port of {container.get('name')}")
            port = named[0]["containerPort"]
        return kind, str(action.get("host") or pod_ip), int(port), str(action.get("path") or "/")
    raise ValueError(f"unsupported probe {sorted(probe)} (only httpGet and tcpSocket)")


def run_probe(kind: str, host: str, port: int, path: str, timeout: float) -> bool:
    """One probe: HTTP 200-399 (the kubelet's rule) or a TCP connect."""
    import http.client
    import socket

    try:
        if kind == "tcpSocket":
            with socket.create_connection((host, port), timeout=timeout):
                return True
        conn = http.client.HTTPConnection(host, port, timeout=timeout)
        try:
            conn.request("GET", path, headers={"User-Agent": "kube-probe/1.36"})
            return 200 <= conn.getresponse().status < 400
        finally:
            conn.close()
    except OSError:
        return False


def ready_status(
    pod: Mapping[str, Any],
    ready: Mapping[str, bool],
    restarts: Mapping[str, int],
    started: Mapping[str, str],
    *,
    now: str,
) -> dict[str, Any]:
    """The ``status`` strategic-merge patch a kubelet sends: per container ``ready``,
    ``restartCount``, ``state.running``; the pod's ``Ready``/``ContainersReady`` conditions."""
    statuses = []
    for c in (pod.get("spec") or {}).get("containers") or []:
        name = c["name"]
        since = started.get(name)
        state: dict[str, Any] = (
            {"running": {"startedAt": since}}
            if since
            else {"waiting": {"reason": "ContainerCreating"}}
        )
        statuses.append(
            {
                "name": name,
                "image": c.get("image", ""),
                "imageID": c.get("image", ""),
                "ready": bool(ready.get(name)),
                "started": bool(since),
                "restartCount": int(restarts.get(name, 0)),
                "state": state,
            }
        )
    all_ready = all(s["ready"] for s in statuses)
    current = {
        c.get("type"): c.get("status") for c in (pod.get("status") or {}).get("conditions") or []
    }
    conditions = []
    for ctype in ("Ready", "ContainersReady"):
        value = "True" if all_ready else "False"
        cond: dict[str, Any] = {"type": ctype, "status": value}
        if current.get(ctype) != value:
            cond["lastTransitionTime"] = now
        if not all_ready:
            cond["reason"] = "ContainersNotReady"
        conditions.append(cond)
    return {"status": {"containerStatuses": statuses, "conditions": conditions}}


# ------------------------------------------------------------------------------ image store
def _buildah(*args: str) -> str:
    proc = subprocess.run(["buildah", *args], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"buildah {' '.join(args)}: {proc.stderr.strip()}")
    return proc.stdout


def image_config(ref: str) -> ImageConfig:
    """The image's config from buildah's local store (raises if it is not there: nothing is
    pulled)."""
    return parse_image_config(json.loads(_buildah("inspect", "--type", "image", ref)))


def extract_rootfs(ref: str, image_id: str, cache: Path) -> Path:
    """The image's root filesystem as a directory, copied out of buildah's store once per image
    ID, plus the mount points of a runtime's init layer."""
    target = cache / image_id[:24] / "rootfs"
    if (target.parent / "complete").exists():
        return target
    shutil.rmtree(target.parent, ignore_errors=True)
    target.mkdir(parents=True)
    ctr = _buildah("from", "--pull=never", ref).strip().splitlines()[-1]
    try:
        mnt = _buildah("mount", ctr).strip()
        subprocess.run(["cp", "-a", f"{mnt}/.", str(target)], check=True)
    finally:
        subprocess.run(["buildah", "umount", ctr], capture_output=True, check=False)
        subprocess.run(["buildah", "rm", ctr], capture_output=True, check=False)
    for d in INIT_DIRS:
        in_root(target, d).mkdir(parents=True, exist_ok=True)
    for f in INIT_FILES:
        path = in_root(target, f)
        if not path.exists():
            path.touch()
    (target.parent / "complete").write_text(image_id)
    return target


# ------------------------------------------------------------------------------ volumes
Api = Callable[[str], Any]  # GET path -> object
TokenRequest = Callable[[str, str, int, Mapping[str, Any]], tuple[str, float]]


def _write_files(directory: Path, files: Mapping[str, bytes], mode: int) -> None:
    """Write ``files`` into ``directory`` atomically per file (a running container keeps its
    bind mount of the directory and sees each file change whole)."""
    directory.mkdir(parents=True, exist_ok=True)
    for rel, data in files.items():
        path = directory / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_bytes(data)
        tmp.chmod(mode)
        tmp.replace(path)


def _key_items(
    data: Mapping[str, bytes], items: Sequence[Mapping[str, Any]] | None
) -> dict[str, bytes]:
    if not items:
        return dict(data)
    return {str(i["path"]): data[i["key"]] for i in items if i["key"] in data}


@dataclass
class VolumeSet:
    """A pod's volumes on disk (``<pod dir>/volumes/<name>``) and the tokens to renew."""

    dirs: dict[str, Path] = field(default_factory=dict)
    #: (volume dir, source spec, expires-at monotonic, issued-at monotonic)
    tokens: list[tuple[Path, dict[str, Any], float, float]] = field(default_factory=list)


def materialize_volumes(
    pod: Mapping[str, Any],
    base: Path,
    *,
    get: Api,
    request_token: TokenRequest,
    field_value: Callable[[Mapping[str, Any], str], str],
) -> VolumeSet:
    """Write every supported volume of ``pod`` under ``base`` (see the module docstring)."""
    ns = pod["metadata"]["namespace"]
    out = VolumeSet()

    def data_of(kind: str, name: str, optional: bool) -> dict[str, bytes] | None:
        path = f"/api/v1/namespaces/{ns}/{'secrets' if kind == 'secret' else 'configmaps'}/{name}"
        try:
            obj = get(path)
        except Exception:
            if optional:
                return None
            raise
        raw = obj.get("data") or {}
        if kind == "secret":
            return {k: base64.b64decode(v) for k, v in raw.items()}
        data = {k: str(v).encode() for k, v in raw.items()}
        data.update({k: base64.b64decode(v) for k, v in (obj.get("binaryData") or {}).items()})
        return data

    def downward(items: Sequence[Mapping[str, Any]]) -> dict[str, bytes]:
        return {
            str(i["path"]): field_value(pod, i["fieldRef"]["fieldPath"]).encode()
            for i in items
            if "fieldRef" in i
        }

    for vol in (pod.get("spec") or {}).get("volumes") or []:
        name = vol["name"]
        vdir = base / name
        if "emptyDir" in vol:
            vdir.mkdir(parents=True, exist_ok=True)
            vdir.chmod(0o1777)  # the kubelet's emptyDir mode: any uid of the pod may write
        elif "configMap" in vol or "secret" in vol:
            kind = "configMap" if "configMap" in vol else "secret"
            src = vol[kind]
            ref = src.get("name") if kind == "configMap" else src.get("secretName")
            data = data_of(kind, str(ref), bool(src.get("optional")))
            _write_files(
                vdir, _key_items(data or {}, src.get("items")), int(src.get("defaultMode", 0o644))
            )
        elif "downwardAPI" in vol:
            src = vol["downwardAPI"]
            _write_files(vdir, downward(src.get("items") or []), int(src.get("defaultMode", 0o644)))
        elif "projected" in vol:
            proj = vol["projected"]
            mode = int(proj.get("defaultMode", 0o644))
            files: dict[str, bytes] = {}
            for source in proj.get("sources") or []:
                if "serviceAccountToken" in source:
                    spec = source["serviceAccountToken"]
                    token, ttl = request_token(
                        ns,
                        str(pod["spec"].get("serviceAccountName") or "default"),
                        int(spec.get("expirationSeconds") or 3607),
                        pod,
                    )
                    files[str(spec["path"])] = token.encode()
                    now = time.monotonic()
                    out.tokens.append((vdir, dict(spec), now + ttl, now))
                elif "configMap" in source or "secret" in source:
                    kind = "configMap" if "configMap" in source else "secret"
                    src = source[kind]
                    data = data_of(kind, str(src["name"]), bool(src.get("optional")))
                    files.update(_key_items(data or {}, src.get("items")))
                elif "downwardAPI" in source:
                    files.update(downward(source["downwardAPI"].get("items") or []))
            _write_files(vdir, files, mode)
        else:
            continue  # unsupported (hostPath, PVCs, ...): a mount of it is refused
        out.dirs[name] = vdir
    return out


def renew_tokens(
    pod: Mapping[str, Any], volumes: VolumeSet, request_token: TokenRequest, now: float
) -> int:
    """Renew every token past 80 % of its lifetime (the kubelet's rule); returns how many."""
    renewed = 0
    for i, (vdir, spec, expires, issued) in enumerate(volumes.tokens):
        if now < issued + TOKEN_RENEW_FRACTION * (expires - issued):
            continue
        token, ttl = request_token(
            pod["metadata"]["namespace"],
            str(pod["spec"].get("serviceAccountName") or "default"),
            int(spec.get("expirationSeconds") or 3607),
            pod,
        )
        _write_files(vdir, {str(spec["path"]): token.encode()}, 0o644)
        volumes.tokens[i] = (vdir, spec, now + ttl, now)
        renewed += 1
    return renewed


def token_request_body(expiration: int, pod: Mapping[str, Any]) -> dict[str, Any]:
    """The TokenRequest the kubelet sends: bound to the pod (invalid once it is deleted)."""
    meta = pod["metadata"]
    return {
        "apiVersion": "authentication.k8s.io/v1",
        "kind": "TokenRequest",
        "spec": {
            "expirationSeconds": expiration,
            "boundObjectRef": {
                "apiVersion": "v1",
                "kind": "Pod",
                "name": meta["name"],
                "uid": meta["uid"],
            },
        },
    }


# ------------------------------------------------------------------------------ the launcher
@dataclass
class LaunchSpec:
    """Everything the launcher needs, written as JSON next to the container's log."""

    rootfs: str
    upper: str
    argv: list[str]
    env: dict[str, str]
    uid: int
    gid: int
    workdir: str
    mounts: list[dict[str, Any]]
    read_only_root: bool
    no_new_privs: bool
    drop_all_caps: bool
    hosts: str
    resolv: str
    hostname: str
    supplemental_groups: list[int] = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps(self.__dict__, indent=1, sort_keys=True)


def launch_spec(
    pod: Mapping[str, Any],
    container: Mapping[str, Any],
    *,
    image: ImageConfig,
    rootfs: Path,
    upper: Path,
    env: Mapping[str, str],
    volume_dirs: Mapping[str, Path],
    hosts: Path,
    resolv: Path,
    hostname: Path,
) -> LaunchSpec:
    uid, gid = resolve_user(pod, container, image, rootfs)
    flags = security_flags(container)
    pod_sc = (pod.get("spec") or {}).get("securityContext") or {}
    groups = [int(g) for g in pod_sc.get("supplementalGroups") or []]
    if pod_sc.get("fsGroup") is not None:
        groups.append(int(pod_sc["fsGroup"]))
    return LaunchSpec(
        rootfs=str(rootfs),
        upper=str(upper),
        argv=container_argv(container, image),
        env=dict(env),
        uid=uid,
        gid=gid,
        workdir=str(container.get("workingDir") or image.workdir or "/"),
        mounts=[m.__dict__ for m in container_mounts(container, volume_dirs)],
        read_only_root=flags["read_only_root"],
        no_new_privs=flags["no_new_privs"],
        drop_all_caps=flags["drop_all_caps"],
        hosts=str(hosts),
        resolv=str(resolv),
        hostname=str(hostname),
        supplemental_groups=sorted(set(groups)),
    )


def in_root(root: Path, path: str, *, depth: int = 0) -> Path:
    """``path`` inside the root filesystem ``root`` with every symlink resolved *within* it
    (an image's ``/var/run -> /run`` must not lead to the host's ``/run``), as a runtime's
    ``securejoin`` does."""
    if depth > 40:
        raise ValueError(f"too many symlinks under {root} for {path}")
    current = root
    parts = [p for p in path.split("/") if p not in ("", ".")]
    for i, part in enumerate(parts):
        if part == "..":
            current = current.parent if current != root else root
            continue
        nxt = current / part
        if nxt.is_symlink():
            link = os.readlink(nxt)
            rest = "/".join(parts[i + 1 :])
            if link.startswith("/"):
                return in_root(root, f"{link}/{rest}", depth=depth + 1)
            rel = str(current.relative_to(root))
            return in_root(root, f"{rel}/{link}/{rest}", depth=depth + 1)
        current = nxt
    return current


def _mount(*args: str) -> None:
    subprocess.run(["mount", *args], check=True)


def _bind(source: str, target: Path, *, read_only: bool) -> None:
    if Path(source).is_dir():
        target.mkdir(parents=True, exist_ok=True)
    else:
        target.parent.mkdir(parents=True, exist_ok=True)
        if not target.exists():
            target.touch()
    _mount("--bind", source, str(target))
    if read_only:
        _mount("-o", "remount,bind,ro", str(target))


_PR_SET_NO_NEW_PRIVS = 38
_PR_CAPBSET_DROP = 24
_CAP_LAST = 40


def launch(spec: LaunchSpec) -> None:  # pragma: no cover - runs as root inside namespaces
    """Run inside fresh mount + PID namespaces (``unshare --mount --pid --fork``) and the pod's
    network namespace: build the root, drop to the container's user, ``exec`` its process."""
    upper = Path(spec.upper)
    merged, work, up = upper / "merged", upper / "work", upper / "upper"
    for d in (merged, work, up):
        d.mkdir(parents=True, exist_ok=True)
    _mount("--make-rprivate", "/")
    _mount("-t", "overlay", "overlay", "-o",
           f"lowerdir={spec.rootfs},upperdir={up},workdir={work}", str(merged))  # fmt: skip
    _mount("-t", "proc", "proc", str(in_root(merged, "proc")))
    _mount("-t", "tmpfs", "-o", "nosuid,mode=755", "tmpfs", str(in_root(merged, "dev")))
    for dev in DEV_NODES:
        if Path(f"/dev/{dev}").exists():
            _bind(f"/dev/{dev}", in_root(merged, f"/dev/{dev}"), read_only=False)
    in_root(merged, "dev/shm").mkdir(exist_ok=True)
    _mount("-t", "tmpfs", "-o", "nosuid,nodev,mode=1777", "shm", str(in_root(merged, "dev/shm")))
    for src, target in (
        (spec.hosts, "etc/hosts"),
        (spec.resolv, "etc/resolv.conf"),
        (spec.hostname, "etc/hostname"),
    ):
        _bind(src, in_root(merged, target), read_only=True)
    for m in spec.mounts:
        _bind(m["source"], in_root(merged, m["target"]), read_only=bool(m["read_only"]))
    if spec.read_only_root:
        _mount("-o", "remount,bind,ro", str(merged))
    os.chroot(merged)
    os.chdir(spec.workdir or "/")
    libc = ctypes.CDLL(None, use_errno=True)
    if spec.drop_all_caps:
        for cap in range(_CAP_LAST + 1):
            libc.prctl(_PR_CAPBSET_DROP, cap, 0, 0, 0)
    os.setgroups(spec.supplemental_groups)
    os.setgid(spec.gid)
    os.setuid(spec.uid)
    if spec.no_new_privs and libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "PR_SET_NO_NEW_PRIVS")
    path = spec.env.get("PATH", "/usr/local/bin:/usr/bin:/bin")
    exe = spec.argv[0] if "/" in spec.argv[0] else shutil.which(spec.argv[0], path=path)
    if exe is None:
        raise FileNotFoundError(f"{spec.argv[0]} not found in the image's PATH {path}")
    os.execve(exe, spec.argv, spec.env)


def launcher_argv(netns: Path, spec_file: Path) -> list[str]:
    """The host command that runs a container: the pod's network namespace, new mount and PID
    namespaces, the launcher (this module, by the harness's Python) as PID 1's parent."""
    e2e = str(Path(__file__).resolve().parent.parent)
    return [
        "nsenter",
        f"--net={netns}",
        "--",
        "unshare",
        "--mount",
        "--pid",
        "--fork",
        "--propagation",
        "private",
        "--",
        "env",
        f"PYTHONPATH={e2e}",
        sys.executable,
        "-m",
        "harness.podrun",
        "exec",
        str(spec_file),
    ]


def main(argv: Sequence[str] | None = None) -> int:  # pragma: no cover - see launch()
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 2 or args[0] != "exec":
        print("usage: python -m harness.podrun exec <spec.json>", file=sys.stderr)
        return 2
    launch(LaunchSpec(**json.loads(Path(args[1]).read_text())))
    return 127


if __name__ == "__main__":
    sys.exit(main())
