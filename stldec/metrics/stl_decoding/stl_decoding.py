"""`evaluate` module for decoded STL formulae, loaded by path (the Hub cannot be reached; HF_V5_RECIPE.md §10):

    import evaluate
    from stldec.evaluation import EVALUATE_MODULE
    metric = evaluate.load(EVALUATE_MODULE)
    metric.compute(predictions=decoded, references=gold, n_trajectories=1000, seed=0)

Returns the overall summary of `stldec.evaluation.compute_metrics` (validity, exact/skeleton match, cos_rho
statistics, sign agreement, size ratios, artefact rates) as a flat dict; `by_depth=True` adds `depthK/...` keys.
"""

import datasets
import evaluate

from stldec.evaluation import compute_metrics, flatten_metrics

_DESCRIPTION = "Syntactic, structural and semantic (robustness cosine) scores of decoded STL formulae vs gold ones."
_INPUTS = """predictions: decoded formula strings; references: gold formula strings (reference dialect).
Keyword arguments: n_trajectories (1000), seed (0), n_vars (3), n_points (100), by_depth (False)."""


class StlDecoding(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION, citation="", inputs_description=_INPUTS,
            features=datasets.Features({"predictions": datasets.Value("string"),
                                        "references": datasets.Value("string")}))

    def _compute(self, predictions, references, n_trajectories=1000, seed=0, n_vars=3, n_points=100,
                 by_depth=False):
        result = compute_metrics(references, predictions, n_trajectories=n_trajectories, seed=seed, n_vars=n_vars,
                                 n_points=n_points)
        return flatten_metrics(result, by_depth=by_depth)
