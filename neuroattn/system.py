"""What this installation can use: package versions, compute device and attention kernels."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import platform
from dataclasses import asdict, dataclass, field

CORE_PACKAGES = (
    "torch",
    "torchvision",
    "nibabel",
    "nilearn",
    "monai",
    "scikit-learn",
    "diffusers",
    "open_clip_torch",
    "streamlit",
    "pybids",
    "safetensors",
)
OPTIONAL_PACKAGES = ("natten", "distributed", "tensorboard")


@dataclass
class SystemInfo:
    """A snapshot of the environment, printable and JSON-serialisable."""

    neuroattn: str
    python: str
    platform: str
    packages: dict[str, str | None] = field(default_factory=dict)
    device: str = "cpu"
    cuda_devices: list[str] = field(default_factory=list)
    bf16_supported: bool = False
    attention_kernels: dict[str, bool] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def package_version(name: str) -> str | None:
    """Installed version of a distribution, or None when it is not installed."""
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def attention_kernels() -> dict[str, bool]:
    """Which attention kernels this torch build and environment offer (used to pick backends)."""
    import torch

    flex = importlib.util.find_spec("torch.nn.attention.flex_attention") is not None
    return {
        "sdpa": hasattr(torch.nn.functional, "scaled_dot_product_attention"),
        "flex": flex,
        "natten": importlib.util.find_spec("natten") is not None and torch.cuda.is_available(),
    }


def collect_system_info() -> SystemInfo:
    """Gather versions, the best device and the available attention kernels."""
    import torch

    from neuroattn import __version__

    cuda = torch.cuda.is_available()
    devices = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if cuda else []
    return SystemInfo(
        neuroattn=__version__,
        python=platform.python_version(),
        platform=f"{platform.system()} {platform.machine()}",
        packages={name: package_version(name) for name in CORE_PACKAGES + OPTIONAL_PACKAGES},
        device="cuda" if cuda else "cpu",
        cuda_devices=devices,
        bf16_supported=bool(cuda and torch.cuda.is_bf16_supported()),
        attention_kernels=attention_kernels(),
    )


def resolve_device(requested: str = "auto") -> str:
    """Turn 'auto' into 'cuda' when a GPU is present, else 'cpu'; validate explicit choices."""
    import torch

    from neuroattn.errors import ConfigError

    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device '{requested}' requested but no CUDA GPU is available")
    if requested.split(":")[0] not in ("cpu", "cuda"):
        raise ConfigError(f"'device' must be one of ['auto', 'cpu', 'cuda']. '{requested}' was provided.")
    return requested
