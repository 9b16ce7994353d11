"""Inference: where a model is called (SageMaker runtime or plain HTTP), and the bounded thread pool."""
