"""stldec: decode Signal Temporal Logic formulae from kernel embeddings.

`import stldec` registers the HF-native classes with the `transformers` Auto classes (AutoConfig, AutoModel,
AutoModelForCausalLM, AutoModelForMaskedLM, AutoTokenizer), so `from_pretrained` finds model_type "stldec" right
after it. The STL domain lives in `stldec.stl` and never uses transformers.
"""

from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoModelForMaskedLM, AutoTokenizer

from .configuration import StlDecConfig
from .hub import prepare_hub_folder, push_to_hub
from .modeling import StlDecForCausalLM, StlDecForMaskedLM, StlDecModel, StlDecPreTrainedModel
from .tokenization import StlTokenizer

AutoConfig.register(StlDecConfig.model_type, StlDecConfig, exist_ok=True)
AutoModel.register(StlDecConfig, StlDecModel, exist_ok=True)
AutoModelForCausalLM.register(StlDecConfig, StlDecForCausalLM, exist_ok=True)
AutoModelForMaskedLM.register(StlDecConfig, StlDecForMaskedLM, exist_ok=True)
AutoTokenizer.register(StlDecConfig, tokenizer_class=StlTokenizer, exist_ok=True)

__all__ = ["StlDecConfig", "StlDecForCausalLM", "StlDecForMaskedLM", "StlDecModel", "StlDecPreTrainedModel",
           "StlTokenizer", "prepare_hub_folder", "push_to_hub"]
