"""Solvers of the retraining objectives: standard, LoRA-ML (ALS / GD) and Reptile."""
