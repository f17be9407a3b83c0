"""Where a model's modules live and run: device maps (through accelerate) for models larger than one device.

A device map places modules — name prefixes of ``model.named_modules()``, e.g. ``model.layers.3`` or ``lm_head`` —
on devices: an accelerator (``0``, ``"cuda:1"``, ``"mps"``), ``"cpu"`` (main memory; where accelerators are present
the module is *offloaded* there and run on the first accelerator) or ``"disk"`` (offloaded: its weights stay in the
checkpoint's safetensors, or in ``offload_folder``, and are read in just before the module runs). A strategy
(``auto``, ``balanced``, ``balanced_low_0``, ``sequential``) lets accelerate fill the available devices in order.
``--device-map`` takes a strategy, a JSON object, or the path of a ``.json`` / ``.toml`` file holding the object.

accelerate moves every module's inputs to that module's execution device (:func:`execution_device`), so a forward
needs its inputs only on the input embedding's device. What refusal-lab adds on top:
  * a hook's map acts on the tensor it is given and moves its own tensors (directions, projections, scales) to that
    tensor's device and dtype (:mod:`refusal_lab.interventions.base`), i.e. to the layer's own device;
  * captured activations are gathered to the host (:func:`stack_on_host`);
  * offloaded weights are read through accelerate (:func:`materialized`) for hashing and for hooks built from
    weights, and a weight edit refuses them (:func:`require_in_memory`): the edit would change a copy that the
    next forward discards.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import torch
from pydantic import AfterValidator
from torch import nn

from refusal_lab.core.errors import RefusalLabError

STRATEGIES = ("auto", "balanced", "balanced_low_0", "sequential")
PLACES = ("cpu", "disk")
MAP_HELP = ('a strategy (auto, balanced, balanced_low_0, sequential), a JSON object {"module": device} (device: an '
            'accelerator index or name such as 0 or "cuda:1", "cpu" or "disk") or a .json/.toml file holding one')


def _device_value(module: str, value: Any, source: str) -> int | str:
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise RefusalLabError(f"{source}: module {module!r} is placed on {value!r}; a device is {MAP_HELP}")
    if isinstance(value, int):
        if value < 0:
            raise RefusalLabError(f"{source}: module {module!r} is placed on accelerator {value}; indices start at 0")
        return value
    if value in PLACES:
        return value
    if value == "meta":
        raise RefusalLabError(f"{source}: module {module!r} is placed on \"meta\", which holds no weights; offload "
                              "it with \"disk\" (read from the checkpoint when it runs) or \"cpu\"")
    try:
        torch.device(value)
    except (RuntimeError, ValueError):
        raise RefusalLabError(f"{source}: module {module!r} is placed on {value!r}, which is not a device; use an "
                              "accelerator index or name (0, \"cuda:1\"), \"cpu\" or \"disk\"") from None
    return value


def _read_map_file(path: Path) -> Any:
    if not path.is_file():
        raise RefusalLabError(f"device map {str(path)!r} is neither a strategy ({', '.join(STRATEGIES)}), a JSON "
                              "object nor an existing .json/.toml file")
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".toml":
        import tomllib

        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as error:
            raise RefusalLabError(f"device map {path}: invalid TOML ({error}); fix the syntax there") from None
        return data.get("device_map", data)  # a [device_map] table, or the file's top level
    if path.suffix != ".json":
        raise RefusalLabError(f"device map {path}: unknown file type {path.suffix or '(none)'!r}; use .json or .toml")
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise RefusalLabError(f"device map {path}: invalid JSON ({error.msg} at line {error.lineno}); fix it") \
            from None


def parse_device_map(value: str | dict | None) -> str | dict[str, int | str] | None:
    """The device map ``value`` names (see the module docstring): None (one device; also ``"none"``, which
    overrides a saved config's map), a strategy, or a dict ``{module: device}``; a JSON object string or a file path
    is read. Every problem is one line."""
    if value is None or (isinstance(value, str) and value.strip().lower() in ("", "none")):
        return None
    source = "device map"
    if isinstance(value, str):
        text = value.strip()
        if text in STRATEGIES:
            return text
        if text.startswith("{"):
            try:
                value = json.loads(text)
            except json.JSONDecodeError as error:
                raise RefusalLabError(f"device map {text[:60]!r} is not valid JSON ({error.msg}); quote module "
                                      'names and device names, e.g. {"model.layers.0": 0, "lm_head": "cpu"}') \
                    from None
        else:
            source = f"device map {text}"
            value = _read_map_file(Path(text).expanduser())
            if isinstance(value, str) and value in STRATEGIES:
                return value
    if not isinstance(value, dict) or not value:
        raise RefusalLabError(f"{source}: expected {MAP_HELP}, not {value!r}")
    return {str(module): _device_value(str(module), device, source) for module, device in value.items()}


def check_devices_exist(device_map: str | dict[str, int | str] | None) -> None:
    """Raise :class:`RefusalLabError` when a parsed map places a module on a CUDA device this machine lacks."""
    if not isinstance(device_map, dict):
        return
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    for module, value in device_map.items():
        if value in PLACES:
            continue
        device = torch.device("cuda", value) if isinstance(value, int) else torch.device(value)
        if device.type == "cuda" and (device.index or 0) >= count:
            raise RefusalLabError(f"the device map places {module!r} on {device}, but this machine has {count} CUDA "
                                  f"device(s); place it on one of them, \"cpu\" or \"disk\"")


def check_module_names(model: nn.Module, device_map: str | dict[str, int | str] | None) -> None:
    """Raise :class:`RefusalLabError` when a map names a module ``model`` lacks (transformers would put it, and
    whatever the map leaves out, on the CPU without a word)."""
    if not isinstance(device_map, dict):
        return
    names = {name for name, _ in model.named_modules()}
    unknown = [module for module in device_map if module and module not in names]
    if unknown:
        shown = ", ".join(sorted(unknown)[:3])
        top = ", ".join(sorted(name for name in names if name and name.count(".") <= 1))
        raise RefusalLabError(f"the device map names module(s) {shown} that the model lacks; its modules include "
                              f"{top} (and their children, e.g. model.layers.0)")


def _check_setting(value: str | dict | None) -> str | dict | None:
    try:
        parse_device_map(value)
    except RefusalLabError as error:
        raise ValueError(str(error)) from None
    return value


#: a config setting holding a device map as written (a strategy, a dict, a JSON string or a file path); checked when
#: the config is read, parsed when the model loads
DeviceMapSetting = Annotated[str | dict[str, int | str] | None, AfterValidator(_check_setting)]


def _hook_devices(module: nn.Module) -> list[Any]:
    hook = getattr(module, "_hf_hook", None)
    hooks = getattr(hook, "hooks", [hook]) if hook is not None else []
    return [h.execution_device for h in hooks if getattr(h, "execution_device", None) is not None]


def execution_device(module: nn.Module) -> torch.device:
    """The device ``module`` computes on: its accelerate hook's execution device, else that of its first
    parameter held in memory, else the CPU."""
    devices = _hook_devices(module)
    if devices:
        device = devices[0]
        return torch.device(device) if not isinstance(device, int) else torch.device("cuda", device)
    for param in module.parameters():
        if param.device.type != "meta":
            return param.device
    return torch.device("cpu")


def is_offloaded(module: nn.Module) -> bool:
    """Whether ``module``'s own weights are not held in memory (accelerate's cpu or disk offload)."""
    hook = getattr(module, "_hf_hook", None)
    hooks = getattr(hook, "hooks", [hook]) if hook is not None else []
    return any(getattr(h, "offload", False) for h in hooks) or any(
        p.device.type == "meta" for p in module.parameters(recurse=False))


def offloaded_modules(model: nn.Module) -> list[str]:
    """Names of the modules whose weights are offloaded (empty for a model held in memory)."""
    return [name for name, module in model.named_modules() if is_offloaded(module)]


@contextmanager
def materialized(module: nn.Module) -> Iterator[None]:
    """Inside the block, ``module``'s own parameters are real tensors on its execution device (an offloaded
    module's are read in through accelerate and dropped again after); for a module in memory this does nothing."""
    if not is_offloaded(module):
        yield
        return
    from accelerate.utils import align_module_device

    with align_module_device(module):
        yield


def parameter_value(model: nn.Module, name: str, param: torch.Tensor) -> torch.Tensor:
    """The value of parameter ``name`` of ``model`` (``param``, or its offloaded weights, read in), detached."""
    if param.device.type != "meta":
        return param.detach()
    owner_name, _, leaf = name.rpartition(".")
    owner = model.get_submodule(owner_name)
    with materialized(owner):
        value = getattr(owner, leaf).detach()
    if value.device.type == "meta":
        raise RefusalLabError(f"parameter {name} is on the meta device and no offloaded copy of it was found; "
                              "reload the model (its weights were never loaded)")
    return value


def require_in_memory(model: nn.Module, modules: Sequence[nn.Module], what: str) -> None:
    """Raise :class:`RefusalLabError` when any of ``modules`` is offloaded: ``what`` (a weight edit) would change
    only the copy accelerate reads in for one forward."""
    names = {id(m): n for n, m in model.named_modules()}
    offloaded = [names.get(id(m), type(m).__name__) for m in modules if is_offloaded(m)]
    if offloaded:
        shown = ", ".join(offloaded[:3]) + (f" and {len(offloaded) - 3} more" if len(offloaded) > 3 else "")
        raise RefusalLabError(
            f"{what} edits weights in place, but {shown} are offloaded by the device map (cpu or disk offload: "
            "their weights are read in for each forward and dropped after, so an edit would be lost); load the "
            "model with a device map that keeps every layer in device or main memory (no \"disk\", and \"cpu\" only "
            "without accelerators), or apply the same projection with hooks instead (e.g. refusal-lab generate "
            "--intervention ablate, or evaluate the run's interventions)")


def stack_on_host(tensors: Sequence[torch.Tensor], dim: int = 0) -> torch.Tensor:
    """``torch.stack(tensors, dim)`` on the CPU: stacked where they are when they share a device (one copy), else
    each moved to the host first (layers placed on several devices)."""
    if len({t.device for t in tensors}) == 1:
        return torch.stack(list(tensors), dim=dim).cpu()
    return torch.stack([t.cpu() for t in tensors], dim=dim)
