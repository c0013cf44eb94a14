"""stldec: decode Signal Temporal Logic formulae from kernel embeddings.

`import stldec` is cheap and `import stldec.stl` never loads transformers: the HF-native names below are imported on
first access (PEP 562), which also registers them with the `transformers` Auto classes (AutoConfig, AutoModel,
AutoModelForCausalLM, AutoModelForMaskedLM, AutoTokenizer) so `from_pretrained` finds model_type "stldec".
"""

import importlib

_LAZY = {  # public name -> submodule holding it
    "StlDecConfig": "configuration",
    "StlDecModel": "modeling",
    "StlDecForCausalLM": "modeling",
    "StlDecForMaskedLM": "modeling",
    "StlDecPreTrainedModel": "modeling",
    "StlTokenizer": "tokenization",
    "prepare_hub_folder": "hub",
    "push_to_hub": "hub",
}
__all__ = sorted(_LAZY)
_registered = False


def _register_auto_classes() -> None:
    global _registered
    if _registered:
        return
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoModelForMaskedLM, AutoTokenizer

    from .configuration import StlDecConfig
    from .modeling import StlDecForCausalLM, StlDecForMaskedLM, StlDecModel
    from .tokenization import StlTokenizer

    AutoConfig.register(StlDecConfig.model_type, StlDecConfig, exist_ok=True)
    AutoModel.register(StlDecConfig, StlDecModel, exist_ok=True)
    AutoModelForCausalLM.register(StlDecConfig, StlDecForCausalLM, exist_ok=True)
    AutoModelForMaskedLM.register(StlDecConfig, StlDecForMaskedLM, exist_ok=True)
    AutoTokenizer.register(StlDecConfig, tokenizer_class=StlTokenizer, exist_ok=True)
    _registered = True


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module 'stldec' has no attribute {name!r}")
    _register_auto_classes()
    value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
