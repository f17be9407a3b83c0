"""The bottom layer: errors, atomic I/O, the config base, the vocabulary of kinds / scopes / sites, and the typed
artifacts (directions, subspaces, affine erasers) with their save/load. Imports nothing else of refusal_lab."""
