"""Model presets and accelerator types the planner reasons about.

The numbers are the ones the memory model needs and nothing more: they come from the models'
``config.json`` and from vendor data sheets (usable memory as the driver reports it, not the
marketing figure, because the planner must not promise KV cache that is not there).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

GIB: Final = 1024**3

DTYPE_BYTES: Final[dict[str, float]] = {
    "bfloat16": 2.0,
    "float16": 2.0,
    "float32": 4.0,
}

KV_CACHE_DTYPE_BYTES: Final[dict[str, float | None]] = {
    # None: same as the model dtype.
    "auto": None,
    "fp8": 1.0,
    "fp8_e4m3": 1.0,
    "fp8_e5m2": 1.0,
}


@dataclass(frozen=True)
class Architecture:
    """The shape of a decoder-only transformer, as far as memory sizing cares."""

    family: str
    parameters_billions: float
    layers: int
    hidden_size: int
    attention_heads: int
    kv_heads: int
    head_dim: int
    vocab_size: int
    max_position_embeddings: int

    @property
    def parameters(self) -> float:
        return self.parameters_billions * 1e9


@dataclass(frozen=True)
class ModelPreset:
    name: str
    hf_id: str
    architecture: Architecture
    default_dtype: str
    reasoning_parser: str


K2_THINK: Final = ModelPreset(
    name="k2-think",
    hf_id="LLM360/K2-Think",
    architecture=Architecture(
        family="qwen2",
        parameters_billions=32.76,
        layers=64,
        hidden_size=5120,
        attention_heads=40,
        kv_heads=8,
        head_dim=128,
        vocab_size=152064,
        max_position_embeddings=131072,
    ),
    default_dtype="bfloat16",
    reasoning_parser="deepseek_r1",
)

K2_THINK_V2: Final = ModelPreset(
    name="k2-think-v2",
    hf_id="LLM360/K2-Think-V2",
    architecture=Architecture(
        family="llama",
        parameters_billions=70.6,
        layers=80,
        hidden_size=8192,
        attention_heads=64,
        kv_heads=8,
        head_dim=128,
        vocab_size=250112,
        max_position_embeddings=131072,
    ),
    default_dtype="bfloat16",
    reasoning_parser="deepseek_r1",
)

MODEL_PRESETS: Final[dict[str, ModelPreset]] = {p.name: p for p in (K2_THINK, K2_THINK_V2)}


@dataclass(frozen=True)
class DraftPreset:
    """A draft model for speculative decoding (``spec.engine.speculativeDecoding.draft``).

    vLLM's ``draft_model`` method needs the draft's vocabulary to be the target's
    (``SpeculativeConfig.verify_equal_vocab_size_if_draft_model``); the planner checks it with
    these numbers, and counts the draft's weights and KV cache on every GPU.
    """

    name: str
    hf_id: str
    architecture: Architecture


#: Qwen2.5-7B-Instruct shares K2-Think's tokenizer and vocabulary (152064: K2-Think is a
#: Qwen2.5-32B fine-tune); Qwen2.5's smaller models (0.5B-3B) have 151936 tokens, which vLLM
#: refuses as a draft of a 152064-token model. K2-Think-V2 (250112 tokens) has no public draft
#: of its vocabulary: ngram, suffix or an EAGLE head trained for it.
QWEN25_7B_DRAFT: Final = DraftPreset(
    name="qwen2.5-7b-instruct",
    hf_id="Qwen/Qwen2.5-7B-Instruct",
    architecture=Architecture(
        family="qwen2",
        parameters_billions=7.62,
        layers=28,
        hidden_size=3584,
        attention_heads=28,
        kv_heads=4,
        head_dim=128,
        vocab_size=152064,
        max_position_embeddings=32768,
    ),
)

DRAFT_PRESETS: Final[dict[str, DraftPreset]] = {p.name: p for p in (QWEN25_7B_DRAFT,)}


def draft_preset_names() -> tuple[str, ...]:
    return tuple(sorted(DRAFT_PRESETS))


@dataclass(frozen=True)
class Accelerator:
    """One accelerator type a node pool can offer.

    ``resource_name`` is the Kubernetes extended resource the device plugin advertises; ``None``
    means the profile runs on plain CPU (development and the data-plane tests), where "device
    memory" is the share of host RAM vLLM's CPU backend gives to weights and KV cache.
    ``ray_accelerator_type`` is the string Ray Serve LLM's ``accelerator_type`` accepts (and the
    suffix of the ``accelerator_type:<X>`` resource Ray advertises on such nodes).
    ``gpu_products`` are the values the vendor's node labeller puts in ``product_label`` on nodes
    with this GPU (every board variant of the same memory size): the worker pods of a pool are
    bound to them, so a plan made for 80 GB never lands on a 40 GB board.
    """

    name: str
    memory_gib: float
    #: HBM bandwidth: decode is bandwidth bound (design §4); kept as catalog data for the
    #: planner's explanation, which does not quote it yet.
    bandwidth_tb_s: float
    resource_name: str | None
    ray_accelerator_type: str | None
    gpu_products: tuple[str, ...]
    default_memory_utilization: float = 0.90
    runtime_reserve_gib: float = 4.0
    default_dtype: str | None = None
    enforce_eager: bool = False

    @property
    def is_cpu(self) -> bool:
        return self.resource_name is None

    @property
    def vendor(self) -> str:
        """``nvidia.com`` / ``amd.com`` (the resource's domain), ``cpu`` for the CPU profile."""
        return self.resource_name.split("/", 1)[0] if self.resource_name else "cpu"

    @property
    def product_label(self) -> str | None:
        """The node label naming the GPU model, as the vendor's labeller publishes it."""
        return PRODUCT_LABELS.get(self.vendor)


NVIDIA: Final = "nvidia.com/gpu"
AMD: Final = "amd.com/gpu"

#: The node label each vendor's labeller sets to the GPU model. NVIDIA GPU feature discovery
#: (k8s-device-plugin, ``gpu-feature-discovery``) publishes ``nvidia.com/gpu.product`` as the
#: NVML product name with spaces turned into dashes (``NVIDIA-H100-80GB-HBM3``) and
#: ``nvidia.com/gpu.memory`` in MiB; AMD's node labeller (ROCm/k8s-device-plugin) publishes
#: ``amd.com/gpu.product-name`` (``AMD_Instinct_MI300X_OAM``) and ``amd.com/gpu.vram``.
PRODUCT_LABELS: Final[dict[str, str]] = {
    "nvidia.com": "nvidia.com/gpu.product",
    "amd.com": "amd.com/gpu.product-name",
}
#: Other labels that bind a pod to a GPU model: a pool whose own nodeSelector or affinity names
#: one of them has chosen its nodes itself, and the operator adds nothing.
GPU_BINDING_LABELS: Final[frozenset[str]] = frozenset(
    {
        *PRODUCT_LABELS.values(),
        "nvidia.com/gpu.memory",
        "amd.com/gpu.vram",
        "amd.com/gpu.device-id",
        "beta.amd.com/gpu.product-name",
    }
)

ACCELERATORS: Final[dict[str, Accelerator]] = {
    a.name: a
    for a in (
        Accelerator(
            "A100-40GB",
            40.0,
            1.555,
            NVIDIA,
            "A100-40G",
            ("NVIDIA-A100-SXM4-40GB", "NVIDIA-A100-PCIE-40GB"),
        ),
        Accelerator(
            "A100-80GB",
            80.0,
            2.039,
            NVIDIA,
            "A100-80G",
            ("NVIDIA-A100-SXM4-80GB", "NVIDIA-A100-80GB-PCIe"),
        ),
        Accelerator(
            "H100-80GB", 79.6, 3.35, NVIDIA, "H100", ("NVIDIA-H100-80GB-HBM3", "NVIDIA-H100-PCIe")
        ),
        Accelerator("H200-141GB", 140.4, 4.8, NVIDIA, "H200", ("NVIDIA-H200", "NVIDIA-H200-NVL")),
        Accelerator("B200-180GB", 178.4, 8.0, NVIDIA, "B200", ("NVIDIA-B200",)),
        Accelerator("L40S-48GB", 44.4, 0.864, NVIDIA, "L40S", ("NVIDIA-L40S",)),
        Accelerator(
            "MI300X-192GB", 191.5, 5.3, AMD, "AMD-Instinct-MI300X-OAM", ("AMD_Instinct_MI300X_OAM",)
        ),
        # Development profile: vLLM's CPU backend. Memory is what we let the engine plan with
        # (the KV share of host RAM); float32 and eager mode because the CPU kernels want them.
        Accelerator(
            "CPU",
            16.0,
            0.05,
            None,
            None,
            (),
            default_memory_utilization=0.10,
            runtime_reserve_gib=0.0,
            default_dtype="float32",
            enforce_eager=True,
        ),
    )
}


def accelerator_names() -> list[str]:
    return sorted(ACCELERATORS)


def preset_names() -> list[str]:
    return sorted(MODEL_PRESETS)
