"""``musicrl demo``: the closed loop on one machine, through the platform's own interfaces.

- :mod:`~musicrl.demo.config`: what a demo runs (light: the CLI's parser imports it);
- :mod:`~musicrl.demo.listeners`: simulated listeners on the REST API, voting with :mod:`musicrl.sim`;
- :mod:`~musicrl.demo.measure`: the hidden taste of the stable policy, through ``POST /v1/generations``;
- :mod:`~musicrl.demo.pipeline_run`: one retraining-pipeline run under ``kfp.local``;
- :mod:`~musicrl.demo.loop`: the rounds (collect, retrain, canary) on a :class:`~musicrl.local.LocalPlatform`;
- :mod:`~musicrl.demo.report`: the text, plots and self-contained HTML page.
"""
