"""Local stand-ins for the cloud pieces: a bundled SageMaker-style model container, synthetic scenes."""
