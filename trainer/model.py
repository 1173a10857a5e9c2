"""Model factory: timm Res2Net presets, from random weights or pretrained ones (timm's
ImageNet weights are downloaded only when --pretrained imagenet asks for them)."""

from __future__ import annotations

import math
from typing import Any

from runtime.errors import DfaError

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


class ArchError(DfaError, ValueError):
    """An arch or arch_kwargs dfa will not build (a usage error: exit 2)."""


def _ints(n: int, lo: int, hi: int):
    def check(v):
        ok = (isinstance(v, (list, tuple)) and len(v) == n
              and all(isinstance(x, int) and not isinstance(x, bool) and lo <= x <= hi
                      for x in v))
        return None if ok else f"a list of {n} integers in [{lo}, {hi}]"
    return check


def _int(lo: int, hi: int):
    def check(v):
        ok = isinstance(v, int) and not isinstance(v, bool) and lo <= v <= hi
        return None if ok else f"an integer in [{lo}, {hi}]"
    return check


def _rate(v):
    ok = (isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
          and 0.0 <= v < 1.0)
    return None if ok else "a number in [0, 1)"


def _bool(v):
    return None if isinstance(v, bool) else "true or false"


def _one_of(*choices):
    def check(v):
        return None if v in choices and type(v) is type(choices[0]) else \
            f"one of {', '.join(repr(c) for c in choices)}"
    return check


def _block_args(v):
    scale = _int(1, 16)
    ok = isinstance(v, dict) and set(v) <= {"scale"} and all(scale(x) is None
                                                              for x in v.values())
    return None if ok else '{"scale": an integer in [1, 16]} (Res2Net scales per block)'


# The arch_kwargs a model.json may carry: the plain-data arguments of timm's ResNet (which
# builds every res2net* model) that shape a Res2Net, and nothing else. model.json travels
# with weights from elsewhere, and timm.create_model also takes kwargs that read files or
# fetch from the hub (checkpoint_path, pretrained_cfg_overlay, pretrained_cfg, cache_dir,
# ...): an allow-list, not a deny-list, keeps a new timm argument from becoming a way in.
ARCH_KWARGS: dict[str, Any] = {
    "layers": _ints(4, 1, 64),  # blocks per stage
    "channels": _ints(4, 1, 4096),  # bottleneck width per stage
    "stem_width": _int(1, 1024),
    "stem_type": _one_of("", "deep", "deep_tiered"),
    "base_width": _int(1, 1024),  # Res2Net width (the 26 of 26w_4s)
    "cardinality": _int(1, 64),  # Res2NeXt groups
    "block_args": _block_args,  # the scale (the 4s of 26w_4s)
    "avg_down": _bool,
    "down_kernel_size": _one_of(1, 3),
    "replace_stem_pool": _bool,
    "output_stride": _one_of(8, 16, 32),
    "global_pool": _one_of("avg", "max", "avgmax", "catavgmax"),
    "drop_rate": _rate,
    "drop_path_rate": _rate,
    "drop_block_rate": _rate,
    "zero_init_last": _bool,
    # dfa's own (not timm's): the classifier. "linear" is timm's fc (one logit); "cosine"
    # is OC-Softmax's (CosineHead below), which --loss oc-softmax trains.
    "head": _one_of("linear", "cosine"),
    # With the cosine head: a signed linear projection of the pooled features to this many
    # dimensions before the cosine, as the OC-Softmax paper's network has (its embedding is
    # the output of a linear layer; timm's pooled features follow a ReLU, never negative).
    "embedding": _int(2, 4096),
}


def cosine_head(in_features: int):
    """OC-Softmax's classifier (Zhang, Jiang and Li, "One-class learning towards synthetic
    voice spoofing detection", IEEE SPL 2021, and their code, yzyouzhang/AIR-ASVspoof): the
    cosine between the pooled embedding and one learned bona fide direction w. Bona fide
    embeddings are trained into the cone cos >= M_REAL around w and spoofs out to cos <=
    M_FAKE, so unseen attacks need not resemble seen ones to fall outside the cone.

    dfa's contract is one spoof logit per window, so the head returns
    ALPHA * (CENTRE - cos): positive (spoof) below the midpoint of the two margins, and
    the OC-Softmax loss is binary cross-entropy on that logit shifted by the margin
    (trainer.loop.make_loss)."""
    import torch
    import torch.nn.functional as F

    class CosineHead(torch.nn.Module):
        def __init__(self, n: int):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.empty(1, n))
            torch.nn.init.kaiming_uniform_(self.weight, a=0.25)

        def forward(self, x):
            # x / |x| as x * rsqrt(sum x^2): F.normalize exports as ReduceL2 + Expand,
            # which onnxruntime's shape inference (int8 pre-processing) cannot follow.
            x = x * torch.rsqrt((x * x).sum(dim=1, keepdim=True).clamp_min(1e-24))
            w = self.weight * torch.rsqrt((self.weight * self.weight).sum().clamp_min(1e-24))
            return OC_ALPHA * (OC_CENTRE - F.linear(x, w))

    return CosineHead(in_features)


# OC-Softmax's published settings: scale 20, bona fide margin 0.9, spoof margin 0.2.
OC_ALPHA, OC_M_REAL, OC_M_FAKE = 20.0, 0.9, 0.2
OC_CENTRE = (OC_M_REAL + OC_M_FAKE) / 2


def check_arch(arch: Any, arch_kwargs: Any) -> None:
    """Raise ArchError unless `arch` is a timm res2net model and every kwarg is an allowed
    name with a value of the allowed type and range."""
    import timm

    known = timm.list_models("res2net*")
    if not isinstance(arch, str) or arch not in known:
        raise ArchError(f"unknown arch {arch!r}: use a timm res2net model "
                        f"({', '.join(known)})")
    if arch_kwargs is None:
        return
    if not isinstance(arch_kwargs, dict):
        raise ArchError(f"arch_kwargs must be an object of timm ResNet arguments, got "
                        f"{type(arch_kwargs).__name__}")
    unknown = sorted(str(k) for k in arch_kwargs if k not in ARCH_KWARGS)
    if unknown:
        raise ArchError(f"arch_kwargs {', '.join(unknown)} not allowed: remove "
                        f"{'them' if len(unknown) > 1 else 'it'} (dfa builds a Res2Net only "
                        f"from {', '.join(ARCH_KWARGS)})")
    for key, value in arch_kwargs.items():
        expected = ARCH_KWARGS[key](value)
        if expected:
            raise ArchError(f"arch_kwargs {key} must be {expected}, got {value!r}")
    if "embedding" in arch_kwargs and arch_kwargs.get("head") != "cosine":
        raise ArchError("arch_kwargs embedding needs head 'cosine' (it is OC-Softmax's "
                        "projection); remove it or train with --loss oc-softmax")


def resolve_arch(arch: str) -> tuple[str, dict[str, Any]]:
    """(timm model name, kwargs) for a preset name or any timm res2net model name."""
    if arch in PRESETS:
        name, kwargs = PRESETS[arch]
        return name, dict(kwargs)
    import timm

    known = timm.list_models("res2net*")
    if arch not in known:
        raise ArchError(
            f"unknown --arch {arch!r}: use a preset ({', '.join(PRESETS)}) or a timm "
            f"res2net model ({', '.join(known)})"
        )
    return arch, {}


IMAGENET = "imagenet"


class PretrainedError(DfaError):
    """Pretrained weights that cannot be used (a usage error: exit 2)."""


def create_model(arch: str, arch_kwargs: dict[str, Any] | None = None,
                 pretrained: str | None = None, in_chans: int = 1):
    """Build the network: `in_chans` input channels (FeatureConfig.input_shape[0]: the mel
    image, and the phase channel when there is one), one output logit.

    `arch` and `arch_kwargs` are checked first (check_arch): they may come from a
    model.json written elsewhere, and timm would act on any keyword it knows.
    `pretrained`: None (random weights), "imagenet" (timm's own weights for `arch`,
    downloaded by timm) or the path of a local timm checkpoint of `arch` (a state_dict
    file, read with weights_only=True). Either way the first convolution is adapted to one
    input channel as timm does (RGB kernels summed) and the classifier starts at random;
    every other weight must be in the checkpoint with its shape (PretrainedError if not)."""
    import timm

    check_arch(arch, arch_kwargs)
    kwargs = dict(arch_kwargs or {})
    head = kwargs.pop("head", "linear")
    embedding = kwargs.pop("embedding", 0)
    for key in ("layers", "channels"):  # JSON gives lists; timm wants tuples
        if key in kwargs:
            kwargs[key] = tuple(kwargs[key])
    if pretrained == IMAGENET:
        try:
            return _with_head(timm.create_model(arch, pretrained=True, in_chans=in_chans,
                                                num_classes=1, **kwargs), head, embedding)
        except RuntimeError as e:  # the ImageNet weights are res2net's own shapes
            raise _misfit(pretrained, arch, arch_kwargs, e) from e
        except Exception as e:  # noqa: BLE001 - offline, hub errors: say what to do
            raise PretrainedError(
                f"--pretrained {IMAGENET}: downloading timm's ImageNet weights failed "
                f"({' '.join(str(e).split())[:160] or type(e).__name__}); on a machine without "
                "internet save them elsewhere (torch.save(timm.create_model(ARCH, "
                "pretrained=True).state_dict(), FILE)) and pass --pretrained FILE") from e
    model = _with_head(timm.create_model(arch, pretrained=False, in_chans=in_chans,
                                         num_classes=1, **kwargs), head, embedding)
    if pretrained is not None:
        _load_timm_checkpoint(model, pretrained, arch, arch_kwargs, in_chans)
    return model


def _with_head(model, head: str, embedding: int = 0):
    """timm's model with its fc replaced by the cosine head when asked (keys fc.weight), or
    by a linear projection to `embedding` dimensions and the cosine head on it (keys
    fc.0.weight, fc.0.bias, fc.1.weight)."""
    if head == "cosine":
        if embedding:
            import torch

            model.fc = torch.nn.Sequential(torch.nn.Linear(model.num_features, embedding),
                                           cosine_head(embedding))
        else:
            model.fc = cosine_head(model.num_features)
    return model


def network(arch: str, loss: str = "bce", oc_embedding: int = 0
            ) -> tuple[str, dict[str, Any]]:
    """(timm model name, arch_kwargs) a run trains: the preset's, plus the head its loss
    needs (OC-Softmax: the cosine head, on a projection to `oc_embedding` dimensions when
    that is not 0)."""
    name, kwargs = resolve_arch(arch)
    if loss == "oc-softmax":
        kwargs["head"] = "cosine"
        if oc_embedding:
            kwargs["embedding"] = oc_embedding
    return name, kwargs


def _load_timm_checkpoint(model, path: str, arch: str, arch_kwargs, in_chans: int = 1
                          ) -> None:
    """A timm checkpoint into `model`, strictly: only the classifier may be missing."""
    from pathlib import Path

    import torch
    from timm.models import load_state_dict
    from timm.models._manipulate import adapt_input_conv

    if not Path(path).is_file():
        raise PretrainedError(f"--pretrained {path}: no such file; give a timm checkpoint of "
                              f"{arch} or '{IMAGENET}'")
    try:
        state = load_state_dict(path, weights_only=True)
        if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor)
                                                  for v in state.values()):
            raise TypeError("not a dict of tensors")
    except Exception as e:  # noqa: BLE001 - empty, damaged, pickled objects, not a state_dict
        raise PretrainedError(f"--pretrained {path}: not a readable timm checkpoint "
                              f"({' '.join(str(e).split())[:160] or type(e).__name__}); "
                              "save one with torch.save(model.state_dict(), FILE)") from e
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}  # a new classifier
    stem = state.get("conv1.weight")
    if stem is not None and stem.ndim == 4 and stem.shape[1] != in_chans:
        state["conv1.weight"] = adapt_input_conv(in_chans, stem, base_chans=stem.shape[1])
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as e:
        raise _misfit(path, arch, arch_kwargs, e) from e
    missing = [k for k in result.missing_keys if not k.startswith("fc.")]
    if missing or result.unexpected_keys:
        raise _misfit(path, arch, arch_kwargs, RuntimeError(
            f"missing {len(missing)} weights (e.g. {', '.join(missing[:2]) or '-'}), "
            f"{len(result.unexpected_keys)} unknown (e.g. "
            f"{', '.join(result.unexpected_keys[:2]) or '-'})"))


def _misfit(source: str, arch: str, arch_kwargs, error: Exception) -> PretrainedError:
    shaped = ", ".join(f"{k}={v}" for k, v in (arch_kwargs or {}).items())
    return PretrainedError(
        f"--pretrained {source}: its weights do not fit {arch}"
        f"{' with ' + shaped if shaped else ''} ({' '.join(str(error).split())[:200]}); "
        "pretrained weights need the architecture they were trained with: use --arch "
        "res2net50 (or the timm res2net they are for), not a preset that changes its widths "
        "or depths")


def count_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())
