"""The STL domain: formulae, semantics, base measure, kernel embeddings, random formula generation.

Pure Python + torch; never imports transformers.
"""

from .formula import (
    Always,
    And,
    Atom,
    Eventually,
    Formula,
    Interval,
    Not,
    Or,
    STLParseError,
    Until,
    as_formulae,
    parse,
)
from .generator import FormulaGenerator, GeneratorConfig
from .kernel import StlKernelEncoder, cos_rho
from .measure import BaseMeasure
from .semantics import robustness, satisfaction

__all__ = ["Always", "And", "Atom", "Eventually", "Formula", "Interval", "Not", "Or", "STLParseError", "Until",
           "as_formulae", "parse"]
__all__ += ["BaseMeasure"]
__all__ += ["FormulaGenerator", "GeneratorConfig"]
__all__ += ["StlKernelEncoder", "cos_rho"]
__all__ += ["robustness", "satisfaction"]
