"""What the operator keeps of an API object in memory: ``slim`` and ``pack``.

kopf's indexes hold every K2ThinkDeployment and every RayService of ours (handlers.py), and
``DeploymentState.applied`` the RayService our last apply returned; at a thousand deployments
their Python objects were the largest memory the operator owned after its imports
(docs/benchmarks.md, "Memory"). ``slim`` drops what reconcile never reads and shares repeated
strings; ``pack`` also keeps spec and status as compressed JSON, decoded when read.
"""

from __future__ import annotations

import functools
import json
import sys
import zlib
from collections.abc import Callable, Iterator, Mapping
from typing import Any

#: Annotations that only repeat the object (kubectl's client-side apply, kopf's bookkeeping of
#: earlier operator versions): never read by the operator, often larger than the spec.
BULKY_ANNOTATIONS = (
    "kubectl.kubernetes.io/last-applied-configuration",
    "k2think.dev/last-handled-configuration",
)


#: Strings up to this length are interned by ``slim`` (names, images, label values, keys);
#: longer ones (the Serve config, condition messages) are kept as they are.
INTERN_MAX_CHARS = 256


def _compact(value: Any) -> Any:
    """A deep copy whose dict keys and short strings are interned.

    Every parsed API object has its own copy of each key ("name", "resources", ...) and of each
    repeated value ("IfNotPresent", an image): a thousand RayServices held in an index repeat
    them a thousand times. Interned, they are shared (and freed with the last object using
    them): slimmed, a RayService of the example costs 23 KiB instead of 35, a
    K2ThinkDeployment 7 instead of 16; packed (``pack``), 2.6 and 1.5 KiB
    (docs/benchmarks.md, "Memory").
    """
    if isinstance(value, Mapping):
        return {sys.intern(k) if isinstance(k, str) else k: _compact(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_compact(v) for v in value]
    if isinstance(value, str) and len(value) <= INTERN_MAX_CHARS:
        return sys.intern(value)
    return value


def _slim_metadata(meta: Mapping[str, Any]) -> dict[str, Any]:
    """The metadata without ``managedFields`` and the bulky annotations, compacted."""
    out = {k: v for k, v in meta.items() if k != "managedFields"}
    annotations = out.get("annotations")
    if annotations and any(key in annotations for key in BULKY_ANNOTATIONS):
        out["annotations"] = {k: v for k, v in annotations.items() if k not in BULKY_ANNOTATIONS}
    compact: dict[str, Any] = _compact(out)
    return compact


def slim(obj: Mapping[str, Any]) -> dict[str, Any]:
    """A compact copy of an API object without what reconcile never reads.

    ``metadata.managedFields`` is most of a server-side-applied object's size; the bulky
    annotations repeat the object. Everything else (spec, status, labels, annotations, owner
    references, uid, generation, resourceVersion) stays: reconcile compares and reports them.
    The copy is deep, with shared strings (``_compact``), and shares nothing with ``obj``.
    """
    out = {sys.intern(k): _compact(v) for k, v in obj.items() if k != "metadata"}
    out["metadata"] = _slim_metadata(obj.get("metadata") or {})
    return out


class PackedJson(bytes):
    """One value of an API object as zlib-compressed JSON (a subclass, so that ``Packed``
    tells it from a value that is bytes)."""

    __slots__ = ()

    @classmethod
    def of(cls, value: Any) -> PackedJson:
        text = json.dumps(value, separators=(",", ":"), default=_plain).encode("ascii")
        packer = zlib.compressobj(ZLIB_LEVEL, zdict=preset_dictionary())
        return cls(packer.compress(text) + packer.flush())

    def unpack(self) -> Any:
        unpacker = zlib.decompressobj(zdict=preset_dictionary())
        return json.loads(unpacker.decompress(self) + unpacker.flush())


#: zlib's fastest level: it is paid on every watch event of a packed object, and level 6
#: makes a RayService's spec only 7% smaller.
ZLIB_LEVEL = 1

#: What builds zlib's preset dictionary for every packed value (``use_preset_dictionary``).
_dictionary_source: Callable[[], bytes] | None = None


def use_preset_dictionary(source: Callable[[], bytes]) -> None:
    """Make ``source()`` zlib's preset dictionary for every value this process packs.

    Why: most of a packed object is what the operator itself rendered (keys, security
    contexts, ports, probes, labels). With the operator's own output as the dictionary, zlib
    stores mostly what differs from it: a RayService's spec of the example packs into ~280
    bytes instead of ~2,000 (docs/benchmarks.md, "Memory"). This module knows no kind, so the
    controller that owns the objects supplies it (``deployment.reference``). The dictionary is
    made once, on first use, and never changes in a process (a packed value is unpacked with
    the dictionary it was packed with): setting another source after that is refused.
    """
    global _dictionary_source
    if _dictionary_source is source:
        return
    if preset_dictionary.cache_info().currsize:
        raise RuntimeError("the preset dictionary is already in use; set it before packing")
    _dictionary_source = source


@functools.cache
def preset_dictionary() -> bytes:
    """The preset dictionary (empty when no source was set: packing still works, less well)."""
    return _dictionary_source() if _dictionary_source is not None else b""


def _plain(value: Any) -> Any:
    """``json.dumps`` fallback: a mapping that is not a dict (a kopf view) as a dict."""
    if isinstance(value, Mapping):
        return dict(value)
    raise TypeError(f"not JSON: {type(value).__name__}")


class Packed(Mapping[str, Any]):
    """A read-only API object whose spec and status are kept packed (``PackedJson``).

    Why: a RayService's spec is ~6 KiB of JSON but ~20 KiB of Python objects (a dict per
    container, port, env var...), and the operator reads it only to compare it with what it
    renders (``decision.needs_apply``): packed, it is a few hundred bytes, decoded for that
    comparison and dropped again. Reading ``obj["spec"]`` (or ``obj.get("status")``) returns a new decoded copy
    each time, equal to what was packed: JSON round-trips every value an API object holds
    (strings, numbers, booleans, null, lists, maps), so comparisons see the same values.
    ``metadata`` (names, uid, resourceVersion, labels and annotations, read on every event)
    and the scalars (``apiVersion``, ``kind``) stay plain and compacted (``slim``).
    """

    __slots__ = ("_fields",)

    def __init__(self, fields: dict[str, Any]) -> None:
        self._fields = fields

    def __getitem__(self, key: str) -> Any:
        value = self._fields[key]
        return value.unpack() if isinstance(value, PackedJson) else value

    def __contains__(self, key: object) -> bool:
        return key in self._fields

    def __iter__(self) -> Iterator[str]:
        return iter(self._fields)

    def __len__(self) -> int:
        return len(self._fields)

    def __eq__(self, other: object) -> bool:
        """Two packed objects compare without decoding (kopf compares an index's new value
        with the old one on every event): the same fields, the same packed JSON. (The same
        values in another order of keys would compare unequal; JSON from one API server keeps
        its order.)"""
        if isinstance(other, Packed):
            return self._fields == other._fields
        return super().__eq__(other)

    __hash__ = None  # type: ignore[assignment]  # mutable-looking, as a dict

    def packed_size(self) -> int:
        """Bytes of the packed values (for benchmarks and tests)."""
        return sum(len(v) for v in self._fields.values() if isinstance(v, PackedJson))

    def __repr__(self) -> str:
        shown = {
            k: f"<{len(v)} bytes packed>" if isinstance(v, PackedJson) else v
            for k, v in self._fields.items()
        }
        return f"Packed({shown!r})"


def pack(obj: Mapping[str, Any]) -> Packed:
    """``slim(obj)``, with every non-empty map or list besides metadata packed (``Packed``)."""
    fields: dict[str, Any] = {}
    for name, value in obj.items():
        key = sys.intern(name)
        if key == "metadata":
            fields[key] = _slim_metadata(value or {})
        elif isinstance(value, Mapping | list) and value:
            fields[key] = PackedJson.of(value)
        else:
            fields[key] = _compact(value)
    return Packed(fields)
