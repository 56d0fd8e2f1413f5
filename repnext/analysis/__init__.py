"""Analysis of models: equivalence of fused forms, parameter and MAC counts."""
