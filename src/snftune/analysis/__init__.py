"""Analysis: SNF's premise measured on any tuned model.

Per residual site: local Lipschitz constants of the branch and the shortcut, the paper's
error-propagation bound beside the measured growth of a small error, feature drift (linear CKA
against the untouched backbone), and information preservation where a slot holds a flow.
``snftune analyze`` is :func:`resolve_inputs` followed by :func:`run_analysis`.
"""

from .drift import gram_matrix, linear_cka
from .information import SlotInformation
from .job import run_analysis
from .lipschitz import differentiable, flow_lipschitz_bound, local_lipschitz, perturbation_growth
from .measure import AnalysisSettings, ModelAnalysis, analyze_model, compare_models
from .plots import plot_lipschitz
from .report import AnalysisFileError, read_analysis, render_markdown, write_analysis
from .sources import AnalysisInputs, TunedSource, build_models, resolve_inputs, sample_images
from .trace import SiteTrace, pooled_output

__all__ = [
    "AnalysisFileError",
    "AnalysisInputs",
    "AnalysisSettings",
    "ModelAnalysis",
    "SiteTrace",
    "SlotInformation",
    "TunedSource",
    "analyze_model",
    "build_models",
    "compare_models",
    "differentiable",
    "flow_lipschitz_bound",
    "gram_matrix",
    "linear_cka",
    "local_lipschitz",
    "perturbation_growth",
    "plot_lipschitz",
    "pooled_output",
    "read_analysis",
    "render_markdown",
    "resolve_inputs",
    "run_analysis",
    "sample_images",
    "write_analysis",
]
