"""Which GPUs a CUDA program will see, by CUDA's own reading of CUDA_VISIBLE_DEVICES.

NVML ignores the variable, so the checker applies it itself. CUDA reads a comma-separated list of
indices, `GPU-` UUIDs (unique prefixes allowed) or `MIG-` UUIDs, and stops at the first entry it
cannot use: everything from an invalid or repeated entry onwards is ignored, and an empty value
hides every GPU.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from .snapshot import Gpu


@dataclass(frozen=True)
class Visible:
    gpus: list[Gpu]  # the physical GPUs the job will use, in CUDA's order
    mig_devices: list[str]  # MIG instances selected by UUID
    raw: str | None  # the variable's value; None when unset
    ignored: str | None = None  # the entry from which CUDA stops reading, and why
    uses_indices: bool = False


def _lookup(token: str, gpus: list[Gpu]) -> tuple[Gpu | None, str | None]:
    """The GPU an entry names, with the MIG UUID when it names a MIG instance."""
    if token.lstrip("-").isdigit():
        index = int(token)
        return (gpus[index] if 0 <= index < len(gpus) else None), None
    if token.startswith("MIG-"):
        for gpu in gpus:
            if token in gpu.mig_devices:
                return gpu, token
        return None, None
    if token.startswith("GPU-"):
        matches = [gpu for gpu in gpus if gpu.uuid.startswith(token)]
        return (matches[0] if len(matches) == 1 else None), None
    return None, None


def visible_devices(gpus: list[Gpu], env: Mapping[str, str]) -> Visible:
    raw = env.get("CUDA_VISIBLE_DEVICES")
    if raw is None:
        return Visible(list(gpus), [], None)
    chosen: list[Gpu] = []
    migs: list[str] = []
    seen: set[str] = set()
    ignored = None
    tokens = [t.strip() for t in raw.split(",")] if raw.strip() else []
    for position, token in enumerate(tokens):
        gpu, mig = _lookup(token, gpus)
        key = mig or (gpu.uuid if gpu else "")
        if gpu is None or key in seen:
            rest = ",".join(tokens[position:])
            why = "repeats a device" if gpu else "matches no GPU here"
            ignored = f"{token!r} {why}, so CUDA ignores {rest!r}"
            break
        seen.add(key)
        if mig:
            migs.append(mig)
        if gpu not in chosen:
            chosen.append(gpu)
    uses_indices = any(t.lstrip("-").isdigit() for t in tokens)
    return Visible(chosen, migs, raw, ignored, uses_indices)
