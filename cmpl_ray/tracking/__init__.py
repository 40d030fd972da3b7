"""MLflow: the tracker rank 0 logs through (``tracker``), creating and finding runs (``runs``), and the relay
actor on the head node that reaches the store for workers elsewhere (``relay``). The model a run publishes is
``cmpl_ray.train.mlflow_model`` (it needs the trainer's checkpoints)."""
