"""The only layer that touches run directories: configs, stages, resume, fingerprints, and the jobs (extract,
compare, evaluate, study, optimize, export) built from the layers below."""
