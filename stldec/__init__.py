"""stldec: decode Signal Temporal Logic formulae from kernel embeddings.

`import stldec` registers the HF-native classes with the `transformers` Auto classes (AutoConfig, AutoModel,
AutoModelForCausalLM, AutoModelForMaskedLM, AutoTokenizer), so `from_pretrained` finds model_type "stldec" right
after it; registers them for remote code (`register_for_auto_class`), so a plain `save_pretrained` writes the code
files and the `auto_map` and the folder loads with `trust_remote_code=True` where stldec is not installed; and
registers the pipeline task "stl-decoding" (`stldec.pipeline`). The STL domain lives in `stldec.stl` and never uses
transformers.
"""

from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoModelForMaskedLM, AutoTokenizer
from transformers.pipelines import PIPELINE_REGISTRY

from .configuration import StlDecConfig
from .hub import prepare_hub_folder, push_to_hub
from .modeling import StlDecForCausalLM, StlDecForMaskedLM, StlDecModel, StlDecPreTrainedModel
from .pipeline import StlDecodingPipeline
from .tokenization import StlTokenizer

AutoConfig.register(StlDecConfig.model_type, StlDecConfig, exist_ok=True)
AutoTokenizer.register(StlDecConfig, tokenizer_class=StlTokenizer, exist_ok=True)
StlDecConfig.register_for_auto_class("AutoConfig")
StlTokenizer.register_for_auto_class("AutoTokenizer")
for _auto, _head in ((AutoModel, StlDecModel), (AutoModelForCausalLM, StlDecForCausalLM),
                     (AutoModelForMaskedLM, StlDecForMaskedLM)):
    _auto.register(StlDecConfig, _head, exist_ok=True)
    _head.register_for_auto_class(_auto.__name__)
PIPELINE_REGISTRY.register_pipeline("stl-decoding", pipeline_class=StlDecodingPipeline,
                                    pt_model=AutoModelForCausalLM)

__all__ = ["StlDecConfig", "StlDecForCausalLM", "StlDecForMaskedLM", "StlDecModel", "StlDecPreTrainedModel",
           "StlDecodingPipeline", "StlTokenizer", "prepare_hub_folder", "push_to_hub"]
