"""What ``run_pipeline.py`` and the benchmarks share: the profiles and the parsing of a
step's options (``profiles``), the pretraining registry (``pretrainers``), the steps as
records and the run record (``steps``) and the published numbers (``published``).

It sits at the packages' level: a step names its script by module (``"train"``,
``"data_processing.select_img"``) and imports it only when it parses or runs the step's
options, so importing this package loads no entry script.
"""
