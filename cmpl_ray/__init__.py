"""cmpl-ray: Cross-Model Pseudo-Labeling (Xu et al., CVPR 2022) on Ray Train, Ray Data, Ray Tune and MLflow."""

__version__ = "0.1.0"
