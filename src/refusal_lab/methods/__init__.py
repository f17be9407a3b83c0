"""Every linear method behind one interface (:mod:`~refusal_lab.methods.registry`), extracted and selected by one
path (:mod:`~refusal_lab.methods.extraction`), applied by one factory (:mod:`~refusal_lab.methods.factory`)."""

from refusal_lab.methods.apply import abliterate, run_interventions
from refusal_lab.methods.artifacts import ARTIFACT_OF, KINDS, MethodArtifacts, load_artifacts, load_chosen
from refusal_lab.methods.extraction import Extraction, extract, fit_context
from refusal_lab.methods.factory import bake, build_intervention
from refusal_lab.methods.registry import METHODS, FitContext, Method, MethodsConfig, PlanEnv, get_method

__all__ = ["ARTIFACT_OF", "KINDS", "METHODS", "Extraction", "FitContext", "Method", "MethodArtifacts",
           "MethodsConfig", "PlanEnv", "abliterate", "bake", "build_intervention", "extract", "fit_context",
           "get_method", "load_artifacts", "load_chosen", "run_interventions"]
