"""stldec: decode Signal Temporal Logic formulae from kernel embeddings.

`import stldec` makes the HF-native classes known to `transformers`: it registers them with the Auto classes
(AutoConfig, AutoModel, AutoModelForCausalLM, AutoModelForMaskedLM, AutoTokenizer), so `from_pretrained` finds
model_type "stldec"; for remote code (`register_for_auto_class`), so a plain `save_pretrained` writes the code files and
the `auto_map` and the folder loads with `trust_remote_code=True` where stldec is not installed; and the pipeline task
"stl-decoding" (`stldec.pipeline`). The STL domain lives in `stldec.stl` and never uses transformers.

Registration is deferred until transformers is imported, so `stldec --help` and the STL-only commands load neither
torch nor transformers. If transformers is already imported, `import stldec` registers at once; otherwise it puts a
finder on `sys.meta_path` that wraps the loaders of transformers' and stldec's modules and registers as soon as the
outermost of those imports has finished (`import transformers`, `from transformers import AutoModel`, `from stldec
import StlDecModel`, ...), then removes itself. Waiting for the outermost import matters: transformers' modules import
each other in cycles (modeling_layers imports the Auto classes at its top) and stldec.modeling imports them, so
registering while one of them is half-executed would fail. The names below (`StlDecConfig`, ...) load their module on
first use (PEP 562), which registers too.
"""

import importlib
import sys
from importlib import metadata

_EXPORTS = {
    "StlDecConfig": "configuration", "StlTokenizer": "tokenization", "StlDecodingPipeline": "pipeline",
    "StlDecForCausalLM": "modeling", "StlDecForMaskedLM": "modeling", "StlDecModel": "modeling",
    "StlDecPreTrainedModel": "modeling", "prepare_hub_folder": "hub", "push_to_hub": "hub",
}
__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)


def _package_version() -> str:
    try:
        return metadata.version("stldec")
    except metadata.PackageNotFoundError:  # running from a source tree that was never installed
        return "unknown"


def _register() -> None:
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoModelForMaskedLM, AutoTokenizer
    from transformers.pipelines import PIPELINE_REGISTRY

    from .configuration import StlDecConfig
    from .modeling import StlDecForCausalLM, StlDecForMaskedLM, StlDecModel
    from .pipeline import StlDecodingPipeline
    from .tokenization import StlTokenizer

    AutoConfig.register(StlDecConfig.model_type, StlDecConfig, exist_ok=True)
    AutoTokenizer.register(StlDecConfig, tokenizer_class=StlTokenizer, exist_ok=True)
    StlDecConfig.register_for_auto_class("AutoConfig")
    StlTokenizer.register_for_auto_class("AutoTokenizer")
    for auto, head in ((AutoModel, StlDecModel), (AutoModelForCausalLM, StlDecForCausalLM),
                       (AutoModelForMaskedLM, StlDecForMaskedLM)):
        auto.register(StlDecConfig, head, exist_ok=True)
        head.register_for_auto_class(auto.__name__)
    PIPELINE_REGISTRY.register_pipeline("stl-decoding", pipeline_class=StlDecodingPipeline,
                                        pt_model=AutoModelForCausalLM)


class _Loader:
    """A transformers or stldec module's loader, noting while the module executes."""

    def __init__(self, loader):
        self._loader = loader

    def __getattr__(self, name: str):  # get_code, get_source, get_resource_reader, ...
        return getattr(self._loader, name)

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module) -> None:
        name = module.__name__
        _FINDER.executing.add(name)
        try:
            self._loader.exec_module(module)
        finally:
            _FINDER.executing.discard(name)
        _register_when_ready()


class _Finder:
    """On `sys.meta_path` until registration: wraps the loaders of transformers' and stldec's modules."""

    def __init__(self):
        self.executing: set[str] = set()  # the watched modules now executing (any thread)

    def find_spec(self, name: str, path, target=None):
        if name.partition(".")[0] not in ("transformers", "stldec"):
            return None
        for finder in sys.meta_path:  # the other finders (those before this one have already said None)
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(name, path, target)
            if spec is not None:
                if spec.loader is not None:
                    spec.loader = _Loader(spec.loader)
                return spec
        return None


def _register_when_ready() -> None:
    """Register once transformers is imported and no transformers or stldec module is half-executed."""
    if "transformers" in sys.modules and not _FINDER.executing:
        try:  # removed first, so the imports `_register` makes are not watched
            sys.meta_path.remove(_FINDER)
        except ValueError:  # already registered (or registering, in another thread)
            return
        _register()


_FINDER = _Finder()
sys.meta_path.insert(0, _FINDER)
_register_when_ready()
