"""Every linear method behind one interface (:mod:`~refusal_lab.methods.registry`): fit candidates, plan what
selection applies to each. Extraction and selection run it (:mod:`~refusal_lab.pipeline.extraction`), one factory
applies it (:mod:`~refusal_lab.interventions.factory`)."""
