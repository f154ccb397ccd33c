"""Certified Lipschitz machinery: the layers whose constants are known and the bounds composed from them.

It sits below the models (which declare their own bounds with it) and below the defenses
(which turn a bound into a sound input radius):

- :mod:`robustbench_iqa.lipschitz.composition`: global L2 -> L2 bounds of a network composed
  from per-layer bounds (:class:`~robustbench_iqa.lipschitz.composition.LipschitzBound`);
- :mod:`robustbench_iqa.lipschitz.gram_iteration`: certified spectral norms of linear and
  convolutional layers;
- :mod:`robustbench_iqa.lipschitz.layers`: fixed layers with exact constants (blur pooling,
  LPIPS' channel normalisation, spatial means) and their bounds in
  :mod:`robustbench_iqa.lipschitz.layer_bounds`;
- :mod:`robustbench_iqa.lipschitz.tapped`: a trunk whose intermediate features are tapped, with
  the bounds of each tap;
- :mod:`robustbench_iqa.lipschitz.trust`: what is bounded is what was read (exact classes, no
  hooks).

The modules were first published under :mod:`robustbench_iqa.certify` (``certify.lipschitz``,
``certify.gram_iteration``, ``certify.layer_bounds``, ``certify.layers``, ``certify.tapped``,
``certify.trust``); those names still import and re-export these.
"""
