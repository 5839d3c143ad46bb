"""A two-step Kubeflow pipeline that compiles in a blink: a stand-in for pipelines/retraining.py in CLI tests."""

from kfp import dsl


@dsl.component(base_image="python:3.11")
def say(message: str) -> str:
    """Return the message (the step does nothing; only the compiled graph matters)."""
    return message


@dsl.pipeline(name="tiny-retraining", description="two steps, for tests")
def tiny_pipeline(message: str = "hello", rl_workers: int = 1) -> None:
    first = say(message=message)
    say(message=first.output)
