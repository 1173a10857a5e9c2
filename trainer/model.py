"""Model factory: timm Res2Net presets. Nothing is downloaded (pretrained=False)."""

from __future__ import annotations

from typing import Any

# Every preset is timm's res2net50_26w_4s (ResNet-50 layout with Res2Net bottlenecks,
# width 26, scale 4) with timm's own ResNet kwargs overriding depth and width.
BASE_ARCH = "res2net50_26w_4s"
PRESETS: dict[str, tuple[str, dict[str, Any]]] = {
    # The original recipe: 23.6 M parameters.
    "res2net50": (BASE_ARCH, {}),
    # Edge: 1.4 M parameters, one block per stage except two in the third.
    "edge": (BASE_ARCH, {"layers": [1, 1, 2, 1], "channels": [16, 32, 96, 224],
                         "stem_width": 16}),
    # For tests: 0.13 M parameters.
    "tiny": (BASE_ARCH, {"layers": [1, 1, 1, 1], "channels": [8, 16, 32, 64],
                         "stem_width": 8}),
}
DEFAULT_PRESET = "res2net50"


def resolve_arch(arch: str) -> tuple[str, dict[str, Any]]:
    """(timm model name, kwargs) for a preset name or any timm res2net model name."""
    if arch in PRESETS:
        name, kwargs = PRESETS[arch]
        return name, dict(kwargs)
    import timm

    known = timm.list_models("res2net*")
    if arch not in known:
        raise ValueError(
            f"unknown --arch {arch!r}: use a preset ({', '.join(PRESETS)}) or a timm "
            f"res2net model ({', '.join(known)})"
        )
    return arch, {}


def create_model(arch: str, arch_kwargs: dict[str, Any] | None = None):
    """Build the network: one input channel (a mel image), one output logit."""
    import timm

    kwargs = dict(arch_kwargs or {})
    for key in ("layers", "channels"):  # JSON gives lists; timm wants tuples
        if key in kwargs:
            kwargs[key] = tuple(kwargs[key])
    return timm.create_model(arch, pretrained=False, in_chans=1, num_classes=1, **kwargs)


def count_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())
